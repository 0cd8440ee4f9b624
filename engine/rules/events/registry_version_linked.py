"""`registry_version_linked` (W&B LINK_ARTIFACT): a version is linked into a registry collection."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from engine.rules.base import RuleModel
from engine.rules.fields import Regex


class RegistryVersionLinked(RuleModel):
    wandb_name: ClassVar[str] = "LINK_ARTIFACT"
    is_run_event: ClassVar[bool] = False

    type: Literal["registry_version_linked"] = Field(description="Event kind.")
    alias_regex: Regex | None = Field(
        None,
        description="Only links whose version holds an alias matching this PostgreSQL regular expression.",
    )

    def describe(self) -> str:
        return "version linked" + (f" with alias ~ {self.alias_regex}" if self.alias_regex else "")
