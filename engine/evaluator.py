"""Incremental, exact, restart-safe evaluation of automations.

Progress is an xid frontier per automation (`automation_state.frontier`): everything
written by transactions with xid < frontier has been evaluated. A tick takes the current
snapshot's xmin as the new frontier — every transaction below it has finished, so a batch
that commits late is never skipped — and evaluates what is new in [frontier, new frontier):
the metric rules of one metric with one query (their windows reduced once per value for all
of them, see `compiler.compile_metrics`), each event rule with its own. It applies the
per-run cooldown in value order and inserts the triggers (a unique key makes duplicates
impossible), their deliveries (the outbox) and the new frontiers in one transaction per
connection (ENGINE_EVALUATION_CONNECTIONS share a tick's work). Two services on one
database share the work: the automations' state rows are locked with FOR UPDATE SKIP LOCKED.

The backtest (`backtest()`) runs the same compiled query in history mode and the same
cooldown code, without writing anything.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.adapt import Dumper, PyFormat, Transformer
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from engine import clock
from engine.automations import StoredAutomation, load_enabled
from engine.compiler import CompiledQuery, compile_metrics, compile_rule, span_of
from engine.db import boundary, connect, query, translate
from engine.exceptions import DatabaseUnavailable, EngineError
from engine.rules import Automation, RunMetricChange, RunMetricThreshold, RunState
from engine.settings import Settings, get_settings

log = logging.getLogger(__name__)


class _Dumped:
    """A query parameter converted to PostgreSQL's text form once. A group's rule arrays
    change only with its rules: converting them again on every execution cost ~1.5 ms per
    group query with 200 rules (the (a) tick runs one per metric)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes):
        self.data = data


class _DumpedDumper(Dumper):
    oid = 0  # unknown: the query's CAST gives the type

    def dump(self, obj: _Dumped) -> bytes:
        return obj.data


psycopg.adapters.register_dumper(_Dumped, _DumpedDumper)


_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%%")


@functools.lru_cache(maxsize=1024)
def _native(sql: str) -> tuple[bytes, tuple[str, ...]]:
    """`sql` with PostgreSQL's own $n placeholders, and the parameter name of each n. psycopg
    parses a statement's %(name)s placeholders again on every execution (uncached) when it
    is longer than 4 KB or has more than 50 parameters, as a group query does: ~5 ms each."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(0) == "%%":
            return "%"
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    return _PLACEHOLDER.sub(number, sql).encode(), tuple(names)


def _execute(
    conn: psycopg.Connection, compiled: CompiledQuery, runtime: dict[str, Any]
) -> list[dict[str, Any]]:
    """Run a compiled query (prepared: planned once per connection) and return its rows."""
    sql, names = _native(compiled.sql)
    params = compiled.bind(**runtime)
    cursor = psycopg.RawCursor(conn, row_factory=dict_row)
    return cursor.execute(sql, [params[name] for name in names], prepare=True).fetchall()


def _dumped_once(params: dict[str, Any]) -> dict[str, Any]:
    """`params` with its lists (the rules' arrays) converted once, for every execution."""
    transformer = Transformer()
    return {
        name: _Dumped(bytes(transformer.get_dumper(value, PyFormat.TEXT).dump(value)))
        if isinstance(value, list)
        else value
        for name, value in params.items()
    }


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


def _finite_list(values: list[float] | str | None) -> list[float] | str | None:
    return values if values is None or isinstance(values, str) else [float(v) for v in values]


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
                **{
                    k: v
                    for k, v in details.items()
                    if k in ("from", "to", "registry", "collection", "version_index")
                },
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
        self._by_activity: dict[tuple[str, str], list[tuple[StoredAutomation, tuple[str, str] | None]]] = {}
        self._in_tails: set[int] = set()  # the ids of the metric rules whose windows fit the tails
        self._idle_refreshed = -math.inf  # when idle frontiers were last moved with nothing written
        self._compiled: dict[tuple[Any, ...], CompiledQuery] = {}  # (tails_only, (id, version)...)
        self._lock = threading.Lock()
        self._ticks = 0
        self._helpers: dict[int, psycopg.Connection] = {}
        self._session = {"statement_timeout_ms": str(self.settings.statement_timeout_ms)}
        self._pool: ThreadPoolExecutor | None = None
        self._failures: dict[int, int] = {}  # automations that failed last tick: consecutive failures

    # -- connections -------------------------------------------------------------------
    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = connect(self.url, autocommit=True)
            self._conn.execute(query("evaluator_session"), self._session)
        return self._conn

    def _helper(self, n: int) -> psycopg.Connection:
        """The n-th extra connection (1-based) of a parallel tick."""
        conn = self._helpers.get(n)
        if conn is None or conn.closed or conn.broken:
            conn = self._helpers[n] = connect(self.url, autocommit=True)
            conn.execute(query("evaluator_session"), self._session)
        return conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        for conn in self._helpers.values():
            conn.close()
        self._helpers.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    # -- automations -------------------------------------------------------------------
    def _load(self, conn: psycopg.Connection, fingerprint: str) -> list[StoredAutomation]:
        """The enabled automations, re-read only when one changed (`fingerprint`), with what
        a tick needs of each, worked out once: `_by_activity` holds them per activity key
        (what new data concerns them), with their group key (None: evaluated alone)."""
        if fingerprint != self._fingerprint:
            self._automations, self._fingerprint = load_enabled(conn), fingerprint
            self._by_activity = {}
            self._in_tails = {s.id for s in self._automations if self._fits_tails([s])}
            for stored in self._automations:
                group = ("metric", stored.automation.event.metric) if stored.id in self._in_tails else None
                self._by_activity.setdefault(activity_key(stored.automation), []).append((stored, group))
        return self._automations

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
        states = _dicts(conn).execute(query("tick_state"), prepare=True).fetchall()
        automations = self._load(conn, states[0]["fingerprint"])
        if not automations:
            return
        to_xid = int(states[0]["to_xid"])
        frontiers: dict[int, int] = {}
        self._failures = {}
        for state in states:
            if state["ids"] is None:
                continue
            frontier = int(state["frontier"])
            frontiers.update(dict.fromkeys(state["ids"], frontier))
            if state["failures"]:
                self._failures.update(dict.fromkeys(state["ids"], int(state["failures"])))
        lowest = min((int(s["frontier"]) for s in states if s["ids"] is not None), default=to_xid)
        activity: dict[tuple[str, str], int] = {}
        series: dict[str, int] = {}  # per metric: series written to (to share the work out)
        if lowest < to_xid:
            span = {"from_xid": str(lowest), "to_xid": str(to_xid)}
            for r in _dicts(conn).execute(query("activity"), span, prepare=True).fetchall():
                activity[(r["kind"], r["name"])] = int(r["newest"])
                if r["kind"] == "metric":
                    series[r["name"]] = int(r["series"])

        idle: list[int] = []
        groups: dict[tuple[Any, ...], list[StoredAutomation]] = {}
        catching_up: list[StoredAutomation] = []
        for key, members in self._by_activity.items():
            newest = activity.get(key)
            for stored, group in members:
                frontier = frontiers.get(stored.id)
                if frontier is None or frontier >= to_xid:
                    continue
                if newest is None or newest < frontier:
                    idle.append(stored.id)
                elif stored.id in self._failures:
                    catching_up.append(stored)
                else:
                    # metric rules on one metric with the same frontier are evaluated together
                    groups.setdefault((*group, frontier) if group else ("alone", stored.id), []).append(
                        stored
                    )
        if groups:
            self._run_parallel(conn, list(groups.values()), series, to_xid, result)
        # automations that failed last time: alone, each in its own transaction, over a span
        # cut shorter with each failure (a backlog too long for one statement, in parts)
        for stored in catching_up:
            self._run(conn, [[stored]], to_xid, result, catch_up=True)
        # Idle automations' frontiers move past what others were written. When nothing was
        # written at all, moving them (a write, whose xid moves the xmin: the next tick would
        # do it again) only refreshes evaluated_at: done at most once per interval.
        if idle and (activity or time.monotonic() - self._idle_refreshed >= self.settings.interval):
            _dicts(conn).execute(query("advance_idle_frontiers"), {"ids": idle, "to_xid": str(to_xid)})
            self._idle_refreshed = time.monotonic()
        result.idle = len(idle)
        self._ticks += 1
        if self._ticks % 20 == 1:
            _dicts(conn).execute(query("prune_series_batches"))

    def _fits_tails(self, members: Sequence[StoredAutomation]) -> bool:
        """Metric rules whose windows fit in the per-series tails (ENGINE_SERIES_TAIL). Those
        on the same metric with the same frontier are evaluated together, by one query (their
        windows reduced once per value for all of them) in one transaction. Rules whose
        windows are longer than the tail read the hypertable for every series, and event
        rules have their own queries: those go alone."""
        return is_metric_rule(members[0].automation) and all(
            span_of(s.automation) <= self.settings.series_tail for s in members
        )

    def _run_parallel(
        self,
        conn: psycopg.Connection,
        groups: list[list[StoredAutomation]],
        series: dict[str, int],
        to_xid: int,
        result: TickResult,
    ) -> None:
        """Share the groups out among up to `evaluation_connections` connections, heaviest
        first (weight: series written to x rules), each running its share in one
        transaction. The shares hold disjoint automations, so they never wait on each other."""
        shares = min(self.settings.evaluation_connections, len(groups))
        if shares <= 1:
            self._run(conn, groups, to_xid, result)
            return

        def weight(group: list[StoredAutomation]) -> int:
            automation = group[0].automation
            pending = series.get(automation.event.metric, 1) if is_metric_rule(automation) else 1
            return pending * len(group)

        parts: list[list[list[StoredAutomation]]] = [[] for _ in range(shares)]
        loads = [0] * shares
        for group in sorted(groups, key=weight, reverse=True):
            lightest = loads.index(min(loads))
            parts[lightest].append(group)
            loads[lightest] += weight(group)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                max_workers=self.settings.evaluation_connections - 1, thread_name_prefix="engine-evaluate"
            )
        partials = [TickResult() for _ in parts]

        def run_share(n: int) -> None:
            try:
                with boundary():
                    self._run(self._helper(n), parts[n], to_xid, partials[n])
            except DatabaseUnavailable:
                self._helpers.pop(n).close()
                raise

        futures = [self._pool.submit(run_share, n) for n in range(1, shares)]
        errors: list[BaseException] = []
        try:
            self._run(conn, parts[0], to_xid, partials[0])
        except BaseException as exc:  # the helpers finish their transactions first
            errors.append(exc)
        for future in futures:
            try:
                future.result()
            except BaseException as exc:
                errors.append(exc)
        for partial in partials:
            result.evaluated += partial.evaluated
            result.skipped_locked += partial.skipped_locked
            result.fired += partial.fired
            result.failed.extend(partial.failed)
        if errors:
            raise errors[0]

    def _run(
        self,
        conn: psycopg.Connection,
        groups: list[list[StoredAutomation]],
        to_xid: int,
        result: TickResult,
        catch_up: bool = False,
    ) -> None:
        """Evaluate groups in one transaction (one commit per tick when all goes well). When
        a group's query fails, the other groups are evaluated again without it, and the
        failing group's members one by one, so that one broken (or too slow) automation is
        found, logged and skipped while the others go on. (A timeout of a group of n rules
        thus costs up to n + 1 timeouts in that tick.)"""
        try:
            evaluated, skipped, fired = self._evaluate(conn, groups, to_xid, catch_up)
        except _GroupFailed as failed:
            error = translate(failed.error)
            if isinstance(error, DatabaseUnavailable):
                raise error from failed.error
            others = [group for group in groups if group is not failed.group]
            if others:
                self._run(conn, others, to_xid, result, catch_up)
            self._isolate(conn, failed.group, error, to_xid, result)
            return
        except DatabaseUnavailable:
            raise
        except (EngineError, psycopg.Error) as exc:
            error = translate(exc) if isinstance(exc, psycopg.Error) else exc
            if isinstance(error, DatabaseUnavailable):
                # the database went away mid-tick: an outage (the service backs off and
                # logs it), not a failure of these automations nor of the ones after them
                raise error from exc
            if len(groups) > 1:
                for group in groups:
                    self._run(conn, [group], to_xid, result, catch_up)
                return
            self._isolate(conn, groups[0], error, to_xid, result)
            return
        result.evaluated += evaluated
        result.skipped_locked += skipped
        result.fired += fired

    def _isolate(
        self,
        conn: psycopg.Connection,
        members: list[StoredAutomation],
        error: Exception,
        to_xid: int,
        result: TickResult,
    ) -> None:
        """A failed group: its members one by one; a failed automation: logged, recorded, skipped."""
        if len(members) > 1:
            log.warning(
                "%d automations on one metric failed together (%s); evaluating them one by one",
                len(members),
                error,
            )
            for stored in members:
                self._run(conn, [[stored]], to_xid, result)
            return
        (stored,) = members
        log.error("automation %r failed and is skipped this tick: %s", stored.name, error)
        result.failed.append(stored.name)
        self._record_failure(conn, stored.id, str(error))

    def _record_failure(self, conn: psycopg.Connection, automation_id: int, error: str) -> None:
        try:
            _dicts(conn).execute(
                query("record_failure"), {"automation_id": automation_id, "error": error[:2000]}
            )
        except psycopg.Error:  # the failure is already logged; never let it stop the tick
            log.exception("could not record the failure of automation %s", automation_id)

    def compiled(self, members: Sequence[StoredAutomation], tails_only: bool = False) -> CompiledQuery:
        """The live query of a group (metric rules on one metric) or of one automation;
        `tails_only`: the variant of a metric group that reads the series tails only."""
        key = (tails_only, *((s.id, s.version) for s in members))
        if key not in self._compiled:
            if len(self._compiled) > 512:  # groups that no longer exist (rules changed, work shared)
                self._compiled.clear()
            if is_metric_rule(members[0].automation):
                compiled = compile_metrics(
                    [s.automation for s in members],
                    "live",
                    tails_only=tails_only,
                    automation_ids=[s.id for s in members],
                )
                self._compiled[key] = dataclasses.replace(compiled, params=_dumped_once(compiled.params))
            else:
                (stored,) = members
                self._compiled[key] = compile_rule(stored.automation, "live")
        return self._compiled[key]

    def _rows(
        self, conn: psycopg.Connection, members: list[StoredAutomation], frontier: int, to_xid: int
    ) -> list[dict[str, Any]]:
        """What a group's query returns over [frontier, to_xid). Metric groups whose windows
        fit the tails run the tails-only query first; the full one (which can read the
        hypertable) only when a series' tail fell short (a backlog)."""
        runtime = {"from_xid": str(frontier), "to_xid": str(to_xid)}
        if all(s.id in self._in_tails for s in members):
            compiled = self.compiled(members, tails_only=True)
            rows = _execute(conn, compiled, runtime)
            if not rows or rows[0]["rule"] != 0:
                return rows
        compiled = self.compiled(members)
        return _execute(conn, compiled, runtime)

    def _evaluate(
        self,
        conn: psycopg.Connection,
        groups: list[list[StoredAutomation]],
        to_xid: int,
        catch_up: bool = False,
    ) -> tuple[int, int, int]:
        """Evaluate groups in one transaction: lock the members' states (members another
        service holds are skipped), run each group's query over [frontier, to_xid) (a
        catch-up: over its first part, see `_catch_up_end`), apply each member's cooldown,
        insert the triggers and their deliveries, move the frontiers. Returns (evaluated,
        skipped because locked, fired)."""
        members = [stored for group in groups for stored in group]
        with conn.transaction():
            locked = {
                r["automation_id"]: int(r["frontier"])
                for r in _dicts(conn)
                .execute(query("lock_states"), {"ids": [s.id for s in members]})
                .fetchall()
            }
            candidates: list[tuple[StoredAutomation, list[Firing]]] = []
            last_fired: dict[int, dict[int, datetime]] = {}  # metric rules: from their rows
            evaluated: dict[int, list[int]] = {}  # where frontiers move: the automations
            for group in groups:
                # another service may have moved a frontier since the tick began: the locked
                # value is the truth, and members are evaluated together only from the same one
                by_frontier: dict[int, list[StoredAutomation]] = {}
                for stored in group:
                    if stored.id in locked and locked[stored.id] < to_xid:
                        by_frontier.setdefault(locked[stored.id], []).append(stored)
                for frontier, same in by_frontier.items():
                    end = self._catch_up_end(conn, same, frontier, to_xid) if catch_up else to_xid
                    try:
                        rows = self._rows(conn, same, frontier, end)
                    except psycopg.Error as exc:
                        raise _GroupFailed(group, exc) from exc
                    candidates.extend(group_firings(same, rows, last_fired))
                    evaluated.setdefault(end, []).extend(s.id for s in same)
            fired = self._fire(conn, candidates, last_fired)
            for end, ids in evaluated.items():
                advance = "advance_frontiers" if end >= to_xid else "advance_frontiers_partially"
                _dicts(conn).execute(query(advance), {"ids": ids, "to_xid": str(end)})
        if fired and self.on_fired is not None:
            self.on_fired(fired)
        return sum(len(ids) for ids in evaluated.values()), len(members) - len(locked), fired

    def _catch_up_end(
        self, conn: psycopg.Connection, members: list[StoredAutomation], frontier: int, to_xid: int
    ) -> int:
        """Where the try of an automation that failed last time stops: a metric rule's span
        is cut to the first 1/2^failures of its metric's flushes (event rules: not cut)."""
        automation = members[0].automation
        failures = max(self._failures.get(s.id, 0) for s in members)
        if not failures or not is_metric_rule(automation):
            return to_xid
        bound = {
            "metric": automation.event.metric,
            "from_xid": str(frontier),
            "to_xid": str(to_xid),
            "failures": min(failures, 30),
        }
        end = _dicts(conn).execute(query("catch_up_end"), bound).fetchone()["end_xid"]
        return to_xid if end is None else int(end)

    def _fire(
        self,
        conn: psycopg.Connection,
        candidates: list[tuple[StoredAutomation, list[Firing]]],
        metric_last_fired: dict[int, dict[int, datetime]],
    ) -> int:
        """Apply each automation's cooldown, then insert the triggers that remain and their
        deliveries with one statement. Returns how many triggers were inserted (a firing
        already recorded is skipped by the unique key). Metric rules' last firings per run
        came with their rows (`metric_last_fired`); the other rules' are looked up here."""
        candidates = [(stored, firings) for stored, firings in candidates if firings]
        if not candidates:
            return 0
        last_fired: dict[int, dict[int, datetime]] = {
            stored.id: dict(metric_last_fired.get(stored.id, {})) for stored, _ in candidates
        }
        cooled = [
            stored.id
            for stored, _ in candidates
            if cooldown_of(stored.automation) is not None and not is_metric_rule(stored.automation)
        ]
        if cooled:
            run_pks = sorted(
                {
                    f.run_pk
                    for stored, firings in candidates
                    if stored.id in cooled
                    for f in firings
                    if f.run_pk is not None
                }
            )
            for r in (
                _dicts(conn).execute(query("last_fired"), {"ids": cooled, "run_pks": run_pks}).fetchall()
            ):
                last_fired[r["automation_id"]][r["run_pk"]] = r["value_time"]
        from engine.actions import flow
        from engine.actions.outbox import delivery_rows

        triggers: list[dict[str, Any]] = []
        actions: list[dict[str, Any]] = []
        for stored, firings in candidates:
            cooled_firings = apply_cooldown(firings, last_fired[stored.id], cooldown_of(stored.automation))
            triggers.extend(trigger_row(stored, f) for f in cooled_firings)
            actions.extend(delivery_rows(stored.id, [stored.automation.action]))
        if not triggers:
            return 0
        for n, row in enumerate(triggers):
            row["n"] = n
        flow.lock_gates(conn, actions)  # rate limits and digests: counted under the action's lock
        row = conn.execute(
            query("insert_triggers"),
            {"triggers": Jsonb(triggers), "actions": Jsonb(actions), "now": clock.now()},
        ).fetchone()
        return int(row[0])


class _GroupFailed(Exception):
    """The query of one group failed (inside a transaction that holds others too)."""

    def __init__(self, group: list[StoredAutomation], error: psycopg.Error):
        super().__init__(str(error))
        self.group, self.error = group, error


def group_firings(
    group: Sequence[StoredAutomation], rows: list[dict[str, Any]], last_fired: dict[int, dict[int, datetime]]
) -> Iterator[tuple[StoredAutomation, list[Firing]]]:
    """Split a query's rows among the automations of its group (a metric group's rows
    carry `rule`, the automation's 1-based position; a lone event rule's rows are all its).
    A metric row's `last_fired` (the automation's last firing in that run) goes to
    `last_fired[automation id][run]`."""
    if not is_metric_rule(group[0].automation):
        (stored,) = group
        yield stored, list(event_firings(stored.automation, rows))
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


def _dicts(conn: psycopg.Connection) -> psycopg.Cursor:
    """A cursor whose rows are dicts (the connection itself keeps tuple rows for others)."""
    return conn.cursor(row_factory=dict_row)


def _json_float(value: float | None) -> float | str | None:
    """JSON has no NaN or infinities; PostgreSQL reads them back from these strings."""
    if value is None or math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def _json_floats(values: list[float] | str | None) -> list[float | str | None] | str | None:
    return values if values is None or isinstance(values, str) else [_json_float(v) for v in values]


def trigger_row(stored: StoredAutomation, firing: Firing) -> dict[str, Any]:
    """One row of `insert_triggers` (JSON: the statement reads them with jsonb_to_recordset)."""
    return {
        "automation_id": stored.id,
        "automation_version": stored.version,
        "event_type": firing.event_type,
        "cause": firing.cause,
        "run_pk": firing.run_pk,
        "event_id": firing.event_id,
        "metric": firing.metric,
        "step": firing.step,
        "value_time": firing.time.isoformat(),
        "value": _json_float(firing.value),
        "window_values": _json_floats(firing.window_values),
        "prior_values": _json_floats(firing.prior_values),
        "current_aggregate": _json_float(firing.current_aggregate),
        "prior_aggregate": _json_float(firing.prior_aggregate),
        "alias": firing.alias,
        "tag": firing.tag,
        "artifact_version_id": firing.artifact_version_id,
        "details": firing.details,
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
