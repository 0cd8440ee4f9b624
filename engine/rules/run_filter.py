"""Which runs a run event applies to."""

from __future__ import annotations

from pydantic import Field

from engine.rules.base import RuleModel
from engine.rules.fields import Label, Regex


class RunFilter(RuleModel):
    user: Label | None = Field(None, description="Only runs started by this user.")
    name_regex: Regex | None = Field(
        None, description="Only runs whose display name matches (PostgreSQL regex, unanchored search)."
    )
