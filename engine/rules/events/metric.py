"""What the two metric events share: the aggregation, the window bound, the metric's table."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from engine.names import SYSTEM_PREFIX, is_system_metric

Aggregation = Literal["avg", "min", "max"]
MAX_WINDOW = 100_000  # windows are read per series; a larger one is surely a typo


class MetricEventMixin:
    """Properties of an event with a `metric` field (annotated for the type checker only: at run
    time pydantic would take it for a field and put it before `type`)."""

    if TYPE_CHECKING:
        metric: str

    @property
    def is_system_metric(self) -> bool:
        """True when the metric is read from `system_metrics` (`system/<key>`)."""
        return is_system_metric(self.metric)

    @property
    def metric_key(self) -> str:
        """The key as the SDK stores it: without the `system/` prefix for system metrics."""
        return self.metric.removeprefix(SYSTEM_PREFIX)
