"""Why a metric rule fired, as the columns of `triggers` keep it.

The evaluator writes these columns with each metric trigger, and `engine explain` (and any
query) reads them as they are: the series (`run_pk`, `key_id`), the finite position that
fired (`pos`, numbered 1..n in logging order), the window sizes, and what was compared. The
trigger's `cause` text stays the exactly-once key; nothing parses it back.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from engine.rules import RunMetricChange, RunMetricThreshold, RunMetricZscore


@dataclass(frozen=True)
class MetricCause:
    key_id: int  # metric_keys.id of the metric
    pos: int  # the finite value that fired: its position among the series' finite values
    window_size: int  # threshold: `window`; change: `current_window` (ends at pos); z-score: `window` (ends at pos - 1)
    prior_window_size: int | None  # change: `prior_window` (just before the current one)
    aggregation: str
    # threshold rules: the aggregate `operator` threshold
    operator: str | None = None
    threshold: float | None = None
    # change rules: d (the trigger's value) computed as `change`, tested in `direction` against `amount`
    change: str | None = None
    direction: str | None = None
    amount: float | None = None

    @classmethod
    def of(cls, event: object, key_id: int, pos: int) -> MetricCause:
        """The cause of a firing of `event` (a metric event) at finite value `pos` of a series."""
        if isinstance(event, RunMetricChange):
            return cls(
                key_id=key_id,
                pos=pos,
                window_size=event.current_window,
                prior_window_size=event.prior_window,
                aggregation=event.aggregation,
                change=event.change,
                direction=event.direction,
                amount=event.amount,
            )
        if isinstance(event, RunMetricZscore):
            # the reference window: the `window` values just before pos; z `>` threshold in `direction`
            return cls(
                key_id=key_id,
                pos=pos,
                window_size=event.window,
                prior_window_size=None,
                aggregation="zscore",
                operator=">",
                threshold=event.threshold,
                direction=event.direction,
            )
        if not isinstance(event, RunMetricThreshold):
            raise TypeError(f"{type(event).__name__} is not a metric event")
        return cls(
            key_id=key_id,
            pos=pos,
            window_size=event.window,
            prior_window_size=None,
            aggregation=event.aggregation,
            operator=event.operator,
            threshold=event.threshold,
        )

    def columns(self) -> dict[str, Any]:
        """The columns of `triggers` (the names are the fields'). Not `dataclasses.asdict`,
        which deep-copies every value: ~30 us per trigger, a tenth of a tick that fires
        thousands."""
        return {name: getattr(self, name) for name in _COLUMNS}


_COLUMNS = tuple(f.name for f in dataclasses.fields(MetricCause))
# the columns that come from the rule (the others, key_id and pos, from the value that fired)
CAUSE_RULE_COLUMNS = tuple(name for name in _COLUMNS if name not in ("key_id", "pos"))
