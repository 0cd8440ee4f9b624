"""`artifact_tag_added` (W&B ADD_ARTIFACT_TAG): a tag is added to a version."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from engine.rules.base import RuleModel
from engine.rules.fields import Regex


class ArtifactTagAdded(RuleModel):
    wandb_name: ClassVar[str] = "ADD_ARTIFACT_TAG"
    is_run_event: ClassVar[bool] = False

    type: Literal["artifact_tag_added"] = Field(description="Event kind.")
    tag_regex: Regex = Field(description="PostgreSQL regular expression (~, unanchored) the tag must match.")

    def describe(self) -> str:
        return f"tag ~ {self.tag_regex}"
