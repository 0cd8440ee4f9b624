"""`artifact_alias_added` (W&B ADD_ARTIFACT_ALIAS): an alias is added to (or moves to) a version."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from engine.rules.base import RuleModel
from engine.rules.fields import Regex


class ArtifactAliasAdded(RuleModel):
    wandb_name: ClassVar[str] = "ADD_ARTIFACT_ALIAS"
    is_run_event: ClassVar[bool] = False

    type: Literal["artifact_alias_added"] = Field(description="Event kind.")
    alias_regex: Regex = Field(
        description="PostgreSQL regular expression (~, unanchored) the alias must match; `^production$` for one alias."
    )

    def describe(self) -> str:
        return f"alias ~ {self.alias_regex}"
