"""`run_metric_nonfinite` (W&B has no such event): a metric value is NaN or infinite."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, Field

from engine.rules.base import RuleModel
from engine.rules.events.metric import MetricEventMixin
from engine.rules.fields import MetricName

NonFinite = Literal["nan", "inf", "-inf"]
ALL_NONFINITE: tuple[NonFinite, ...] = ("-inf", "inf", "nan")
# How each kind is written in `${metric_value}` (and how PostgreSQL prints it).
TEXT = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def _sorted_set(value: Any) -> Any:
    """Dedupe and sort (equal rules give equal text); anything else is left to the type check."""
    if isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
        return tuple(sorted(set(value)))
    return value


class RunMetricNonfinite(MetricEventMixin, RuleModel):
    wandb_name: ClassVar[str] = "RUN_METRIC_NONFINITE"
    is_run_event: ClassVar[bool] = True

    type: Literal["run_metric_nonfinite"] = Field(description="Event kind.")
    metric: MetricName = Field(
        description="Metric key, e.g. `loss`; `system/<key>` (or `system.<key>`) for system metrics."
    )
    values: Annotated[tuple[NonFinite, ...], BeforeValidator(_sorted_set)] = Field(
        ALL_NONFINITE,
        min_length=1,
        description="Which values fire: any of `nan`, `inf`, `-inf` (default all).",
    )

    def describe(self) -> str:
        """`loss is NaN or ±Infinity` (the kinds chosen)."""
        return f"{self.metric} is " + " or ".join(TEXT[v] for v in self.values)
