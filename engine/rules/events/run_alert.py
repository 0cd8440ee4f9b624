"""`run_alert` (W&B RUN_ALERT): training code raised an alert with `run.alert(title, ...)`."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, Field

from engine.rules.base import RuleModel
from engine.rules.fields import Regex

Level = Literal["info", "warn", "error"]


def _levels(value: Any) -> Any:
    """Lower-case (W&B writes INFO, WARN, ERROR), dedupe and sort."""
    if isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
        return tuple(sorted({item.lower() for item in value}))
    return value


class RunAlert(RuleModel):
    wandb_name: ClassVar[str] = "RUN_ALERT"
    is_run_event: ClassVar[bool] = True

    type: Literal["run_alert"] = Field(description="Event kind.")
    title_regex: Regex | None = Field(
        None,
        description="Only alerts whose title matches this PostgreSQL regular expression (~, unanchored).",
    )
    levels: Annotated[tuple[Level, ...], BeforeValidator(_levels)] | None = Field(
        None,
        min_length=1,
        description="Only alerts of these levels (info, warn, error); default: every level.",
    )

    def describe(self) -> str:
        """`alert`, `alert title ~ ^nan, level in (error, warn)`."""
        parts = []
        if self.title_regex is not None:
            parts.append(f"title ~ {self.title_regex}")
        if self.levels is not None:
            parts.append("level in (" + ", ".join(self.levels) + ")")
        return "alert" + (" " + ", ".join(parts) if parts else "")
