"""`artifact_tag_removed` (W&B REMOVE_ARTIFACT_TAG): a tag is taken off a version."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from engine.rules.base import RuleModel
from engine.rules.fields import Regex


class ArtifactTagRemoved(RuleModel):
    wandb_name: ClassVar[str] = "REMOVE_ARTIFACT_TAG"
    is_run_event: ClassVar[bool] = False

    type: Literal["artifact_tag_removed"] = Field(description="Event kind.")
    tag_regex: Regex = Field(
        description="PostgreSQL regular expression (~, unanchored) the removed tag must match."
    )

    def describe(self) -> str:
        return f"tag removed ~ {self.tag_regex}"
