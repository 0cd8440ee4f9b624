"""Evaluation benchmark (issue 4): the evaluator's ticks and the end-to-end latency.

    python bench/evaluate.py                       # 10,000 runs x 5 metrics, 3M -> 10M points
    python bench/evaluate.py --runs 1000 --points 300000 --grow-to 1000000 --probes 30
    python bench/evaluate.py --skip-growth --skip-latency --rules 1000

A fresh database (an embedded cluster in a temporary folder, durable settings; or a new
database next to ENGINE_DATABASE_URL) gets `--runs` runs x 5 metrics with `--points` points
bulk-loaded with SQL into 1-day chunks over 35 days, the series_state the SDK would have
built for them, and the nonfinite_points (both checked against the SDK itself on a few series),
and `--rules` automations (a third 10-vs-50 change rules, a tenth z-score rules, a twentieth
non-finite rules, the rest threshold rules; no_op actions: bench/support/dataset.py
make_rules) applied with apply_rules; `--rules` is a
sweep (100,300,1000 by default): (a)-(c) are measured for each number of automations (the
others pruned, a fresh evaluator), (d) and (e) with the last. New points
go through the SDK's Writer (binary COPY + upsert_series + NOTIFY in one transaction);
ticks are `Evaluator.tick()`. Measured:

(a) a tick after 1 % of the series got a new point (p50, p99), (b) a tick after every
series got one (median), with the best hand-written SQL of the same evaluation I know
(bench/support/baseline.sql `baseline_classes`: one statement per metric, run one after
another on one connection, its rules matched by class, z-score rules included; plus one
statement for every non-finite rule, `baseline_nonfinite`; the per-rule `baseline` is timed
too and must return the same rows) timed on the same state, the tick's triggers checked
equal to its rows; the tick uses ENGINE_EVALUATION_CONNECTIONS (2)
connections, so (b) is also measured with one connection (`ratio_vs_sql_one_connection`), (c) a tick with nothing new
(median), (d) (b) again after the history grew to `--grow-to` points in older chunks,
(e) run.log + flush -> trigger row latency through `engine serve`'s Service, while other
runs keep logging. A table of the figures per number of automations follows; the last line
is JSON: the figures of the last number of automations (`rules`).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from support.dataset import (
    METRICS,
    PROBE_METRIC,
    PROBE_RULE,
    PROBE_VALUE,
    PROJECT,
    Dataset,
    Logger,
    all_series,
    bench_query,
    check_state_with_sdk,
    fresh_database,
    make_rules,
    settings_for,
)

from engine.automations import apply_rules, load_enabled
from engine.compiler import span_of
from engine.evaluation import Evaluator, TickResult
from engine.rules import RunMetricChange, RunMetricNonfinite, RunMetricThreshold, RunMetricZscore

METRIC_EVENTS = (RunMetricThreshold, RunMetricChange, RunMetricZscore)


def say(text: str) -> None:
    print(text, flush=True)


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (p99 of 25 samples is the largest)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(-(-q * len(ordered) // 1)) - 1))]


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return (time.perf_counter() - start) * 1000, out


# -- the baseline ---------------------------------------------------------------------------------
class Baseline:
    """The hand-written SQL (bench/support/baseline.sql) for the benchmark's automations:
    one statement per metric for the metric rules (threshold, change, z-score), one for every
    non-finite rule, timed together."""

    def __init__(self, conn: psycopg.Connection, key_ids: dict[str, int]):
        enabled = load_enabled(conn)
        stored = [s for s in enabled if isinstance(s.automation.event, METRIC_EVENTS)]
        nonfinite = [s for s in enabled if isinstance(s.automation.event, RunMetricNonfinite)]
        self.automations = stored + nonfinite
        self.key_of: dict[int, int] = {}
        per_key: dict[int, list] = {}
        for s in stored:
            per_key.setdefault(key_ids[s.automation.event.metric], []).append(s)
        for s in self.automations:
            self.key_of[s.id] = key_ids[s.automation.event.metric]
        self.statements: list[tuple[sql.Composable, dict]] = [
            self._statement(key_id, group) for key_id, group in sorted(per_key.items())
        ]
        self.by_class: list[tuple[sql.Composable, dict]] = [
            self._statement(key_id, group, by_class=True) for key_id, group in sorted(per_key.items())
        ]
        if nonfinite:  # the same statement in both baselines: its rules are matched by a join
            watched = [
                s.automation.event.values
                for s in nonfinite
                if isinstance(s.automation.event, RunMetricNonfinite)
            ]
            statement: tuple[sql.Composable, dict] = (
                sql.SQL(bench_query("baseline_nonfinite", "baseline.sql")),
                {
                    "automation_id": [s.id for s in nonfinite],
                    "key_id": [self.key_of[s.id] for s in nonfinite],
                    "nan": ["nan" in v for v in watched],
                    "pinf": ["inf" in v for v in watched],
                    "ninf": ["-inf" in v for v in watched],
                    "entity": PROJECT[0],
                    "project": PROJECT[1],
                },
            )
            self.statements.append(statement)
            self.by_class.append(statement)
        spans = [(self.key_of[s.id], span_of(s.automation)) for s in stored]  # metric rules
        self.spans = {"key_id": [k for k, _ in spans], "span": [n for _, n in spans]}

    @staticmethod
    def _statement(key_id: int, group: list, by_class: bool = False) -> tuple[sql.Composed, dict]:
        """The statement of one metric: its distinct segments (aggregation, stretch back from
        the value) as FILTERed aggregates, its rules as rows pointing at them; `by_class`:
        the rules matched by class (baseline_classes)."""
        segments: list[tuple[str, int, int]] = []

        def segment(agg: str, back_from: int, back_to: int) -> int:
            if (agg, back_from, back_to) not in segments:
                segments.append((agg, back_from, back_to))
            return segments.index((agg, back_from, back_to)) + 1

        columns: dict[str, list] = {
            k: [] for k in ("automation_id", "op", "bound", "relative", "w", "span", "cur", "prior", "z")
        }
        for s in group:
            e = s.automation.event
            if isinstance(e, RunMetricZscore):  # the value itself, against the window before it
                row = {
                    "automation_id": s.id,
                    "op": {"increase": "z+", "decrease": "z-", "any": "z|"}[e.direction],
                    "bound": e.threshold,
                    "relative": False,
                    "w": 1,
                    "span": span_of(s.automation),
                    "cur": segment("avg", 1, e.window),
                    "prior": segment("stddev_pop", 1, e.window),
                    "z": True,
                }
                for k, v in row.items():
                    columns[k].append(v)
                continue
            threshold = isinstance(e, RunMetricThreshold)
            w = e.window if threshold else e.current_window
            row = {
                "automation_id": s.id,
                "op": e.operator if threshold else e.direction,
                "bound": e.threshold if threshold else e.amount,
                "relative": (not threshold) and e.change == "relative",
                "w": w,
                "span": span_of(s.automation),
                "cur": segment(e.aggregation, 0, w - 1),
                "prior": None if threshold else segment(e.aggregation, w, w + e.prior_window - 1),
                "z": False,
            }
            for k, v in row.items():
                columns[k].append(v)
        aggregates = sql.SQL(", ").join(
            sql.SQL("{}(u.v) FILTER (WHERE u.back BETWEEN {} AND {})").format(
                sql.Identifier(agg), sql.Literal(lo), sql.Literal(hi)
            )
            for agg, lo, hi in segments
        )
        if by_class:
            statement = sql.SQL(bench_query("baseline_classes", "baseline.sql")).format(
                aggregates=aggregates, **Baseline._classes(group, columns)
            )
        else:
            statement = sql.SQL(bench_query("baseline", "baseline.sql")).format(aggregates=aggregates)
        params = columns | {
            "key_id": key_id,
            "entity": PROJECT[0],
            "project": PROJECT[1],
            "span_max": max(columns["span"]),
            "span_min": min(columns["span"]),
        }
        return statement, params

    @staticmethod
    def _classes(group: list, columns: dict) -> dict[str, sql.Composable]:
        """`can_fire` and `prefixes` of baseline_classes: per class (the value its rules
        compare, as SQL over the aggregates `ag.a`), its rule numbers sorted by bound."""
        classes: dict[str, list[tuple[float, int]]] = {}
        for n, s in enumerate(group, start=1):
            e, cur, prior = s.automation.event, columns["cur"][n - 1], columns["prior"][n - 1]
            if isinstance(e, RunMetricZscore):
                z = f"(pt.tail_value[pt.i] - ag.a[{cur}]) / nullif(ag.a[{prior}], 0)"
                test = {"increase": f"({z})", "decrease": f"-({z})", "any": f"abs({z})"}[e.direction]
                classes.setdefault(test, []).append((e.threshold, n))
                continue
            if isinstance(e, RunMetricThreshold):
                test, key = f"ag.a[{cur}]", e.threshold
                if e.operator in ("<", "<="):
                    test, key = f"-ag.a[{cur}]", -e.threshold
                elif e.operator == "!=":
                    key = float("-inf")
            else:
                d = f"ag.a[{cur}] - ag.a[{prior}]"
                if e.change == "relative":
                    d = f"({d}) / nullif(abs(ag.a[{prior}]), 0)"
                test, key = (
                    {"increase": f"({d})", "decrease": f"-({d})", "any": f"abs({d})"}[e.direction],
                    e.amount,
                )
            classes.setdefault(test, []).append((key, n))
        for members in classes.values():
            members.sort()
        return {
            "can_fire": sql.SQL(" OR ").join(
                sql.SQL("{} >= {}").format(sql.SQL(test), sql.Literal(members[0][0]))
                for test, members in classes.items()
            ),
            "prefixes": sql.SQL(" || ").join(
                sql.SQL("({})[1:width_bucket({}, {})]").format(
                    sql.Literal([n for _, n in members]), sql.SQL(test), sql.Literal([k for k, _ in members])
                )
                for test, members in classes.items()
            ),
        }

    def run(
        self, conn: psycopg.Connection, span: tuple[str, str], by_class: bool = False
    ) -> tuple[float, list[tuple]]:
        """The rows of every statement, each as (automation_id, run_pk, the trigger's cause, ...)."""
        runtime = {"from_xid": span[0], "to_xid": span[1]}
        rows: list[tuple] = []
        ms = 0.0
        for statement, params in self.by_class if by_class else self.statements:
            bound = params | runtime
            took, out = timed(
                lambda statement=statement, bound=bound: conn.execute(statement, bound).fetchall()
            )
            ms += took
            if "nan" in params:  # automation_id, run_pk, key_id, seq
                rows.extend((a, r, f"nonfinite:{r}:{k}:{seq}") for a, r, k, seq in out)
            else:  # automation_id, run_pk, key_id, pos, the values
                rows.extend((a, r, f"metric:{r}:{k}:{p}", *rest) for a, r, k, p, *rest in out)
        return ms, rows

    def cut(self, conn: psycopg.Connection, span: tuple[str, str]) -> int:
        bound = self.spans | {"from_xid": span[0], "to_xid": span[1]}
        return conn.execute(bench_query("cut_windows", "baseline.sql"), bound).fetchone()[0]

    def evaluations(self, conn: psycopg.Connection, span: tuple[str, str]) -> int:
        """Rule-series evaluations: each automation x each series of its metric with a new value."""
        per_key = dict(
            conn.execute(
                bench_query("pending_series", "baseline.sql"), {"from_xid": span[0], "to_xid": span[1]}
            ).fetchall()
        )
        return sum(per_key.get(k, 0) for k in self.key_of.values())


def current_span(conn: psycopg.Connection) -> tuple[str, str]:
    lo, hi = conn.execute(bench_query("span", "baseline.sql")).fetchone()
    return lo, hi


def check_against_baseline(
    conn: psycopg.Connection, expected: list[tuple], before_id: int, logged_at: datetime
) -> str:
    """The tick's new triggers must be the baseline's rows minus those the cooldown silences:
    runs whose last firing of that automation has a value time less than the cooldown before
    the new points' time (`logged_at`). Usually a firing earlier in the benchmark (the bench
    is shorter than a cooldown); after the growth, a firing on a backfilled non-finite value,
    days older, silences nothing."""
    cooldowns = {s.id: s.automation.cooldown for s in load_enabled(conn)}
    last_fired = conn.execute(
        "SELECT automation_id, run_pk, max(value_time) FROM triggers WHERE id <= %s AND run_pk IS NOT NULL "
        "GROUP BY automation_id, run_pk",
        (before_id,),
    ).fetchall()
    silenced = {(a, r) for a, r, t in last_fired if cooldowns.get(a) and logged_at < t + cooldowns[a]}
    want = {(a, r, cause) for a, r, cause, *_ in expected if (a, r) not in silenced}
    got = set(
        conn.execute(
            "SELECT automation_id, run_pk, cause FROM triggers WHERE id > %s", (before_id,)
        ).fetchall()
    )
    if want != got:
        raise SystemExit(
            f"tick and baseline disagree: {len(want - got)} missing, {len(got - want)} extra "
            f"(e.g. {sorted(want - got)[:3]} / {sorted(got - want)[:3]})"
        )
    nonfinite = sum(1 for _, _, cause in got if cause.startswith("nonfinite:"))
    return f"{len(got)} triggers = baseline, {nonfinite} of them non-finite"


def max_trigger(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT coalesce(max(id), 0) FROM triggers").fetchone()[0]


def tick(evaluator: Evaluator) -> tuple[float, TickResult]:
    ms, result = timed(evaluator.tick)
    if result.failed:
        raise SystemExit(f"automations failed: {result.failed}")
    return ms, result


# -- phases -----------------------------------------------------------------------------------------
def every_series_tick(
    conn, data: Dataset, logger: Logger, evaluator: Evaluator, baseline: Baseline, reps: int, label: str
) -> dict[str, float]:
    """(b)/(d): one point on every series, then the two baselines (which must agree) and one
    tick on that state."""
    ticks, sqls, per_rule, evals = [], [], [], 0
    for rep in range(reps):
        ms_log, n = timed(lambda: logger.log(conn, all_series(data)))
        span = current_span(conn)
        if baseline.cut(conn, span):
            raise SystemExit("some windows reach before the tails: the baseline would be incomplete")
        evals = baseline.evaluations(conn, span)
        rule_ms, by_rule = baseline.run(conn, span)
        sql_ms, expected = baseline.run(conn, span, by_class=True)
        if sorted(by_rule) != sorted(expected):
            raise SystemExit(
                f"the two baselines disagree: {len(by_rule)} rows per rule, {len(expected)} by class"
            )
        before = max_trigger(conn)
        ms, result = tick(evaluator)
        check = check_against_baseline(conn, expected, before, logger.logged_at)
        ticks.append(ms)
        sqls.append(sql_ms)
        per_rule.append(rule_ms)
        say(
            f"  {label} rep {rep + 1}: logged {n:,} points in {ms_log:,.0f} ms; tick {ms:,.0f} ms "
            f"({result.evaluated} evaluated, {result.fired} fired: {check}); baseline SQL {sql_ms:,.0f} ms "
            f"by class, {rule_ms:,.0f} ms per rule ({len(expected)} rows); {evals:,} rule-series evaluations"
        )
    return {
        "tick_ms": statistics.median(ticks),
        "sql_ms": statistics.median(sqls),
        "per_rule_ms": statistics.median(per_rule),
        "evals": evals,
    }


def latency(url: str, data: Dataset, probes: int, background_runs: int, background_hz: float) -> list[float]:
    """(e): Service running (evaluation + deliveries, woken by NOTIFY); a thread logs on
    `background_runs` runs through the SDK (flushed by its writer thread every second, like
    any script); ~`probes` times a fresh run logs a value firing the window-1 probe rule and
    flushes; the time until its trigger row exists is polled every millisecond."""
    import engine
    from engine.scheduler import Service
    from engine.sdk import session

    os.environ["ENGINE_DATABASE_URL"] = url
    from engine.settings import get_settings

    get_settings.cache_clear()
    project = "/".join(PROJECT)
    service = Service(settings_for(url), url=url)
    ticks: list[tuple[float, float, int]] = []  # (start, ms, automations evaluated) of the service's ticks
    inner_tick = service.loop._tick  # the loop took the evaluator's bound method when it was made

    def recorded_tick() -> TickResult:
        start = time.perf_counter()
        result = inner_tick()
        ticks.append((start, result.duration_ms, result.evaluated))
        return result

    service.loop._tick = recorded_tick
    service.start()
    stop = threading.Event()
    rng = random.Random(3)

    def background() -> None:
        runs = [
            engine.init(project=project, name=f"background-{i}", system_metrics_interval=0)
            for i in range(background_runs)
        ]
        period = 1.0 / background_hz
        next_at = time.monotonic()
        while not stop.is_set():
            for run in runs:
                run.log(
                    {
                        "loss": rng.uniform(0.3, 0.6),
                        "accuracy": rng.uniform(0.6, 0.8),
                        "lr": 3e-4,
                        "grad_norm": rng.uniform(1.0, 1.5),
                        "throughput": rng.uniform(950, 1050),
                    }
                )
            next_at += period
            stop.wait(max(0.0, next_at - time.monotonic()))
        for run in runs:
            run.finish()

    writer = threading.Thread(target=background, name="background-logging", daemon=True)
    writer.start()
    times: list[float] = []
    warm = 0
    try:
        with psycopg.connect(url, autocommit=True) as poll:
            (probe_id,) = poll.execute("SELECT id FROM automations WHERE name = %s", (PROBE_RULE,)).fetchone()
            # warm up as in (a): the background runs are logging and being evaluated
            warm_until = time.monotonic() + 120
            while sum(1 for *_, n in ticks if n) < 6 and time.monotonic() < warm_until:
                time.sleep(0.1)
            warm = len(ticks)
            for i in range(probes):
                run = engine.init(project=project, name=f"probe-{i}", system_metrics_interval=0)
                start = time.perf_counter()
                run.log({PROBE_METRIC: PROBE_VALUE})
                run.flush()
                deadline = start + 60
                # by run id: over HTTP (bench/http_clients.py) the SDK does not know the run's pk
                while not poll.execute(
                    "SELECT 1 FROM triggers t JOIN runs r ON r.id = t.run_pk"
                    " WHERE t.automation_id = %s AND r.run_id = %s",
                    (probe_id, run.id),
                ).fetchone():
                    if time.perf_counter() > deadline:
                        state = poll.execute(
                            "SELECT s.frontier::text, s.last_error, pg_snapshot_xmin(pg_current_snapshot())::text, "
                            "(SELECT string_agg(b.xid::text || ':' || b.first_pos || '-' || b.last_pos, ',') "
                            " FROM series_batches b WHERE b.run_pk = (SELECT id FROM runs WHERE run_id = %s)) "
                            "FROM automation_state s WHERE s.automation_id = %s",
                            (run.id, probe_id),
                        ).fetchone()
                        recent = [(round(t0 - start, 2), round(ms), n) for t0, ms, n in ticks[-8:]]
                        raise SystemExit(
                            f"probe {i}: no trigger after 60 s (frontier, error, xmin, batches: {state}; "
                            f"last ticks (start, ms, evaluated): {recent})"
                        )
                    time.sleep(0.001)
                times.append((time.perf_counter() - start) * 1000)
                run.finish()
                time.sleep(rng.uniform(0.02, 0.2))  # probes land at every phase of the background flushes
    finally:
        stop.set()
        writer.join(timeout=30)
        service.stop()
        session.close_all()
    measured = [ms for _, ms, n in ticks[warm:] if n]
    if measured:
        say(
            f"    service ticks during the probes: {len(measured)}, median {statistics.median(measured):,.1f} ms, "
            f"p99 {pct(measured, 0.99):,.1f} ms, max {max(measured):,.0f} ms"
        )
    return times


# -- main ---------------------------------------------------------------------------------------------
def ticks_for(conn, data: Dataset, url: str, settings, logger: Logger, args, rules: int) -> dict[str, float]:
    """(a), (c), (b) and (b) on one connection with `rules` automations (the others pruned),
    for a fresh evaluator (as a service started with them)."""
    rng = random.Random(11)
    every = all_series(data)
    with psycopg.connect(url) as admin:
        made = make_rules(admin, data, rules)
        apply_rules(admin, made, prune=True)
        kinds = {
            k: sum(1 for r in made if r.event.type == k)
            for k in (
                "run_metric_threshold",
                "run_metric_change",
                "run_metric_zscore",
                "run_metric_nonfinite",
            )
        }
        baseline = Baseline(admin, data.key_ids)
    say(f"-- {len(made)} automations applied: {kinds}")
    out: dict[str, float] = {"rules": len(made)}
    # As `engine serve` does before its first tick: what exists now (here the bench's own
    # data, 50,000 series in lists) is kept out of the full collections the ticks would pay for.
    gc.collect()
    gc.freeze()
    evaluator = Evaluator(url, settings)
    try:
        tick(evaluator)  # loads and compiles the automations
        # A service runs for days: psycopg prepares a query shape after 5 runs, and the
        # evaluator's session plans it once (engine/evaluation/statements.py). Warm up like that.
        warm = []
        for _ in range(args.warmup):
            logger.log(conn, rng.sample(every, max(1, len(every) // 100)))
            warm.append(tick(evaluator)[0])
        say(
            f"warm-up: {len(warm)} ticks after 1 % of the series got a point: "
            + ", ".join(f"{ms:,.0f}" for ms in warm)
            + " ms"
        )

        # (a) 1 % of the series get a point
        one_pct, fired = [], 0
        for _ in range(args.reps_1pct):
            logger.log(conn, rng.sample(every, max(1, len(every) // 100)))
            ms, result = tick(evaluator)
            one_pct.append(ms)
            fired += result.fired
        say(
            f"(a) 1 % of the series ({len(every) // 100:,}) got a point: tick p50 {pct(one_pct, 0.5):.1f} ms, "
            f"p99 {pct(one_pct, 0.99):.1f} ms over {len(one_pct)} ticks ({fired} triggers)"
        )
        out["tick_1pct_p50_ms"], out["tick_1pct_p99_ms"] = pct(one_pct, 0.5), pct(one_pct, 0.99)

        # (c) nothing new
        idle = [tick(evaluator)[0] for _ in range(args.reps_idle)]
        say(f"(c) nothing new: tick median {statistics.median(idle):.1f} ms, max {max(idle):.1f} ms")
        out["idle_tick_ms"] = statistics.median(idle)

        # (b) every series gets a point
        say("(b) every series gets a point:")
        b = every_series_tick(conn, data, logger, evaluator, baseline, args.reps_all, "(b)")
        out["tick_ms"], out["sql_baseline_ms"], out["sql_per_rule_baseline_ms"] = (
            b["tick_ms"],
            b["sql_ms"],
            b["per_rule_ms"],
        )
        out["ratio_vs_sql"] = b["tick_ms"] / b["sql_ms"]
        out["ratio_vs_per_rule_sql"] = b["tick_ms"] / b["per_rule_ms"]
        out["evals_per_s"] = b["evals"] / (b["tick_ms"] / 1000)
        say(
            f"(b) tick median {b['tick_ms']:,.0f} ms, baseline SQL {b['sql_ms']:,.0f} ms (per rule {b['per_rule_ms']:,.0f}), "
            f"ratio {out['ratio_vs_sql']:.2f} ({out['ratio_vs_per_rule_sql']:.2f} per rule), "
            f"{out['evals_per_s']:,.0f} rule-series evaluations/s"
        )
    finally:
        evaluator.close()

    # (b) on one connection, as the baseline runs: what the parallel tick owes to the second core
    serial = Evaluator(url, settings.model_copy(update={"evaluation_connections": 1}))
    try:
        for _ in range(args.warmup):  # compiled and planned, as the other one was
            logger.log(conn, rng.sample(every, max(1, len(every) // 100)))
            tick(serial)
        say("(b) again, the tick on one connection:")
        b1 = every_series_tick(conn, data, logger, serial, baseline, args.reps_all, "(b1)")
    finally:
        serial.close()
    out["tick_one_connection_ms"] = b1["tick_ms"]
    out["ratio_vs_sql_one_connection"] = b1["tick_ms"] / b1["sql_ms"]
    out["ratio_vs_per_rule_sql_one_connection"] = b1["tick_ms"] / b1["per_rule_ms"]
    out["evals_per_s_one_connection"] = b1["evals"] / (b1["tick_ms"] / 1000)
    say(
        f"(b) on one connection: tick median {b1['tick_ms']:,.0f} ms, baseline SQL {b1['sql_ms']:,.0f} ms "
        f"(per rule {b1['per_rule_ms']:,.0f}), ratio {out['ratio_vs_sql_one_connection']:.2f} "
        f"({out['ratio_vs_per_rule_sql_one_connection']:.2f} per rule), "
        f"{out['evals_per_s_one_connection']:,.0f} rule-series evaluations/s"
    )
    return out


def sweep_table(rows: list[dict[str, float]]) -> str:
    """The figures per number of automations, one line each (the growth is what to look at)."""
    columns = [
        ("rules", "rules", "{:.0f}"),
        ("(a) p50 ms", "tick_1pct_p50_ms", "{:.1f}"),
        ("(a) p99 ms", "tick_1pct_p99_ms", "{:.1f}"),
        ("(c) ms", "idle_tick_ms", "{:.1f}"),
        ("(b) ms", "tick_ms", "{:,.0f}"),
        ("(b) 1 conn ms", "tick_one_connection_ms", "{:,.0f}"),
        ("SQL ms", "sql_baseline_ms", "{:,.0f}"),
        ("per-rule SQL ms", "sql_per_rule_baseline_ms", "{:,.0f}"),
        ("ratio", "ratio_vs_sql", "{:.2f}"),
        ("ratio 1 conn", "ratio_vs_sql_one_connection", "{:.2f}"),
        ("evals/s", "evals_per_s", "{:,.0f}"),
    ]
    cells = [[title for title, _, _ in columns]] + [
        [fmt.format(r[key]) for _, key, fmt in columns] for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument(
        "--points",
        type=int,
        default=3_000_000,
        help="stored points before the measurements (60 per series by default, so that "
        "10-vs-50 change rules have full windows)",
    )
    parser.add_argument("--steps", type=int, default=None, help="points per series (overrides --points)")
    parser.add_argument(
        "--grow-to",
        type=int,
        default=None,
        help="stored points for (d) (default: 10/3 of the initial ones, 10M by default)",
    )
    parser.add_argument(
        "--rules",
        default="100,300,1000",
        help="automations, or a comma-separated sweep: (a)-(c) are measured for each, "
        "(d) and (e) with the last",
    )
    parser.add_argument("--warmup", type=int, default=6, help="ticks before the measurements")
    parser.add_argument("--reps-1pct", type=int, default=25)
    parser.add_argument("--reps-all", type=int, default=3)
    parser.add_argument("--reps-idle", type=int, default=25)
    parser.add_argument("--probes", type=int, default=100)
    parser.add_argument("--background-runs", type=int, default=20, help="runs logging during (e)")
    parser.add_argument(
        "--background-hz", type=float, default=2.0, help="steps per second of each background run"
    )
    parser.add_argument("--skip-growth", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    counts = [int(n) for n in str(args.rules).split(",") if n.strip()]

    steps = args.steps or max(1, args.points // (args.runs * len(METRICS)))
    grow_to = args.grow_to or steps * args.runs * len(METRICS) * 10 // 3
    total = max(steps, grow_to // (args.runs * len(METRICS)))
    data = Dataset(runs=args.runs, steps=steps, total=total)
    started = time.perf_counter()
    say(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
    rows: list[dict[str, float]] = []
    with fresh_database("bench_eval") as url:
        with psycopg.connect(url) as conn:
            data.setup(conn)
            ms, n = timed(lambda: data.load_initial(conn))
            chunks = conn.execute(
                "SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_name = 'metric_points'"
            ).fetchone()[0]
            say(
                f"loaded {n:,} points ({args.runs:,} runs x {len(METRICS)} metrics x {steps} steps) "
                f"in {chunks} chunks in {ms / 1000:.1f} s"
            )
            compared = check_state_with_sdk(url, data.tail)
            say(
                f"series_state built with SQL = what the SDK stores ({compared} series logged through the SDK)"
            )
            ms, _ = timed(lambda: data.store_state(conn))
            say(f"series_state of {data.series:,} series built in {ms / 1000:.1f} s")
        settings = settings_for(url)
        logger = Logger(url, data)
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("SET jit = off")  # for the baseline, as the evaluator's session does
                for count in counts:
                    rows.append(ticks_for(conn, data, url, settings, logger, args, count))
                    say(f"   (load average {os.getloadavg()[0]:.2f})")
                out: dict[str, float | None] = dict(rows[-1])

                # (d) the same after the history grew
                out["growth_ratio"] = None
                if not args.skip_growth and total > steps:
                    evaluator = Evaluator(url, settings)
                    with psycopg.connect(url) as admin:
                        baseline = Baseline(admin, data.key_ids)
                    try:
                        tick(evaluator)  # nothing pending while the indexes are rebuilt
                        with psycopg.connect(url) as load:
                            ms, n = timed(lambda: data.grow(load))
                            chunks = load.execute(
                                "SELECT count(*) FROM timescaledb_information.chunks "
                                "WHERE hypertable_name = 'metric_points'"
                            ).fetchone()[0]
                            stored = load.execute("SELECT count(*) FROM metric_points").fetchone()[0]
                            say(
                                f"history grown by {n:,} points in {ms / 1000:.1f} s: {stored:,} points in {chunks} chunks"
                            )
                            ms, _ = timed(lambda: data.store_state(load))
                            say(f"series_state rebuilt in {ms / 1000:.1f} s")
                        tick(evaluator)
                        # as (b): after a warm-up, since the restart of the indexes
                        for _ in range(args.warmup):
                            logger.log(
                                conn, random.Random(5).sample(all_series(data), max(1, data.series // 100))
                            )
                            tick(evaluator)
                        say("(d) every series gets a point, after the growth:")
                        d = every_series_tick(conn, data, logger, evaluator, baseline, args.reps_all, "(d)")
                    finally:
                        evaluator.close()
                    out["growth_ratio"] = d["tick_ms"] / out["tick_ms"]
                    say(
                        f"(d) tick median {d['tick_ms']:,.0f} ms (baseline SQL {d['sql_ms']:,.0f} ms); "
                        f"growth ratio d/b {out['growth_ratio']:.2f}"
                    )
        finally:
            logger.close()

        # (e) end-to-end latency
        out["latency_p50_ms"] = out["latency_p99_ms"] = None
        if not args.skip_latency:
            lat = latency(url, data, args.probes, args.background_runs, args.background_hz)
            out["latency_p50_ms"], out["latency_p99_ms"] = pct(lat, 0.5), pct(lat, 0.99)
            say(
                f"(e) run.log + flush -> trigger row, {len(lat)} probes while {args.background_runs} runs log "
                f"{len(METRICS)} metrics at {args.background_hz:g} Hz, {counts[-1]} automations: "
                f"p50 {out['latency_p50_ms']:.1f} ms, p99 {out['latency_p99_ms']:.1f} ms"
            )
    say(f"total {time.perf_counter() - started:.0f} s; load average now {os.getloadavg()[0]:.2f}")
    say("figures per number of automations:\n" + sweep_table(rows))
    print(
        json.dumps(
            {
                k: (None if out.get(k) is None else round(out[k], 3))
                for k in (
                    "rules",
                    "tick_ms",
                    "sql_baseline_ms",
                    "ratio_vs_sql",
                    "evals_per_s",
                    "tick_1pct_p99_ms",
                    "idle_tick_ms",
                    "growth_ratio",
                    "latency_p50_ms",
                    "latency_p99_ms",
                    "tick_one_connection_ms",
                    "ratio_vs_sql_one_connection",
                    "sql_per_rule_baseline_ms",
                    "ratio_vs_per_rule_sql",
                    "ratio_vs_per_rule_sql_one_connection",
                    "evals_per_s_one_connection",
                )
            }
        )
    )


if __name__ == "__main__":
    main()
