"""`run_metric_change` (W&B RUN_METRIC_CHANGE): the current window's aggregate moved from the prior one's."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from engine.rules.base import RuleModel
from engine.rules.events.metric import MAX_WINDOW, Aggregation, MetricEventMixin
from engine.rules.fields import MetricName


class RunMetricChange(MetricEventMixin, RuleModel):
    wandb_name: ClassVar[str] = "RUN_METRIC_CHANGE"
    is_run_event: ClassVar[bool] = True

    type: Literal["run_metric_change"] = Field(description="Event kind.")
    metric: MetricName = Field(
        description="Metric key, e.g. `loss`; `system/<key>` (or `system.<key>`) for system metrics."
    )
    current_window: int = Field(
        10, ge=1, le=MAX_WINDOW, strict=True, description="Number of last values in the current window."
    )
    prior_window: int = Field(
        50, ge=1, le=MAX_WINDOW, strict=True, description="Number of values just before the current window."
    )
    aggregation: Aggregation = Field("avg", description="How each window is reduced: avg, min or max.")
    change: Literal["relative", "absolute"] = Field(
        "relative", description="absolute: d = cur − prior; relative: d = (cur − prior) / |prior|."
    )
    direction: Literal["increase", "decrease", "any"] = Field(
        description="increase: d ≥ amount; decrease: −d ≥ amount; any: |d| ≥ amount."
    )
    amount: float = Field(
        gt=0,
        allow_inf_nan=False,
        strict=True,
        description="Size of the change; relative amounts are fractions (0.25 = 25 %).",
    )

    def describe(self) -> str:
        """`avg(loss) over 10 vs prior 50 decreased by ≥ 25%`."""
        verb = {"increase": "increased", "decrease": "decreased", "any": "changed"}[self.direction]
        size = f"{self.amount * 100:g}%" if self.change == "relative" else f"{self.amount:g}"
        return f"{self.aggregation}({self.metric}) over {self.current_window} vs prior {self.prior_window} {verb} by ≥ {size}"
