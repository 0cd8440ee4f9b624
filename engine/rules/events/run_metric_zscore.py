"""`run_metric_zscore` (W&B RUN_METRIC_ZSCORE): a value lies more than `threshold` population
standard deviations from the mean of the `window` finite values just before it."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from engine.rules.base import RuleModel
from engine.rules.events.metric import MAX_WINDOW, MetricEventMixin
from engine.rules.fields import MetricName


class RunMetricZscore(MetricEventMixin, RuleModel):
    wandb_name: ClassVar[str] = "RUN_METRIC_ZSCORE"
    is_run_event: ClassVar[bool] = True

    type: Literal["run_metric_zscore"] = Field(description="Event kind.")
    metric: MetricName = Field(
        description="Metric key, e.g. `loss`; `system/<key>` (or `system.<key>`) for system metrics."
    )
    window: int = Field(
        30,
        ge=2,
        le=MAX_WINDOW - 1,
        strict=True,
        description="Number of finite values just before each value (the reference window; it must be full).",
    )
    threshold: float = Field(
        3.0, gt=0, allow_inf_nan=False, strict=True, description="How many standard deviations z must exceed."
    )
    direction: Literal["increase", "decrease", "any"] = Field(
        "any", description="increase: z > threshold; decrease: z < −threshold; any: |z| > threshold."
    )

    def describe(self) -> str:
        """`z(loss) over 30 > 3` (`|z|` for any direction, `z < -3` for a decrease)."""
        if self.direction == "any":
            return f"|z({self.metric})| over {self.window} > {self.threshold:g}"
        if self.direction == "decrease":
            return f"z({self.metric}) over {self.window} < -{self.threshold:g}"
        return f"z({self.metric}) over {self.window} > {self.threshold:g}"
