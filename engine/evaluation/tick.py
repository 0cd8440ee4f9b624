"""The evaluator's tick: which automations have new data, how they are grouped and shared
among connections, and the transaction that evaluates a share (see the package docstring)."""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg

from engine import clock
from engine.automations import StoredAutomation, load_enabled
from engine.compiler import (
    CompiledQuery,
    activity_key,
    compile_metrics,
    compile_rule,
    is_metric_rule,
    span_of,
)
from engine.db import Database, boundary, query
from engine.evaluation.firing import (
    Firing,
    Ready,
    cooled,
    fire,
    firing_params,
    firings_from_rows,
    group_firings,
    insert_ready,
    inserted_ready,
    last_fired_of,
    metric_group_ready,
    part_first,
)
from engine.evaluation.isolation import GroupFailed, evaluate_isolating, record_failure
from engine.evaluation.statements import dicts, dumped_once, execute, run
from engine.exceptions import DatabaseError, DatabaseUnavailable
from engine.settings import Settings, get_settings

log = logging.getLogger(__name__)

# How long after its transaction began a flush may still be committing: a stall check looks
# back this far past its previous check for stamps that became visible late.
_STAMP_MARGIN = timedelta(minutes=1)
# psycopg's default: a statement run this many times on a connection is prepared
# (those run with prepare=True at once).
_PREPARE_THRESHOLD = 5
# While data keeps coming, the frontiers of idle automations (nothing new for them) move at
# most this often: moving them is a commit of its own, and until then they only widen the
# span of the next tick's activity query a little.
_IDLE_REFRESH_SECONDS = 1.0
# Watermark rows a tick deletes at least (more when it saw more written).
_PRUNE_AT_LEAST = 1_000


@dataclass
class TickResult:
    evaluated: int = 0
    idle: int = 0
    skipped_locked: int = 0
    failed: list[str] = field(default_factory=list)
    fired: int = 0
    duration_ms: float = 0.0


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
        database: Database | None = None,
    ):
        self.settings = settings or get_settings()
        self.url = url
        # its connections are leased from the process's pool (the service's), or from its own
        self.database = database or Database(
            url, settings=self.settings, shares={"evaluation": self.settings.evaluation_connections}
        )
        self.on_fired = on_fired
        self._conn: psycopg.Connection | None = None
        self._fingerprint: str | None = None
        self._automations: list[StoredAutomation] = []
        self._by_activity: dict[tuple[str, str], list[tuple[StoredAutomation, tuple[str, str] | None]]] = {}
        self._in_tails: set[int] = set()  # the ids of the metric rules whose windows fit the tails
        self._clocked: list[StoredAutomation] = []  # rules driven by time (stalled runs)
        self._checked: dict[int, datetime] = {}  # their last check's "now", per automation
        self._idle_refreshed = -math.inf  # when idle frontiers were last moved
        self._compiled: dict[tuple[Any, ...], CompiledQuery] = {}  # (tails_only, (id, version)...)
        self._lock = threading.Lock()
        self._helpers: dict[int, psycopg.Connection] = {}
        self._session = {"statement_timeout_ms": str(self.settings.statement_timeout_ms)}
        self._pool: ThreadPoolExecutor | None = None
        self._failures: dict[int, int] = {}  # automations that failed last tick: consecutive failures

    # -- connections -------------------------------------------------------------------
    def _lease(self) -> psycopg.Connection:
        """A connection of the evaluation share with the evaluator's session settings (a
        lease: they stay with it). One whose settings cannot be made is closed, not kept."""
        conn = self.database.lease("evaluation")
        # The pool's connections prepare nothing (PgBouncer), but this one is the
        # evaluator's for good (`engine serve` connects directly): its statements are
        # prepared, so that a tick does not plan its group queries again (~15 ms each
        # with 200 rules on a metric), nor the trigger inserts after a few ticks.
        conn.prepare_threshold = _PREPARE_THRESHOLD
        try:
            with boundary():
                conn.execute(query("evaluator_session"), self._session)
        except BaseException:
            conn.close()
            raise
        return conn

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = self._lease()
        return self._conn

    def _helper(self, n: int) -> psycopg.Connection:
        """The n-th extra connection (1-based) of a parallel tick."""
        conn = self._helpers.get(n)
        if conn is None or conn.closed or conn.broken:
            conn = self._helpers[n] = self._lease()
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
            self._clocked = [s for s in self._automations if activity_key(s.automation)[0] == "clock"]
            for stored in self._automations:
                key = activity_key(stored.automation)  # ("metric", name) for a metric rule
                if key[0] == "clock":  # evaluated every tick (`_run_clocked`)
                    continue
                self._by_activity.setdefault(key, []).append(
                    (stored, key if stored.id in self._in_tails else None)
                )
            self._compile_all()
        return self._automations

    def _compile_all(self) -> None:
        """Compile the queries of the automations just loaded, as their ticks will run them:
        a metric group's tails-only query, every other automation's own. Compiling one costs
        ~25 ms: done on the first tick that had data for it, that tick (and the p99 of the
        ticks) paid it. (A group's query that reads the hypertable is compiled when a tail
        falls short, rarely.)"""
        work: list[tuple[list[StoredAutomation], bool]] = [([s], False) for s in self._clocked]
        for members in self._by_activity.values():
            grouped = [stored for stored, group in members if group is not None]
            if grouped:
                work.append((grouped, True))
            work.extend(([stored], False) for stored, group in members if group is None)
        for automations, tails_only in work:
            try:
                if tails_only:
                    self.firing(automations)
                else:
                    self.compiled(automations)
            except Exception:  # compiled again by its tick, whose isolation skips and records it
                log.debug("compiling %s failed", [s.name for s in automations], exc_info=True)

    # -- one tick ----------------------------------------------------------------------
    def tick(self) -> TickResult:
        """Evaluate every enabled automation over what is new since its frontier."""
        with self._lock:
            started = time.perf_counter()
            result = TickResult()
            try:
                with boundary():
                    self._tick(self._connection(), result)
            except DatabaseUnavailable:
                self.close()
                raise
            result.duration_ms = (time.perf_counter() - started) * 1000
            return result

    def _tick(self, conn: psycopg.Connection, result: TickResult) -> None:
        states = dicts(conn).execute(query("tick_state"), prepare=True).fetchall()
        automations = self._load(conn, states[0]["fingerprint"])
        if not automations:
            return
        if self._clocked:
            self._run_clocked(conn, int(states[0]["to_xid"]), result)
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
            for r in dicts(conn).execute(query("activity"), span, prepare=True).fetchall():
                activity[(r["kind"], r["name"])] = int(r["newest"])
                if r["kind"] == "metric":
                    series[r["name"]] = int(r["series"])

        idle: list[int] = []
        groups: dict[tuple[Any, ...], list[StoredAutomation]] = {}
        catching_up: list[StoredAutomation] = []
        for key, members in self._by_activity.items():
            newest = activity.get(key)
            for stored, group in members:
                since = frontiers.get(stored.id)
                if since is None or since >= to_xid:
                    continue
                if newest is None or newest < since:
                    idle.append(stored.id)
                elif stored.id in self._failures:
                    catching_up.append(stored)
                else:
                    # metric rules on one metric with the same frontier are evaluated together
                    groups.setdefault((*group, since) if group else ("alone", stored.id), []).append(stored)
        if groups:
            self._run_parallel(conn, list(groups.values()), series, to_xid, result)
        # automations that failed last time: alone, each in its own transaction, over a span
        # cut shorter with each failure (a backlog too long for one statement, in parts)
        for stored in catching_up:
            self._run(conn, [[stored]], to_xid, result, catch_up=True)
        # Idle automations' frontiers move past what others were written, at most once a
        # second. When nothing was written at all, moving them (a write, whose xid moves the
        # xmin: the next tick would do it again) only refreshes evaluated_at: done at most
        # once per interval.
        refresh = _IDLE_REFRESH_SECONDS if activity else self.settings.interval
        if idle and time.monotonic() - self._idle_refreshed >= refresh:
            dicts(conn).execute(query("advance_idle_frontiers"), {"ids": idle, "to_xid": str(to_xid)})
            self._idle_refreshed = time.monotonic()
        result.idle = len(idle)
        # Watermark rows behind every frontier go, a tick's worth at a time (twice what this
        # one wrote: a backlog drains too), so that no tick pays for many ticks' rows at once.
        limit = _PRUNE_AT_LEAST + 2 * sum(series.values())
        dicts(conn).execute(query("prune_series_batches"), {"limit": limit}, prepare=True)

    def _run_clocked(self, conn: psycopg.Connection, to_xid: int, result: TickResult) -> None:
        """Rules driven by time, every tick, in one transaction: each one's running runs past
        their deadline, not fired yet for that deadline. Locked like the others (another
        service skips them this tick); the triggers' unique key is the last guard."""

        def evaluate(part: list[list[StoredAutomation]]) -> None:
            members = [stored for group in part for stored in group]
            with conn.transaction():
                locked = {
                    r["automation_id"]
                    for r in dicts(conn).execute(query("lock_states"), {"ids": [s.id for s in members]})
                }
                candidates: list[tuple[StoredAutomation, list[Firing]]] = []
                # the database's clock (unless a test froze the engine's): the runs' stamps are on it
                now = clock.frozen_at() or dicts(conn).execute(query("database_now")).fetchone()["now"]  # type: ignore[index]
                checked: dict[int, datetime] = {}
                for stored in members:
                    if stored.id not in locked:
                        continue
                    # Deadlines since the previous check (this process's), less a margin for
                    # flushes still committing then (their stamp is their transaction's start);
                    # the first check of a process looks back to the automation's enabling.
                    previous = self._checked.get(stored.id)
                    since = stored.evaluate_from
                    if previous is not None:
                        since = max(since, previous - _STAMP_MARGIN)
                    ahead = now + clock.ahead_for(stored.name)  # the demo's compressed time
                    runtime = {"now": ahead, "checked_from": since, "automation_id": stored.id}
                    checked[stored.id] = ahead
                    try:
                        with boundary():
                            rows = execute(conn, self.compiled([stored]), runtime)
                    except DatabaseError as exc:
                        raise GroupFailed([stored], exc) from exc
                    candidates.append((stored, list(firings_from_rows(stored.automation, rows))))
                fired = fire(conn, candidates, {})
                # their frontier only says when they were last evaluated (`engine rules list`)
                dicts(conn).execute(query("advance_frontiers"), {"ids": list(locked), "to_xid": str(to_xid)})
            self._checked.update(checked)
            result.evaluated += len(locked)
            result.skipped_locked += len(members) - len(locked)
            result.fired += fired
            if fired and self.on_fired is not None:
                self.on_fired(fired)

        def skip(stored: StoredAutomation, error: Exception) -> None:
            result.failed.append(stored.name)
            record_failure(conn, stored, error)

        evaluate_isolating([[s] for s in self._clocked], evaluate, skip)

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
            pending = series.get(activity_key(automation)[1], 1) if is_metric_rule(automation) else 1
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
                helper = self._helpers.pop(n, None)  # none when it could not be leased
                if helper is not None:
                    helper.close()
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
        """Evaluate groups in one transaction (one commit per tick when all goes well); when
        it fails, isolate the failing automation (see `isolation`) and go on without it."""

        def evaluate(part: list[list[StoredAutomation]]) -> None:
            with boundary():  # isolation sees the engine's errors
                evaluated, skipped, fired = self._evaluate(conn, part, to_xid, catch_up)
            result.evaluated += evaluated
            result.skipped_locked += skipped
            result.fired += fired

        def skip(stored: StoredAutomation, error: Exception) -> None:
            result.failed.append(stored.name)
            record_failure(conn, stored, error)

        evaluate_isolating(groups, evaluate, skip)

    def compiled(self, members: Sequence[StoredAutomation], tails_only: bool = False) -> CompiledQuery:
        """The live query of a group (metric rules on one metric) or of one automation;
        `tails_only`: the variant of a metric group that reads the series tails only."""
        key = (tails_only, *((s.id, s.version) for s in members))
        if key not in self._compiled:
            if len(self._compiled) > max(512, 4 * len(self._automations)):  # groups that no longer exist
                self._compiled.clear()
            if is_metric_rule(members[0].automation):
                compiled = compile_metrics(
                    [s.automation for s in members],
                    "live",
                    tails_only=tails_only,
                    automation_ids=[s.id for s in members],
                )
                self._compiled[key] = dataclasses.replace(compiled, params=dumped_once(compiled.params))
            else:
                (stored,) = members
                self._compiled[key] = compile_rule(stored.automation, "live")
        return self._compiled[key]

    def firing(self, members: Sequence[StoredAutomation]) -> CompiledQuery:
        """A metric group's tails-only query inside `fire_metric_group`: the statement that
        inserts the group's triggers itself when the query's rows decide the cooldown."""
        key = ("fire", *((s.id, s.version) for s in members))
        if key not in self._compiled:
            group = self.compiled(members, tails_only=True)
            params = group.params | dumped_once(firing_params(members))
            sql = query("fire_metric_group").replace("{group}", group.sql)
            self._compiled[key] = dataclasses.replace(group, sql=sql, params=params)
        return self._compiled[key]

    def _query(
        self, conn: psycopg.Connection, members: list[StoredAutomation], frontier: int, to_xid: int
    ) -> Callable[[], list[dict[str, Any]]]:
        """Run a group's query over [frontier, to_xid); returns what makes its rows Python
        dicts. Metric groups whose windows fit the tails run the tails-only query first,
        inserting their triggers themselves where they can (`firing`: then the only row is
        one with `rule` -1); the full one (which can read the hypertable) only when a
        series' tail fell short (a backlog)."""
        runtime = {"from_xid": str(frontier), "to_xid": str(to_xid)}
        if all(s.id in self._in_tails for s in members):
            cursor = run(conn, self.firing(members), runtime)
            first = cursor.fetchone()
            if first is None:
                return list
            if first["rule"] != 0:
                return lambda: [first, *cursor.fetchall()]
        cursor = run(conn, self.compiled(members), runtime)
        return cursor.fetchall

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
                for r in dicts(conn)
                .execute(query("lock_states"), {"ids": [s.id for s in members]})
                .fetchall()
            }
            # per group, in order: its trigger rows (a metric group's: all its cooldown needs came
            # with its rows, their JSON made at once), or its firings (the others')
            parts: list[Ready | list[tuple[StoredAutomation, list[Firing]]]] = []
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
                        with boundary():
                            rows = self._query(conn, same, frontier, end)
                    except DatabaseError as exc:
                        raise GroupFailed(group, exc) from exc
                    if is_metric_rule(same[0].automation):
                        try:
                            with boundary():
                                got = rows()
                                if got and got[0]["rule"] == -1:  # inserted by its statement
                                    parts.append(inserted_ready(same, got[0]))
                                else:
                                    parts.append(metric_group_ready(same, got, part_first(len(parts))))
                        except DatabaseError as exc:
                            raise GroupFailed(group, exc) from exc
                    else:
                        parts.append(list(group_firings(same, rows(), {})))
                    evaluated.setdefault(end, []).extend(s.id for s in same)
            # the other rules' last firings are looked up once, for all of them
            last_fired = last_fired_of(
                conn, [c for part in parts if isinstance(part, list) for c in part], {}
            )
            ready = [cooled(part, last_fired) if isinstance(part, list) else part for part in parts]
            fired = insert_ready(conn, ready)
            for end, ids in evaluated.items():
                advance = "advance_frontiers" if end >= to_xid else "advance_frontiers_partially"
                dicts(conn).execute(query(advance), {"ids": ids, "to_xid": str(end)})
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
            "metric": activity_key(automation)[1],
            "from_xid": str(frontier),
            "to_xid": str(to_xid),
            "failures": min(failures, 30),
        }
        row = dicts(conn).execute(query("catch_up_end"), bound).fetchone()
        end = None if row is None else row["end_xid"]
        return to_xid if end is None else int(end)
