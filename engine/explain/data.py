"""The data behind one trigger: what `engine explain` draws, as plain JSON-ready models.

`explain_data(conn, trigger_id)` gathers an `Explanation`: the trigger, the rule's scope at
the trigger's version (`automation_versions`), the run, and for metric triggers the metric's
whole finite series in logging order, numbered 1..n as the evaluator numbers it, with the
window(s) the rule aggregated at the position that fired (the trigger's columns `pos`,
`window_size`, `prior_window_size`: engine/trigger_cause.py):

* threshold: the window is positions pos-N+1 … pos (N = `window_size`);
* change: the current window pos-N+1 … pos, the prior window the `prior_window_size`
  positions before it;
* z-score: the reference window pos-N … pos-1 (the value itself is not in it), with its mean
  and standard deviation (`current_aggregate`, `prior_aggregate`); the trigger's value is z.

A non-finite trigger has no position (NaN and infinities are not numbered): its value, step
and time are shown, with the run's finite series around it.

Nothing here draws or words anything (engine.explain.text, .terminal and .png do): the
models serialise to JSON as they are (`expl.model_dump(mode="json")`), for a chart elsewhere.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import psycopg
from pydantic import BaseModel, ConfigDict, ValidationError

from engine.compiler import metric_table
from engine.db import one, rows
from engine.exceptions import NotFound
from engine.rules import Automation

WindowName = Literal["window", "prior window", "current window", "reference window"]


class _Data(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Point(_Data):
    """One finite value of the series: its position among the finite values (1-based)."""

    pos: int
    step: int
    time: datetime
    value: float


class Window(_Data):
    """A window the rule aggregated: positions first_pos..last_pos of the series."""

    name: WindowName
    first_pos: int
    last_pos: int
    points: tuple[Point, ...]  # read from the series now
    aggregate: float | None  # as the trigger recorded it
    recorded: tuple[float, ...]  # the values the trigger recorded (equal to the points' values)

    @property
    def values(self) -> list[float]:
        return [p.value for p in self.points]

    @property
    def steps(self) -> list[int]:
        return [p.step for p in self.points]


class RunInfo(_Data):
    pk: int
    entity: str | None
    project: str | None
    run_id: str | None  # None: the run was deleted
    name: str | None
    user: str | None
    state: str | None


class EventInfo(_Data):
    """The row of `events` behind an event trigger."""

    id: int
    type: str
    time: datetime
    author: str | None
    details: dict[str, Any]


class Delivery(_Data):
    """The trigger's first delivery (as the automation_history view shows it)."""

    action_type: str
    status: str
    attempts: int
    last_http_status: int | None


class Explanation(_Data):
    """Everything `engine explain` shows about one trigger."""

    trigger_id: int
    fired_at: datetime
    automation: str
    automation_version: int
    rule_type: str  # the rule's event.type when it fired
    condition: str  # the rule's event in words, as deliveries word it
    scope: str | None = None  # None only if the stored rule no longer loads
    run_filter_user: str | None = None
    run_filter_name_regex: str | None = None
    run: RunInfo | None = None
    delivery: Delivery | None = None
    # metric triggers: what was compared
    metric: str | None = None
    aggregation: str | None = None  # avg, min or max
    operator: str | None = None  # threshold rules: the aggregate `operator` threshold
    threshold: float | None = None
    change: Literal["relative", "absolute"] | None = None  # change rules: how d is computed
    direction: Literal["increase", "decrease", "any"] | None = None
    amount: float | None = None
    # metric triggers: where and what fired
    position: int | None = None
    step: int | None = None
    value_time: datetime | None = None
    value: float | None = None  # what the trigger recorded: the aggregate, or the change d
    series: tuple[Point, ...] = ()
    windows: tuple[Window, ...] = ()
    current_aggregate: float | None = None
    prior_aggregate: float | None = None
    # event triggers
    event: EventInfo | None = None
    alias: str | None = None
    tag: str | None = None
    artifact_version: str | None = None
    warnings: tuple[str, ...] = ()

    @property
    def is_metric(self) -> bool:
        return self.metric is not None

    @property
    def is_change(self) -> bool:
        return self.rule_type == "run_metric_change"

    @property
    def is_zscore(self) -> bool:
        return self.rule_type == "run_metric_zscore"

    @property
    def z_band(self) -> tuple[float, float] | None:
        """z-score triggers: mean ± threshold·σ of the reference window (a value outside fires)."""
        mean, sigma = self.current_aggregate, self.prior_aggregate
        if not self.is_zscore or mean is None or sigma is None or self.threshold is None:
            return None
        return mean - self.threshold * sigma, mean + self.threshold * sigma

    @property
    def fired_point(self) -> Point | None:
        """The value that fired (the last of the current window)."""
        if self.position is None or not 1 <= self.position <= len(self.series):
            return None
        return self.series[self.position - 1]


# --------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------
# What a metric trigger compared: columns of `triggers` named as the fields here.
_COMPARISON = ("aggregation", "operator", "threshold", "change", "direction", "amount")


def explain_data(conn: psycopg.Connection, trigger_id: int) -> Explanation:
    """The explanation of one trigger; NotFound when there is no such trigger.

    Built from the trigger's columns: the rule at its version gives only the scope and run
    filter, and the condition's words when the trigger's details lack them."""
    row = one(conn, "explain_trigger", {"trigger_id": trigger_id})
    if row is None:
        raise NotFound(f"no trigger {trigger_id}: `engine history` lists the trigger ids")
    warnings: list[str] = []
    try:
        rule: Automation | None = Automation.model_validate(row["rule"])
    except ValidationError:
        rule = None
        warnings.append(
            f"the rule of version {row['automation_version']} cannot be read by this engine version"
        )
    details = row["details"] if isinstance(row["details"], dict) else {}
    condition = details.get("metric_filter")
    if not isinstance(condition, str) or not condition:
        condition = rule.event.describe() if rule else row["event_type"]
    run = None
    if row["run_pk"] is not None:
        run = RunInfo(
            pk=row["run_pk"],
            entity=row["entity"],
            project=row["project"],
            run_id=row["run_id"],
            name=row["run_name"],
            user=row["user_name"],
            state=row["run_state"],
        )
    run_filter = rule.run_filter if rule else None
    common: dict[str, Any] = {
        "trigger_id": row["id"],
        "fired_at": row["fired_at"],
        "automation": row["automation"],
        "automation_version": row["automation_version"],
        "rule_type": row["event_type"],
        "condition": condition,
        "scope": rule.scope.describe() if rule else None,
        "run_filter_user": run_filter.user if run_filter else None,
        "run_filter_name_regex": run_filter.name_regex if run_filter else None,
        "run": run,
        "delivery": _delivery(row),
    }
    if row["pos"] is not None or row["event_type"] == "run_metric_nonfinite":
        return _metric_explanation(conn, row, common, warnings)
    event = None
    if row["event_id"] is not None:
        e = one(conn, "explain_event", {"event_id": row["event_id"]})
        if e:
            event = EventInfo(
                id=e["id"], type=e["type"], time=e["time"], author=e["author"], details=e["details"] or {}
            )
    return Explanation(
        **common,
        value=row["value"],  # a stall: the seconds without a metric value
        value_time=row["value_time"],
        event=event,
        alias=row["alias"],
        tag=row["tag"],
        artifact_version=row["artifact_version"],
        warnings=tuple(warnings),
    )


def _metric_explanation(
    conn: psycopg.Connection,
    row: dict[str, Any],
    common: dict[str, Any],
    warnings: list[str],
) -> Explanation:
    metric, position = row["metric"], row["pos"]
    series: tuple[Point, ...] = ()
    if row["run_pk"] is None:
        warnings.append(f"the run was deleted: its values of {metric} are not shown")
    else:
        args = {
            "system": metric_table(metric) == "system_metrics",
            "run_pk": row["run_pk"],
            "key_id": row["key_id"],
        }
        series = tuple(
            Point(pos=r["pos"], step=r["step"], time=r["time"], value=r["value"])
            for r in rows(conn, "explain_series", args)
        )
    window_values = tuple(row["window_values"] or ())
    prior_values = tuple(row["prior_values"] or ())
    # A window's size is what the rule said; the recorded values have that many (a rule fires
    # on full windows only), which is what a row edited by hand falls back on.
    size = row["window_size"] or len(window_values)
    recorded: list[tuple[WindowName, int, tuple[float, ...], float | None]]
    end = position  # where the last window ends
    if position is None:  # a non-finite value: no window
        recorded, end = [], 0
    elif row["aggregation"] == "zscore":
        size = row["window_size"] or len(prior_values)
        recorded, end = [("reference window", size, prior_values, row["current_aggregate"])], position - 1
    elif row["prior_window_size"] is None:
        recorded = [("window", size, window_values, row["value"])]
    else:
        recorded = [
            ("prior window", row["prior_window_size"], prior_values, row["prior_aggregate"]),
            ("current window", size, window_values, row["current_aggregate"]),
        ]
    windows = []
    last = end - sum(r[1] for r in recorded)  # the position just before the first window
    for name, size, values, aggregate in recorded:
        first, last = last + 1, last + size
        points = series[max(first, 1) - 1 : max(last, 0)]
        windows.append(
            Window(
                name=name, first_pos=first, last_pos=last, points=points, aggregate=aggregate, recorded=values
            )
        )

    if row["run_pk"] is not None:
        if not series:
            warnings.append(f"no finite value of {metric} is stored for this run any more")
        elif position is None:
            pass
        elif position > len(series):
            warnings.append(
                f"the run has only {len(series)} finite values of {metric} stored now (fired at #{position})"
            )
        elif any(tuple(w.values) != w.recorded for w in windows):
            warnings.append("the stored values differ from the window(s) the trigger recorded")
    return Explanation(
        **common,
        **{name: row[name] for name in _COMPARISON},
        metric=metric,
        position=position,
        step=row["step"],
        value_time=row["value_time"],
        value=row["value"],
        series=series,
        windows=tuple(windows),
        current_aggregate=row["current_aggregate"],
        prior_aggregate=row["prior_aggregate"],
        warnings=tuple(warnings),
    )


def _delivery(row: dict[str, Any]) -> Delivery | None:
    if row["action_type"] is None:
        return None
    return Delivery(
        action_type=row["action_type"],
        status=row["delivery_status"],
        attempts=row["attempts"],
        last_http_status=row["last_http_status"],
    )
