"""Which values and events fire an automation, and the trigger rows they become.

Shared by live evaluation and the backtest: the rows of a compiled query become `Firing`s,
the per-run cooldown keeps those that fire, and `fire()` writes them (with their
deliveries) in the evaluator's transaction.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pydantic_core
from psycopg.types.json import Jsonb

from engine import clock
from engine.automations import StoredAutomation
from engine.compiler import ClockKind, PointKind, is_metric_rule, kind_of, metric_condition
from engine.db import query
from engine.evaluation.statements import dicts
from engine.rules import Automation
from engine.trigger_cause import CAUSE_RULE_COLUMNS, MetricCause


@dataclass(frozen=True)
class Firing:
    """One value or event that fires (or would fire, in a backtest) an automation."""

    automation: str
    event_type: str
    cause: str
    time: datetime
    run_pk: int | None = None
    metric: str | None = None
    step: int | None = None
    value: float | None = None
    # live evaluation keeps PostgreSQL's text form of the windows: they go straight back
    # into the trigger row
    window_values: list[float] | str | None = None
    prior_values: list[float] | str | None = None
    current_aggregate: float | None = None
    prior_aggregate: float | None = None
    event_id: int | None = None
    alias: str | None = None
    tag: str | None = None
    artifact_version_id: int | None = None
    details: dict[str, Any] = field(default_factory=dict)
    metric_cause: MetricCause | None = None  # metric rules: the cause as the trigger's columns
    key_id: int | None = None  # non-finite rules: the series (with run_pk) the value is of


def apply_cooldown(
    candidates: Iterable[Firing], last_fired: dict[int, datetime], cooldown: timedelta | None
) -> Iterator[Firing]:
    """Keep the first qualifying value of each run, then one only when its time is at least
    `cooldown` after the time of the value that fired last. Candidates must come in
    evaluation order for each run. `last_fired` is updated in place."""
    for firing in candidates:
        if cooldown is None or firing.run_pk is None:
            yield firing
            continue
        last = last_fired.get(firing.run_pk)
        if last is None or firing.time >= last + cooldown:
            last_fired[firing.run_pk] = firing.time
            yield firing


def _finite_list(values: list[float] | str | None) -> list[float] | str | None:
    return values if values is None or isinstance(values, str) else [float(v) for v in values]


def metric_firings(automation: Automation, rows: Iterable[dict[str, Any]]) -> Iterator[Firing]:
    event: Any = automation.event
    condition = event.describe()
    is_change = metric_condition(automation).prior > 0  # a change rule: a prior window
    for row in rows:
        yield Firing(
            automation=automation.name,
            event_type=event.type,
            cause=f"metric:{row['run_pk']}:{row['key_id']}:{row['pos']}",
            time=row["time"],
            run_pk=row["run_pk"],
            metric=event.metric,
            step=row["step"],
            value=float(row["aggregate"]),
            window_values=_finite_list(row["window_values"]),
            prior_values=_finite_list(row["prior_values"]) if is_change else None,
            current_aggregate=float(row["current_aggregate"]) if is_change else float(row["aggregate"]),
            prior_aggregate=float(row["prior_aggregate"]) if is_change else None,
            details={"metric_filter": condition, "value": float(row["value"]), "position": row["pos"]},
            metric_cause=MetricCause.of(event, row["key_id"], row["pos"]),
        )


def event_firings(automation: Automation, rows: Iterable[dict[str, Any]]) -> Iterator[Firing]:
    event = automation.event
    for row in rows:
        details = row["details"] or {}
        yield Firing(
            automation=automation.name,
            event_type=event.type,
            cause=f"event:{row['id']}",
            time=row["time"],
            run_pk=row["run_pk"] if event.is_run_event else None,  # a run state: per-run cooldown
            event_id=row["id"],
            alias=details.get("alias"),
            tag=details.get("tag"),
            artifact_version_id=row["version_id"],
            details={
                "metric_filter": event.describe(),
                "event_author": row["author"],
                **{
                    k: v
                    for k, v in details.items()
                    if k in ("from", "to", "registry", "collection", "version_index")
                },
                # an alert's own words, as its template variables
                **{f"alert_{k}": details[k] for k in ("title", "text", "level") if k in details},
            },
        )


def nonfinite_firings(automation: Automation, rows: Iterable[dict[str, Any]]) -> Iterator[Firing]:
    """A non-finite rule's values: each is its own trigger, keyed by its point's seq."""
    event: Any = automation.event
    condition = event.describe()
    for row in rows:
        value = float(row["value"])
        yield Firing(
            automation=automation.name,
            event_type=event.type,
            cause=f"nonfinite:{row['run_pk']}:{row['key_id']}:{row['seq']}",
            time=row["time"],
            run_pk=row["run_pk"],
            metric=event.metric,
            step=row["step"],
            value=value,
            details={"metric_filter": condition, "value": _json_float(value), "seq": row["seq"]},
            key_id=row["key_id"],
        )


def stalled_firings(automation: Automation, rows: Iterable[dict[str, Any]]) -> Iterator[Firing]:
    """A stall rule's stalls: one per (run, deadline), at the deadline; the value is the
    seconds since the run's last metric value (or its start)."""
    event: Any = automation.event
    condition = event.describe()
    for row in rows:
        deadline = row["deadline"]
        yield Firing(
            automation=automation.name,
            event_type=event.type,
            cause=f"stalled:{row['run_pk']}:{deadline.isoformat()}",
            time=deadline,
            run_pk=row["run_pk"],
            value=float(row["seconds"]),
            details={"metric_filter": condition, "last_value_at": row["since"].isoformat()},
        )


def firings_from_rows(automation: Automation, rows: list[dict[str, Any]]) -> Iterator[Firing]:
    if isinstance(kind_of(automation), ClockKind):
        return stalled_firings(automation, rows)
    if is_metric_rule(automation):
        return metric_firings(automation, rows)
    if isinstance(kind_of(automation), PointKind):
        return nonfinite_firings(automation, rows)
    return event_firings(automation, rows)


def cooldown_of(automation: Automation) -> timedelta | None:
    """Run events (metric and state) have a per-run cooldown; artifact events have none."""
    return automation.cooldown if getattr(automation.event, "is_run_event", False) else None


def group_firings(
    group: Sequence[StoredAutomation], rows: list[dict[str, Any]], last_fired: dict[int, dict[int, datetime]]
) -> Iterator[tuple[StoredAutomation, list[Firing]]]:
    """Split a query's rows among the automations of its group (a metric group's rows
    carry `rule`, the automation's 1-based position; a lone event rule's rows are all its).
    A metric row's `last_fired` (the automation's last firing in that run) goes to
    `last_fired[automation id][run]`."""
    if not is_metric_rule(group[0].automation):
        (stored,) = group
        yield stored, list(firings_from_rows(stored.automation, rows))
        return
    per_rule: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        per_rule.setdefault(row["rule"], []).append(row)
    for n, own in per_rule.items():
        stored = group[n - 1]
        seen = last_fired.setdefault(stored.id, {})
        for row in own:
            if row["last_fired"] is not None:
                seen[row["run_pk"]] = row["last_fired"]
        yield stored, list(metric_firings(stored.automation, own))


def _json_float(value: float | None) -> float | str | None:
    """JSON has no NaN or infinities; PostgreSQL reads them back from these strings."""
    if value is None or math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def _json_floats(values: list[float] | str | None) -> list[float | str | None] | str | None:
    return values if values is None or isinstance(values, str) else [_json_float(v) for v in values]


def trigger_row(stored: StoredAutomation, firing: Firing) -> dict[str, Any]:
    """One row of `insert_triggers` (JSON: the statement reads them with jsonb_to_recordset;
    a column left out is NULL, so that a tick firing thousands sends no more than it must)."""
    row: dict[str, Any] = {
        "automation_id": stored.id,
        "automation_version": stored.version,
        "event_type": firing.event_type,
        "cause": firing.cause,
        "value_time": firing.time.isoformat(),
        "details": firing.details,
    }
    optional = {
        "run_pk": firing.run_pk,
        "event_id": firing.event_id,
        "metric": firing.metric,
        "step": firing.step,
        "value": _json_float(firing.value),
        "window_values": _json_floats(firing.window_values),
        "prior_values": _json_floats(firing.prior_values),
        "current_aggregate": _json_float(firing.current_aggregate),
        "prior_aggregate": _json_float(firing.prior_aggregate),
        "alias": firing.alias,
        "tag": firing.tag,
        "artifact_version_id": firing.artifact_version_id,
        "key_id": firing.key_id,
        **(firing.metric_cause.columns() if firing.metric_cause else {}),
    }
    row.update((name, value) for name, value in optional.items() if value is not None)
    return row


def part_first(index: int) -> int:
    """Where the numbers (`n`) of the trigger rows of the index-th part of an insert start."""
    return index << 32


def _to_json(value: Any) -> bytes:
    """The trigger rows as JSON, written by pydantic-core (~4x faster than `json.dumps` on
    thousands of rows); non-finite floats, already strings, stay as they are."""
    return pydantic_core.to_json(value, inf_nan_mode="strings")


@dataclass
class Ready:
    """Trigger rows whose cooldown is applied, ready for `insert_triggers`, and the delivery
    rows of the actions of the automations they are of. `inserted`: triggers a metric
    group's statement inserted itself (`fire_metric_group`), as (ids, automation ids, runs):
    only their deliveries are still to be made."""

    triggers: list[dict[str, Any]] = field(default_factory=list)
    actions: list[dict[str, Any]] = field(default_factory=list)
    inserted: tuple[list[int], list[int], list[int | None]] = field(default_factory=lambda: ([], [], []))
    _json: tuple[int, bytes] | None = None

    def json(self, first: int) -> bytes:
        """The trigger rows as a JSON array, numbered (`n`, their firing order) from `first`
        (made once: a metric group's as soon as its rows are made)."""
        if self._json is None or self._json[0] != first:
            for n, row in enumerate(self.triggers, start=first):
                row["n"] = n
            self._json = (first, _to_json(self.triggers))
        return self._json[1]


def cooled(
    candidates: Iterable[tuple[StoredAutomation, list[Firing]]], last_fired: dict[int, dict[int, datetime]]
) -> Ready:
    """Apply each automation's cooldown to its firings (from its last firing per run in
    `last_fired[automation id]`, updated in place) and make the trigger rows of those kept."""
    ready = Ready()
    from engine.actions.outbox import delivery_rows

    for stored, firings in candidates:
        kept = apply_cooldown(firings, last_fired.setdefault(stored.id, {}), cooldown_of(stored.automation))
        rows = [trigger_row(stored, f) for f in kept]
        if rows:
            ready.triggers.extend(rows)
            ready.actions.extend(delivery_rows(stored.id, [stored.automation.action]))
    return ready


def metric_group_ready(
    group: Sequence[StoredAutomation], rows: list[dict[str, Any]], first: int = 0
) -> Ready:
    """A metric group's query rows as trigger rows, in JSON numbered from `first`: all the
    cooldown needs came with them (each rule's last firing per run), so this needs no query."""
    last_fired: dict[int, dict[int, datetime]] = {}
    ready = cooled(group_firings(group, rows, last_fired), last_fired)
    ready.json(first)
    return ready


def firing_params(group: Sequence[StoredAutomation]) -> dict[str, list[Any]]:
    """What `fire_metric_group` writes into a metric group's triggers besides the query's
    rows, per rule (arrays in rule order): the columns `trigger_row` takes from the
    automation, its `Firing` and its `MetricCause`."""
    columns: dict[str, list[Any]] = {
        "fire_version": [],
        "fire_event_type": [],
        "fire_condition": [],
        "fire_is_change": [],
        **{f"fire_{name}": [] for name in CAUSE_RULE_COLUMNS},
    }
    for stored in group:
        event: Any = stored.automation.event
        cause = MetricCause.of(event, 0, 0).columns()
        columns["fire_version"].append(stored.version)
        columns["fire_event_type"].append(event.type)
        columns["fire_condition"].append(event.describe())
        columns["fire_is_change"].append(metric_condition(stored.automation).prior > 0)
        for name in CAUSE_RULE_COLUMNS:
            columns[f"fire_{name}"].append(cause[name])
    return columns


def inserted_ready(group: Sequence[StoredAutomation], row: dict[str, Any]) -> Ready:
    """The `rule` -1 row of `fire_metric_group` (the group's triggers are inserted): their
    ids, automations and runs, and the delivery rows of the automations that fired."""
    from engine.actions.outbox import delivery_rows

    ids, automations, runs = row["fired_ids"] or [], row["fired_automations"] or [], row["fired_runs"] or []
    ready = Ready(inserted=(list(ids), list(automations), list(runs)))
    fired = set(automations)
    for stored in group:
        if stored.id in fired:
            ready.actions.extend(delivery_rows(stored.id, [stored.automation.action]))
    return ready


def fire(
    conn: psycopg.Connection,
    candidates: list[tuple[StoredAutomation, list[Firing]]],
    metric_last_fired: dict[int, dict[int, datetime]],
) -> int:
    """Apply each automation's cooldown, then insert the triggers that remain and their
    deliveries with one statement. Returns how many triggers were inserted (a firing
    already recorded is skipped by the unique key). Metric rules' last firings per run
    came with their rows (`metric_last_fired`); the other rules' are looked up here."""
    return insert_ready(conn, [prepare(conn, candidates, metric_last_fired)])


def prepare(
    conn: psycopg.Connection,
    candidates: list[tuple[StoredAutomation, list[Firing]]],
    metric_last_fired: dict[int, dict[int, datetime]],
) -> Ready:
    """`fire` without the insert: the cooled trigger rows of `candidates`."""
    candidates = [(stored, firings) for stored, firings in candidates if firings]
    return cooled(candidates, last_fired_of(conn, candidates, metric_last_fired))


def last_fired_of(
    conn: psycopg.Connection,
    candidates: list[tuple[StoredAutomation, list[Firing]]],
    metric_last_fired: dict[int, dict[int, datetime]],
) -> dict[int, dict[int, datetime]]:
    """Where each candidate automation's cooldown starts, per run: metric rules' last
    firings came with their rows (`metric_last_fired`), the other rules' are looked up."""
    last_fired: dict[int, dict[int, datetime]] = {
        stored.id: dict(metric_last_fired.get(stored.id, {})) for stored, _ in candidates
    }
    cooled_ids = [
        stored.id
        for stored, firings in candidates
        if firings and cooldown_of(stored.automation) is not None and not is_metric_rule(stored.automation)
    ]
    if cooled_ids:
        run_pks = sorted(
            {
                f.run_pk
                for stored, firings in candidates
                if stored.id in cooled_ids
                for f in firings
                if f.run_pk is not None
            }
        )
        for r in dicts(conn).execute(query("last_fired"), {"ids": cooled_ids, "run_pks": run_pks}).fetchall():
            last_fired[r["automation_id"]][r["run_pk"]] = r["value_time"]
    return last_fired


def insert_ready(conn: psycopg.Connection, parts: Sequence[Ready]) -> int:
    """Insert the triggers of `parts` (in their order: the ids follow it) and their
    deliveries with one statement. Returns how many triggers were inserted (a firing
    already recorded is skipped by the unique key). Part i's rows are numbered from
    i * 2^32 (see `part_first`)."""
    from engine.actions import flow

    bodies = [part.json(part_first(i))[1:-1] for i, part in enumerate(parts) if part.triggers]
    fired: tuple[list[int], list[int], list[int | None]] = ([], [], [])
    for part in parts:
        ids, automations, runs = part.inserted
        fired[0].extend(ids)
        fired[1].extend(automations)
        fired[2].extend(runs)
    if not bodies and not fired[0]:
        return 0
    actions = [row for part in parts for row in part.actions]
    flow.lock_gates(conn, actions)  # rate limits and digests: counted under the action's lock
    triggers = Jsonb(bodies, dumps=lambda bodies: b"[" + b",".join(bodies) + b"]")
    params = {
        "triggers": triggers,
        "actions": Jsonb(actions),
        "now": clock.now(),
        "fired_ids": fired[0],
        "fired_automations": fired[1],
        "fired_runs": fired[2],
    }
    inserted = conn.execute(query("insert_triggers"), params).fetchone()
    assert inserted is not None
    return int(inserted[0]) + len(fired[0])
