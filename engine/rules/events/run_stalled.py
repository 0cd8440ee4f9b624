"""`run_stalled` (W&B RUN_STALLED): a running run has logged no metric value for `after`.

The first event driven by time rather than by new data: the evaluator looks at the running
runs each tick (compiler.stalled); the SDK stamps each run's last metric ingestion on the
database's clock in the transaction of its values."""

from __future__ import annotations

from datetime import timedelta
from typing import ClassVar, Literal

from pydantic import Field

from engine.rules.base import RuleModel
from engine.rules.duration import Cooldown, format_duration

# Like a cooldown: whole seconds, at least 1m.
StallAfter = Cooldown


class RunStalled(RuleModel):
    wandb_name: ClassVar[str] = "RUN_STALLED"
    is_run_event: ClassVar[bool] = True

    type: Literal["run_stalled"] = Field(description="Event kind.")
    after: StallAfter = Field(
        description="How long a running run may go without a metric value (system metrics do not count), e.g. `30m`."
    )

    @property
    def after_seconds(self) -> float:
        return self.after / timedelta(seconds=1)

    def describe(self) -> str:
        """`no metric value for 30m`."""
        return f"no metric value for {format_duration(self.after)}"
