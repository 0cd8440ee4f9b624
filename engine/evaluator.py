"""Incremental, exact, restart-safe evaluation of automations.

Progress is an xid frontier per automation (`automation_state.frontier`): everything
written by transactions with xid < frontier has been evaluated. A tick takes the current
snapshot's xmin as the new frontier — every transaction below it has finished, so a batch
that commits late is never skipped — evaluates each automation's compiled query over
[frontier, new frontier), applies the per-run cooldown in value order, and inserts the
triggers (a unique key makes duplicates impossible), their deliveries (the outbox) and the
new frontier in ONE transaction. Two services on one database share the work: the
automation's state row is locked with FOR UPDATE SKIP LOCKED.

The backtest (`backtest()`) runs the same compiled query in history mode and the same
cooldown code, without writing anything.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from engine import clock
from engine.compiler import CompiledQuery, compile_rule
from engine.db import boundary, connect, query, translate
from engine.exceptions import DatabaseUnavailable, EngineError
from engine.rules import Automation, RunMetricChange, RunMetricThreshold, RunState
from engine.rules.store import StoredAutomation, load_enabled
from engine.settings import Settings, get_settings

log = logging.getLogger(__name__)


def is_metric_rule(automation: Automation) -> bool:
    return isinstance(automation.event, (RunMetricThreshold, RunMetricChange))


def activity_key(automation: Automation) -> tuple[str, str]:
    """What new data can concern an automation: ("metric", name) or ("event", type)."""
    event = automation.event
    if isinstance(event, (RunMetricThreshold, RunMetricChange)):
        return ("metric", event.metric)
    return ("event", "run_state" if isinstance(event, RunState) else event.type)


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
    window_values: list[float] | None = None
    prior_values: list[float] | None = None
    current_aggregate: float | None = None
    prior_aggregate: float | None = None
    event_id: int | None = None
    alias: str | None = None
    tag: str | None = None
    artifact_version_id: int | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class TickResult:
    evaluated: int = 0
    idle: int = 0
    skipped_locked: int = 0
    failed: list[str] = field(default_factory=list)
    fired: int = 0
    duration_ms: float = 0.0


# --------------------------------------------------------------------------------------
# pure logic shared by live evaluation and the backtest
# --------------------------------------------------------------------------------------
def apply_cooldown(
    candidates: Iterable[Firing], last_fired: dict[int, datetime], cooldown: timedelta | None
) -> Iterator[Firing]:
    """Keep the first qualifying value of each run, then one only when its time is at least
    `cooldown` after the time of the value that fired last (SPEC section 2). Candidates must
    come in evaluation order for each run. `last_fired` is updated in place."""
    for firing in candidates:
        if cooldown is None or firing.run_pk is None:
            yield firing
            continue
        last = last_fired.get(firing.run_pk)
        if last is None or firing.time >= last + cooldown:
            last_fired[firing.run_pk] = firing.time
            yield firing


def _finite_list(values: list[float] | None) -> list[float] | None:
    return None if values is None else [float(v) for v in values]


def metric_firings(automation: Automation, rows: Iterable[dict[str, Any]]) -> Iterator[Firing]:
    event = automation.event
    condition = automation.event.describe()
    is_change = isinstance(event, RunMetricChange)
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
            run_pk=row["run_pk"] if isinstance(event, RunState) else None,
            event_id=row["id"],
            alias=details.get("alias"),
            tag=details.get("tag"),
            artifact_version_id=row["version_id"],
            details={
                "metric_filter": automation.event.describe(),
                "event_author": row["author"],
                **{k: v for k, v in details.items() if k in ("from", "to", "registry", "collection", "version_index")},
            },
        )


def firings_from_rows(automation: Automation, rows: list[dict[str, Any]]) -> Iterator[Firing]:
    return metric_firings(automation, rows) if is_metric_rule(automation) else event_firings(automation, rows)


def cooldown_of(automation: Automation) -> timedelta | None:
    """Run events (metric and state) have a per-run cooldown; artifact events have none."""
    return automation.cooldown if getattr(automation.event, "is_run_event", False) else None


# --------------------------------------------------------------------------------------
# the evaluator
# --------------------------------------------------------------------------------------
class Evaluator:
    """Evaluates every enabled automation once per `tick()`.

    `on_fired` is called after a commit that created triggers (the service uses it to wake
    the delivery dispatcher without waiting for its next run).
    """

    def __init__(
        self,
        url: str | None = None,
        settings: Settings | None = None,
        on_fired: Callable[[int], None] | None = None,
    ):
        self.settings = settings or get_settings()
        self.url = url
        self.on_fired = on_fired
        self._conn: psycopg.Connection | None = None
        self._fingerprint: str | None = None
        self._automations: list[StoredAutomation] = []
        self._compiled: dict[tuple[int, int], CompiledQuery] = {}
        self._lock = threading.Lock()
        self._ticks = 0

    # -- connection --------------------------------------------------------------------
    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = connect(self.url, autocommit=True)
            self._conn.execute(query("evaluator_session"))
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- automations -------------------------------------------------------------------
    def _load(self, conn: psycopg.Connection) -> list[StoredAutomation]:
        """The enabled automations, re-read only when one changed (cheap fingerprint query)."""
        fingerprint = _dicts(conn).execute(query("automations_fingerprint")).fetchone()
        fingerprint = next(iter(fingerprint.values()))
        if fingerprint != self._fingerprint:
            self._automations, self._fingerprint = load_enabled(conn), fingerprint
        return self._automations

    def compiled(self, stored: StoredAutomation) -> CompiledQuery:
        key = (stored.id, stored.version)
        if key not in self._compiled:
            self._compiled[key] = compile_rule(stored.automation, "live")
        return self._compiled[key]

    # -- one tick ----------------------------------------------------------------------
    def tick(self) -> TickResult:
        """Evaluate every enabled automation over what is new since its frontier."""
        with self._lock:
            started = time.perf_counter()
            result = TickResult()
            try:
                conn = self._connection()
                with boundary():
                    self._tick(conn, result)
            except psycopg.Error as exc:
                self.close()
                raise translate(exc) from exc
            except DatabaseUnavailable:
                self.close()
                raise
            result.duration_ms = (time.perf_counter() - started) * 1000
            return result

    def _tick(self, conn: psycopg.Connection, result: TickResult) -> None:
        automations = self._load(conn)
        if not automations:
            return
        to_xid = int(next(iter(_dicts(conn).execute(query("current_frontier")).fetchone().values())))
        frontiers = {r["automation_id"]: int(r["frontier"]) for r in _dicts(conn).execute(query("frontiers")).fetchall()}
        lowest = min(frontiers.values(), default=to_xid)
        activity: dict[tuple[str, str], int] = {}
        if lowest < to_xid:
            span = {"from_xid": str(lowest), "to_xid": str(to_xid)}
            for r in _dicts(conn).execute(query("series_activity"), span).fetchall():
                activity[("metric", r["key"])] = int(r["max"])
            for r in _dicts(conn).execute(query("event_activity"), span).fetchall():
                activity[("event", r["type"])] = int(r["max"])

        idle: list[int] = []
        for stored in automations:
            frontier = frontiers.get(stored.id)
            if frontier is None or frontier >= to_xid:
                continue
            newest = activity.get(activity_key(stored.automation))
            if newest is None or newest < frontier:
                idle.append(stored.id)
                continue
            try:
                fired = self._evaluate(conn, stored, to_xid)
            except DatabaseUnavailable:
                raise
            except (EngineError, psycopg.Error) as exc:
                error = translate(exc) if isinstance(exc, psycopg.Error) else exc
                if isinstance(error, DatabaseUnavailable):
                    # the database went away mid-tick: an outage (the service backs off and
                    # logs it), not a failure of this automation nor of the ones after it
                    raise error from exc
                log.error("automation %r failed and is skipped this tick: %s", stored.name, error)
                result.failed.append(stored.name)
                self._record_failure(conn, stored.id, str(error))
                continue
            if fired is None:
                result.skipped_locked += 1
            else:
                result.evaluated += 1
                result.fired += fired
        if idle:
            _dicts(conn).execute(query("advance_idle_frontiers"), {"ids": idle, "to_xid": str(to_xid)})
            result.idle = len(idle)
        self._ticks += 1
        if self._ticks % 20 == 1:
            _dicts(conn).execute(query("prune_series_batches"))

    def _record_failure(self, conn: psycopg.Connection, automation_id: int, error: str) -> None:
        try:
            _dicts(conn).execute(query("record_failure"), {"automation_id": automation_id, "error": error[:2000]})
        except psycopg.Error:  # the failure is already logged; never let it stop the tick
            log.exception("could not record the failure of automation %s", automation_id)

    def _evaluate(self, conn: psycopg.Connection, stored: StoredAutomation, to_xid: int) -> int | None:
        """Evaluate one automation in one transaction. None when another service holds it."""
        compiled = self.compiled(stored)
        with conn.transaction():
            locked = _dicts(conn).execute(query("lock_state"), {"automation_id": stored.id}).fetchone()
            if locked is None:
                return None
            frontier = int(locked["frontier"])
            if frontier >= to_xid:
                return 0
            _dicts(conn).execute(
                "SELECT set_config('statement_timeout', %s, true)", (str(self.settings.statement_timeout_ms),)
            )
            rows = _dicts(conn).execute(compiled.sql, compiled.bind(from_xid=str(frontier), to_xid=str(to_xid))).fetchall()
            fired = self._fire(conn, stored, list(firings_from_rows(stored.automation, rows)))
            _dicts(conn).execute("SELECT set_config('statement_timeout', '0', true)")
            _dicts(conn).execute(query("advance_frontier"), {"automation_id": stored.id, "to_xid": str(to_xid)})
        if fired and self.on_fired is not None:
            self.on_fired(fired)
        return fired

    def _fire(self, conn: psycopg.Connection, stored: StoredAutomation, candidates: list[Firing]) -> int:
        if not candidates:
            return 0
        cooldown = cooldown_of(stored.automation)
        last_fired: dict[int, datetime] = {}
        if cooldown is not None:
            run_pks = sorted({c.run_pk for c in candidates if c.run_pk is not None})
            for r in _dicts(conn).execute(query("last_fired"), {"automation_id": stored.id, "run_pks": run_pks}).fetchall():
                last_fired[r["run_pk"]] = r["value_time"]
        from engine.actions.outbox import enqueue

        action = stored.automation.action.model_dump(mode="json")
        fired = 0
        for firing in apply_cooldown(candidates, last_fired, cooldown):
            row = _dicts(conn).execute(query("insert_trigger"), trigger_params(stored, firing)).fetchone()
            if row is None:  # already fired (a duplicate is impossible by the unique key)
                continue
            enqueue(conn, trigger_id=row["id"], automation_id=stored.id, actions=[action])
            fired += 1
        return fired


def _dicts(conn: psycopg.Connection) -> psycopg.Cursor:
    """A cursor whose rows are dicts (the connection itself keeps tuple rows for others)."""
    return conn.cursor(row_factory=dict_row)


def trigger_params(stored: StoredAutomation, firing: Firing) -> dict[str, Any]:
    return {
        "automation_id": stored.id,
        "automation_version": stored.version,
        "event_type": firing.event_type,
        "cause": firing.cause,
        "run_pk": firing.run_pk,
        "event_id": firing.event_id,
        "metric": firing.metric,
        "step": firing.step,
        "value_time": firing.time,
        "value": firing.value,
        "window_values": firing.window_values,
        "prior_values": firing.prior_values,
        "current_aggregate": firing.current_aggregate,
        "prior_aggregate": firing.prior_aggregate,
        "alias": firing.alias,
        "tag": firing.tag,
        "artifact_version_id": firing.artifact_version_id,
        "details": Jsonb(firing.details),
    }


# --------------------------------------------------------------------------------------
# backtest
# --------------------------------------------------------------------------------------
def backtest(conn: psycopg.Connection, automation: Automation, since: datetime) -> list[Firing]:
    """What `automation` would have fired over stored history since `since` (nothing is written)."""
    compiled = compile_rule(automation, "history")
    with boundary():
        cur = conn.cursor(row_factory=dict_row)
        rows = cur.execute(compiled.sql, compiled.bind(since=since)).fetchall()
    return list(apply_cooldown(firings_from_rows(automation, rows), {}, cooldown_of(automation)))


def parse_since(text: str) -> datetime:
    """`7d`, `12h`, `30m`, `45s`, or an ISO timestamp with a timezone."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    text = text.strip()
    if text and text[-1] in units and text[:-1].replace(".", "", 1).isdigit():
        amount = float(text[:-1])
        if not math.isfinite(amount):
            raise ValueError(f"not a duration: {text!r}")
        return clock.now() - timedelta(seconds=amount * units[text[-1]])
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        raise ValueError(f"{text!r} has no timezone: add one, e.g. {text}+00:00")
    return parsed
