"""The position of a finite value, defined once (the SQL functions `is_finite_value` and
`finite_series` of migration 0008): the positions ingest stores, those a trigger's cause
carries and those `engine explain` shows are the same numbers."""

from __future__ import annotations

import math
import sys
from datetime import UTC, datetime, timedelta

import engine
from engine.evaluation import backtest
from engine.rules import parse_rules_text
from tests.integration.evaluation_helpers import apply_yaml, rule, tick, triggers

T0 = datetime(2026, 3, 1, tzinfo=UTC)

# Values at the edges of "finite": the extremes are finite, NaN and the infinities are not.
# Two 1e308 in one record sum to an infinity (the SDK's flush then checks each value).
FLUSHES = [
    [1.0, math.nan, 2.0, math.inf],
    [-math.inf, sys.float_info.max, -0.0, 5e-324, math.nan],
    [1e308, 3.0, -sys.float_info.max, math.inf, 4.0],
]


def _finite_series(conn, run_pk: int, key: str) -> list[tuple]:
    return conn.execute(
        "SELECT f.pos, f.step, f.value FROM metric_keys k, finite_series(%s, k.id, false) AS f"
        " WHERE k.key = %s ORDER BY f.pos",
        (run_pk, key),
    ).fetchall()


def test_python_and_sql_agree_on_which_values_are_finite(conn):
    """The SDK counts finite values before they reach the database: its test must be the
    database's one (NaN compares above 'Infinity' in PostgreSQL, hence the function)."""
    values = [0.0, -0.0, 5e-324, sys.float_info.max, -sys.float_info.max, math.inf, -math.inf, math.nan]
    rows = conn.execute(
        "SELECT v, is_finite_value(v) FROM unnest(%s::double precision[]) WITH ORDINALITY AS u(v, i) ORDER BY i",
        (values,),
    ).fetchall()
    assert (
        [finite for _, finite in rows] == [v - v == 0.0 for v in values] == [math.isfinite(v) for v in values]
    )


def test_ingest_positions_are_finite_series_positions(conn, database_url):
    with engine.init(project="acme/vision", system_metrics_interval=0) as run:
        step = 0
        for values in FLUSHES:
            for value in values:
                run.log({"x": value, "twin": 1e308 if value == 1e308 else 0.0}, step=step)
                step += 1
            run.flush()
    logged = [v for values in FLUSHES for v in values]
    finite = [(i, v) for i, v in enumerate(logged) if math.isfinite(v)]
    series = _finite_series(conn, run.pk, "x")
    assert series == [(n, step, value) for n, (step, value) in enumerate(finite, start=1)]
    n_finite, tail_step, tail_value = conn.execute(
        "SELECT s.n_finite, s.tail_step, s.tail_value FROM series_state s JOIN metric_keys k ON k.id = s.key_id"
        " WHERE s.run_pk = %s AND k.key = 'x'",
        (run.pk,),
    ).fetchone()
    assert n_finite == len(series)
    assert list(zip(tail_step, tail_value)) == [(s, v) for _, s, v in series[-len(tail_value) :]]
    batches = conn.execute(
        "SELECT b.first_pos, b.last_pos FROM series_batches b JOIN metric_keys k ON k.id = b.key_id"
        " WHERE b.run_pk = %s AND k.key = 'x' ORDER BY b.id",
        (run.pk,),
    ).fetchall()
    per_flush = [sum(math.isfinite(v) for v in values) for values in FLUSHES]
    ends = [sum(per_flush[: k + 1]) for k in range(len(per_flush))]
    assert batches == [(end - n + 1, end) for n, end in zip(per_flush, ends)]


def test_a_triggers_position_is_the_finite_series_position(conn, database_url):
    """Live evaluation and the backtest fire at the value `finite_series` numbers as the
    cause's position, across non-finite values in between."""
    text = rule(
        "x-up",
        '{type: run_metric_threshold, metric: x, window: 2, operator: ">=", threshold: 2.5}',
        extra="cooldown: 1m\n",
    )
    apply_yaml(conn, text)
    with engine.init(project="acme/vision", system_metrics_interval=0) as run:
        for i, value in enumerate([1.0, math.nan, 2.0, math.inf, 3.0, -math.inf, math.nan, 9.0]):
            run.log({"x": value}, step=i, time=T0 + timedelta(minutes=i))
        run.flush()
    tick(database_url)
    fired = triggers(conn, "x-up")
    series = {pos: (step, value) for pos, step, value in _finite_series(conn, run.pk, "x")}
    assert [t["cause"].rsplit(":", 1)[1] for t in fired] == ["3", "4"]  # windows (2, 3) and (3, 9)
    for t in fired:
        step, value = series[int(t["cause"].rsplit(":", 1)[1])]
        assert (t["step"], t["details"]["value"], t["details"]["position"]) == (
            step,
            value,
            int(t["cause"][-1]),
        )
    automation = parse_rules_text(text)[0].automation
    assert [f.cause for f in backtest(conn, automation, T0)] == [t["cause"] for t in fired]


def test_the_finiteness_test_is_inlined_into_the_evaluators_reads(conn):
    """`is_finite_value` is a plain expression the planner inlines: the hypertable reads of
    a backlog pay two comparisons per row for it, not a function call."""
    plan = "\n".join(
        row[0]
        for row in conn.execute(
            "EXPLAIN (VERBOSE) SELECT g FROM generate_series(1, 10) AS g WHERE is_finite_value(1.0 / g)"
        ).fetchall()
    )
    assert "is_finite_value" not in plan
    assert "'Infinity'::double precision" in plan
