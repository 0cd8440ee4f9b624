"""Property: for random series, rules, flush points and tick schedules, the triggers of live
evaluation equal those of the backtest and those of the plain-Python reference of the SPEC
(tests/reference.py). Whatever the interval, a qualifying value fires exactly once. The rules
are threshold, change, z-score and non-finite rules on one metric, whose values mix NaN and
infinities in."""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import engine
from engine.automations import apply_rules
from engine.evaluation import Evaluator, backtest
from engine.rules import parse_rules_text
from engine.settings import get_settings
from tests import reference

T0 = datetime(2026, 3, 1, tzinfo=UTC)
VALUES = st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0, 2.0, -1.0, math.nan, math.inf, -math.inf])
_counter = itertools.count()

threshold_rules = st.fixed_dictionaries(
    {
        "type": st.just("run_metric_threshold"),
        "window": st.integers(1, 6),
        "aggregation": st.sampled_from(["avg", "min", "max"]),
        "operator": st.sampled_from([">", ">=", "<", "<=", "==", "!="]),
        "threshold": st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]),
    }
)
change_rules = st.fixed_dictionaries(
    {
        "type": st.just("run_metric_change"),
        "current_window": st.integers(1, 5),
        "prior_window": st.integers(1, 8),
        "aggregation": st.sampled_from(["avg", "min", "max"]),
        "change": st.sampled_from(["relative", "absolute"]),
        "direction": st.sampled_from(["increase", "decrease", "any"]),
        "amount": st.sampled_from([0.1, 0.25, 0.5, 1.0]),
    }
)
# windows up to 9: longer than the test's tail (8), so the hypertable is read too; thresholds
# that small windows of these values reach exactly (window [0, 1], value 1: z = 1)
zscore_rules = st.fixed_dictionaries(
    {
        "type": st.just("run_metric_zscore"),
        "window": st.integers(2, 9),
        "threshold": st.sampled_from([0.5, 1.0, 1.5, 2.0, 3.0]),
        "direction": st.sampled_from(["increase", "decrease", "any"]),
    }
)
nonfinite_rules = st.fixed_dictionaries(
    {
        "type": st.just("run_metric_nonfinite"),
        "values": st.lists(st.sampled_from(["nan", "inf", "-inf"]), min_size=1, max_size=3, unique=True),
    }
)
# a run: values, the minute offset of each value's time (may go backwards), flush points
runs = st.lists(
    st.tuples(VALUES, st.integers(-30, 120), st.booleans(), st.booleans()), min_size=0, max_size=40
)


def _yaml(name: str, metric: str, event: dict, cooldown: str) -> str:
    fields = ", ".join(f"{k}: {v!r}" if isinstance(v, str) else f"{k}: {v}" for k, v in event.items())
    fields = fields.replace("'", '"')
    return f"name: {name}\nscope: {{project: acme/prop}}\nevent: {{{fields}, metric: {metric}}}\ncooldown: {cooldown}\naction: {{type: no_op}}\n"


def _holds(event: dict):
    if event["type"] == "run_metric_zscore":
        return lambda finite, i: reference.zscore_holds(
            finite, i, event["window"], event["threshold"], event["direction"]
        )
    if event["type"] == "run_metric_threshold":
        return lambda finite, i: reference.threshold_holds(
            finite, i, event["window"], event["aggregation"], event["operator"], event["threshold"]
        )
    return lambda finite, i: reference.change_holds(
        finite,
        i,
        event["current_window"],
        event["prior_window"],
        event["aggregation"],
        event["change"],
        event["direction"],
        event["amount"],
    )


@pytest.fixture
def small_tail(monkeypatch, database_url):
    # a tail of 8 values makes long windows and catch-ups read the hypertable too
    monkeypatch.setenv("ENGINE_SERIES_TAIL", "8")
    get_settings.cache_clear()
    return database_url


@pytest.mark.slow
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    events=st.lists(
        st.one_of(threshold_rules, change_rules, zscore_rules, nonfinite_rules), min_size=1, max_size=3
    ),
    series=st.lists(runs, min_size=1, max_size=3),
    cooldown=st.sampled_from(["1m", "10m", "24h"]),
)
def test_live_equals_backtest_equals_reference(conn, small_tail, events, series, cooldown):
    """Several rules on one metric are evaluated live together (one query per metric and
    frontier, windows within the tail) and backtested one by one."""
    n = next(_counter)
    metric = f"m{n}"
    automations = [
        parse_rules_text(_yaml(f"prop-{n}-{j}", metric, event, cooldown))[0].automation
        for j, event in enumerate(events)
    ]
    apply_rules(conn, automations)
    evaluator = Evaluator(small_tail)

    # (run id, step): the steps are the values' indices, so a step names one value
    expected: dict[str, set[tuple[str, int]]] = {a.name: set() for a in automations}
    opened = [
        engine.init(project="acme/prop", name=f"r{n}-{i}", system_metrics_interval=0)
        for i in range(len(series))
    ]
    try:
        # interleave the runs' values; flush and tick at the drawn points
        for i, run_values in enumerate(series):
            points = []
            for step, (value, minutes, flush, tick) in enumerate(run_values):
                when = T0 + timedelta(minutes=minutes + step)
                opened[i].log({metric: value}, step=step, time=when)
                points.append(reference.Point(step, when, value))
                if flush:
                    opened[i].flush()
                if tick:
                    assert not evaluator.tick().failed
            finite = [p for p in points if math.isfinite(p.value)]
            for automation, event in zip(automations, events):
                if event["type"] == "run_metric_nonfinite":
                    steps = reference.nonfinite_fire_steps(points, event["values"], automation.cooldown)
                else:
                    fired = reference.fire_indices(points, _holds(event), automation.cooldown)
                    steps = [finite[index].step for index in fired]
                expected[automation.name] |= {(opened[i].id, step) for step in steps}
        for run in opened:
            run.flush()
        assert not evaluator.tick().failed
    finally:
        for run in opened:
            run.finish()
        evaluator.close()

    pk_to_id = dict(conn.execute("SELECT id, run_id FROM runs"))
    for automation in automations:
        live_rows = conn.execute(
            "SELECT r.run_id, t.step, t.cause FROM triggers t JOIN runs r ON r.id = t.run_pk "
            "JOIN automations a ON a.id = t.automation_id WHERE a.name = %s",
            (automation.name,),
        ).fetchall()
        live = {(run_id, step) for run_id, step, _ in live_rows}
        assert len(live) == len({cause for _, _, cause in live_rows}) == len(live_rows)  # exactly once
        replay = {(pk_to_id[f.run_pk], f.step) for f in backtest(conn, automation, T0 - timedelta(days=1))}
        assert live == expected[automation.name], automation.name
        assert replay == expected[automation.name], automation.name
