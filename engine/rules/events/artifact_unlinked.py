"""`artifact_unlinked` (W&B UNLINK_ARTIFACT): a version is unlinked from a registry collection."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from engine.rules.base import RuleModel
from engine.rules.fields import Regex


class ArtifactUnlinked(RuleModel):
    wandb_name: ClassVar[str] = "UNLINK_ARTIFACT"
    is_run_event: ClassVar[bool] = False

    type: Literal["artifact_unlinked"] = Field(description="Event kind.")
    alias_regex: Regex | None = Field(
        None,
        description="Only unlinks of a version that held, when it was unlinked, an alias matching this "
        "PostgreSQL regular expression.",
    )

    def describe(self) -> str:
        return "version unlinked" + (f" with alias ~ {self.alias_regex}" if self.alias_regex else "")
