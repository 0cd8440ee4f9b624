"""`collection_tag_added` / `collection_tag_removed` (W&B ADD_COLLECTION_TAG /
REMOVE_COLLECTION_TAG): a tag is added to or taken off a collection (not a version), in a
project or in a registry."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from engine.rules.base import RuleModel
from engine.rules.fields import Regex

_TAG = "PostgreSQL regular expression (~, unanchored) the collection's tag must match."


class CollectionTagAdded(RuleModel):
    wandb_name: ClassVar[str] = "ADD_COLLECTION_TAG"
    is_run_event: ClassVar[bool] = False

    type: Literal["collection_tag_added"] = Field(description="Event kind.")
    tag_regex: Regex = Field(description=_TAG)

    def describe(self) -> str:
        return f"collection tag ~ {self.tag_regex}"


class CollectionTagRemoved(RuleModel):
    wandb_name: ClassVar[str] = "REMOVE_COLLECTION_TAG"
    is_run_event: ClassVar[bool] = False

    type: Literal["collection_tag_removed"] = Field(description="Event kind.")
    tag_regex: Regex = Field(description=_TAG)

    def describe(self) -> str:
        return f"collection tag removed ~ {self.tag_regex}"
