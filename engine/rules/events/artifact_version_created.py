"""`artifact_version_created` (W&B CREATE_ARTIFACT): a new version of an artifact collection."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from engine.rules.base import RuleModel
from engine.rules.fields import Label


class ArtifactVersionCreated(RuleModel):
    wandb_name: ClassVar[str] = "CREATE_ARTIFACT"
    is_run_event: ClassVar[bool] = False

    type: Literal["artifact_version_created"] = Field(description="Event kind.")
    collection_type: Label | None = Field(
        None, description="Only collections of this type (`dataset`, `model`, …)."
    )

    def describe(self) -> str:
        return "new artifact version" + (f" of type {self.collection_type}" if self.collection_type else "")
