"""Hand-computed cases of SPEC section 2's metric semantics against the real database,
through the compiled queries (live evaluation and the backtest)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

import engine
from engine.evaluation import backtest
from engine.rules import parse_rules_text
from tests.integration.evaluation_helpers import apply_yaml, rule, tick, triggers

T0 = datetime(2026, 2, 1, tzinfo=UTC)
NAN, INF = math.nan, math.inf


def _log(values, *, name="r", user=None, key="m"):
    run = engine.init(project="acme/vision", name=name, user=user, system_metrics_interval=0)
    for i, v in enumerate(values):
        run.log({key: v}, step=i, time=T0 + timedelta(hours=i))  # hours apart: cooldown 1m never hides one
    run.finish()
    return run


def _steps(conn, yaml: str) -> list[int]:
    automation = parse_rules_text(yaml)[0].automation
    return [f.step for f in backtest(conn, automation, T0 - timedelta(days=1))]


def _threshold(window, agg, op, threshold, metric="m") -> str:
    return rule(
        "t",
        f'{{type: run_metric_threshold, metric: "{metric}", window: {window}, aggregation: {agg}, '
        f'operator: "{op}", threshold: {threshold}}}',
        extra="cooldown: 1m\n",
    )


def _change(cur, prior, agg, change, direction, amount) -> str:
    return rule(
        "c",
        f"{{type: run_metric_change, metric: m, current_window: {cur}, prior_window: {prior}, "
        f"aggregation: {agg}, change: {change}, direction: {direction}, amount: {amount}}}",
        extra="cooldown: 1m\n",
    )


def test_window_not_yet_full_gives_nothing(conn, database_url):
    _log([9, 9])
    assert _steps(conn, _threshold(3, "avg", ">", 0)) == []


@pytest.mark.parametrize(
    ("op", "expected"),
    [(">", [2]), (">=", [1, 2]), ("<", [0]), ("<=", [0, 1]), ("==", [1]), ("!=", [0, 2])],
)
def test_exact_boundaries_for_every_operator(conn, database_url, op, expected):
    _log([0.25, 0.5, 0.75])  # window 1: the aggregate is the value itself; threshold 0.5 exactly
    assert _steps(conn, _threshold(1, "avg", op, 0.5)) == expected


@pytest.mark.parametrize(("agg", "expected"), [("avg", [3, 4]), ("min", [4]), ("max", [2, 3, 4])])
def test_min_max_avg(conn, database_url, agg, expected):
    # windows of 2 at steps 1..4: [1,2] [2,4] [4,5] [5,5]; avg 1.5 3 4.5 5; min 1 2 4 5; max 2 4 5 5
    _log([1, 2, 4, 5, 5])
    assert (
        _steps(conn, _threshold(2, agg, ">=", 4.5 if agg == "avg" else (5 if agg == "min" else 4)))
        == expected
    )


def test_nan_in_the_middle_of_a_window_is_skipped(conn, database_url):
    # finite values 1, 1, 3 -> the window of 3 at the 3 is [1, 1, 3] (NaN and inf are not values)
    _log([1, NAN, 1, INF, 3])
    automation = parse_rules_text(_threshold(3, "avg", ">", 1.5))[0].automation
    (firing,) = backtest(conn, automation, T0 - timedelta(days=1))
    assert (
        firing.step == 4 and firing.window_values == [1.0, 1.0, 3.0] and firing.value == pytest.approx(5 / 3)
    )


def test_relative_change_with_prior_zero_never_fires(conn, database_url):
    _log([0, 0, 5, 5])
    assert _steps(conn, _change(2, 2, "avg", "relative", "any", 0.1)) == []
    assert _steps(conn, _change(2, 2, "avg", "absolute", "increase", 5)) == [3]


@pytest.mark.parametrize(
    ("direction", "expected"),
    # prior 2 values, current 1: d(rel) at step2: (1-2)/2=-0.5, step3: (4-1.5)/1.5=1.67, step4: (1-2.5)/2.5=-0.6
    [("decrease", [2, 4]), ("increase", [3]), ("any", [2, 3, 4])],
)
def test_relative_change_directions(conn, database_url, direction, expected):
    _log([2, 2, 1, 4, 1])
    assert _steps(conn, _change(1, 2, "avg", "relative", direction, 0.5)) == expected


def test_run_filter_by_user_and_name_regex(conn, database_url):
    apply_yaml(
        conn,
        rule(
            "f",
            '{type: run_metric_threshold, metric: m, window: 1, operator: ">", threshold: 0}',
            extra='run_filter: {user: alice, name_regex: "^sweep-"}\n',
        ),
    )
    _log([1], name="sweep-1", user="alice")
    _log([1], name="sweep-2", user="bob")
    _log([1], name="my-sweep-3", user="alice")  # unanchored search: "^" anchors it
    _log([1], name="sweep-4", user="alice")
    tick(database_url)
    names = sorted(
        conn.execute("SELECT name FROM runs WHERE id = ANY(%s)", ([t["run_pk"] for t in triggers(conn)],))
    )
    assert names == [("sweep-1",), ("sweep-4",)]


HOSTILE = ["x'); DROP TABLE runs; --", 'a"b\\c', "é🙂 '", "%(threshold)s", "$1"]


@pytest.mark.parametrize("text", HOSTILE)
def test_injection_strings_are_stored_and_matched_literally(conn, database_url, text):
    tables_before = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()[0]
    run = engine.init(project="acme/vision", name=text, user=text, system_metrics_interval=0)
    run.log({text: 1.0}, step=0, time=T0)
    run.finish()
    quoted = text.replace("\\", "\\\\").replace('"', '\\"')  # a YAML double-quoted string
    yaml = rule(
        "inj",
        f'{{type: run_metric_threshold, metric: "{quoted}", window: 1, operator: ">", threshold: 0}}',
        extra=f'cooldown: 1m\nrun_filter: {{user: "{quoted}"}}\n',
    )
    assert _steps(conn, yaml) == [0]
    assert (
        conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()[0]
        == tables_before
    )
    assert conn.execute("SELECT name FROM runs").fetchone()[0] == text
