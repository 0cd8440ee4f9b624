"""`run_metric_threshold` (W&B RUN_METRIC): an aggregate of the last N values crosses a threshold."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from engine.rules.base import RuleModel
from engine.rules.events.metric import MAX_WINDOW, Aggregation, MetricEventMixin
from engine.rules.fields import MetricName


class RunMetricThreshold(MetricEventMixin, RuleModel):
    wandb_name: ClassVar[str] = "RUN_METRIC"
    is_run_event: ClassVar[bool] = True

    type: Literal["run_metric_threshold"] = Field(description="Event kind.")
    metric: MetricName = Field(
        description="Metric key, e.g. `accuracy` or `train/acc`; `system/<key>` (or `system.<key>`) for system metrics."
    )
    window: int = Field(
        5, ge=1, le=MAX_WINDOW, strict=True, description="Number of last finite values aggregated."
    )
    aggregation: Aggregation = Field("avg", description="How the window is reduced: avg, min or max.")
    operator: Literal[">", ">=", "<", "<=", "==", "!="] = Field(
        description="Comparison of the aggregate with the threshold."
    )
    threshold: float = Field(
        allow_inf_nan=False, strict=True, description="The value the aggregate is compared with."
    )

    def describe(self) -> str:
        """The condition in words (`${metric_filter}`): `avg(accuracy) over 5 > 0.6`."""
        return f"{self.aggregation}({self.metric}) over {self.window} {self.operator} {self.threshold:g}"
