"""z-score and non-finite rules end to end: logged through the SDK, evaluated live, backtested
and explained (terminal and PNG). The random mixes are in test_evaluator_property.py; these
pin the boundaries one by one."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import matplotlib.image

import engine
from engine.evaluation import backtest
from engine.explain import explain_data, lines, render_png, render_terminal
from engine.rules import parse_rules_text
from tests.integration.evaluation_helpers import apply_yaml, rule, tick, triggers

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def _log(run, key: str, values: list[float]) -> None:
    for i, v in enumerate(values):
        run.log({key: v}, step=i, time=T0 + timedelta(minutes=i))
    run.flush()


def _steps(conn, name: str) -> list[int]:
    return [t["step"] for t in triggers(conn, name)]


Z_RULES = "---\n".join(
    rule(name, "{type: run_metric_zscore, metric: loss, window: 2" + extra + "}", extra="cooldown: 1m\n")
    for name, extra in (
        ("z-any", ""),
        ("z-up", ", threshold: 2.9, direction: increase"),
        ("z-down", ", direction: decrease"),
    )
)


def test_zscore_boundaries(conn, database_url):
    """Window 2, threshold 3 (z-up: 2.9). The reference window is the 2 finite values just
    before each value; NaN is no value of it; σ = 0 never fires; z on the threshold does not."""
    apply_yaml(conn, Z_RULES)
    run = engine.init(project="acme/vision", name="z", system_metrics_interval=0)
    # steps:   0    1    2    3    4    5    6    7         8    9    10   11   12
    values = [9.0, 0.0, 1.0, 2.0, 0.0, 1.0, 2.5, math.nan, 5.0, 5.0, 5.0, 9.0, -10.0]
    _log(run, "loss", values)
    tick(database_url)
    # step 1: reference not full; 2: [9, 0] z = -0.78; 3: [0, 1] (mean .5, σ .5) z = 3 exactly:
    # not > 3, > 2.9; 4: [1, 2] z = -3 exactly: not < -3; 5: [2, 0] z = 0; 6: [0, 1] z = 4;
    # 8 (the NaN skipped): [1, 2.5] z = 4.33; 9: [2.5, 5] z = 1; 10, 11: [5, 5] σ = 0;
    # 12: [5, 9] (mean 7, σ 2) z = -8.5
    assert _steps(conn, "z-any") == [6, 8, 12]
    assert _steps(conn, "z-up") == [3, 6, 8]
    assert _steps(conn, "z-down") == [12]
    (at_six,) = [t for t in triggers(conn, "z-any") if t["step"] == 6]
    assert at_six["value"] == 4.0 and at_six["current_aggregate"] == 0.5 and at_six["prior_aggregate"] == 0.5
    assert at_six["prior_values"] == [0.0, 1.0] and at_six["window_values"] == [2.5]
    for loaded in parse_rules_text(Z_RULES):
        automation = loaded.automation
        assert [f.step for f in backtest(conn, automation, T0)] == _steps(conn, automation.name)
    run.finish()


def test_zscore_explained(conn, database_url, tmp_path):
    apply_yaml(conn, rule("z-any", "{type: run_metric_zscore, metric: loss, window: 2}"))
    run = engine.init(project="acme/vision", name="z", system_metrics_interval=0)
    _log(run, "loss", [0.0, 1.0, 2.5])
    tick(database_url)
    (fired,) = triggers(conn, "z-any")
    expl = explain_data(conn, fired["id"])
    (window,) = expl.windows
    assert (window.name, window.first_pos, window.last_pos, window.values) == (
        "reference window",
        1,
        2,
        [0.0, 1.0],
    )
    assert expl.z_band == (-1.0, 2.0) and expl.value == 4.0
    text = "\n".join(lines(expl))
    assert "mean = 0.5, σ = 0.5 (population); mean ± 3σ = [-1, 2]" in text
    assert "z = (value − mean) / σ = 4; |z| > 3  → fired" in text
    assert "mean ± 3σ = [-1, 2]" in render_terminal(expl, width=80)
    path = render_png(expl, tmp_path / "z.png")
    assert matplotlib.image.imread(path).shape[:2] == (500, 1000)
    run.finish()


def test_nonfinite_values_fire_once_each(conn, database_url, tmp_path):
    apply_yaml(
        conn,
        rule("loss-nonfinite", "{type: run_metric_nonfinite, metric: loss}", extra="cooldown: 1m\n")
        + "---\n"
        + rule(
            "loss-nan", "{type: run_metric_nonfinite, metric: loss, values: [nan]}", extra="cooldown: 1m\n"
        )
        + "---\n"
        + rule(
            "loss-inf",
            "{type: run_metric_nonfinite, metric: loss, values: [inf, -inf]}",
            extra="cooldown: 5m\n",
        )
        + "---\n"
        + rule("cpu-inf", "{type: run_metric_nonfinite, metric: system/cpu, values: [inf, -inf]}"),
    )
    run = engine.init(project="acme/vision", name="n", system_metrics_interval=0)
    _log(run, "loss", [1.0, math.nan, math.inf, 2.0, -math.inf, math.nan])
    tick(database_url)
    tick(database_url)  # nothing new: nothing fires again
    assert _steps(conn, "loss-nonfinite") == [1, 2, 4, 5]
    assert _steps(conn, "loss-nan") == [1, 5]
    assert _steps(conn, "cpu-inf") == []
    values = [t["value"] for t in triggers(conn, "loss-nonfinite")]
    assert math.isnan(values[0]) and values[1:3] == [math.inf, -math.inf] and math.isnan(values[3])
    # a later flush fires for its own values only
    run.log({"loss": math.inf}, step=6, time=T0 + timedelta(minutes=7))
    run.flush()
    tick(database_url)
    assert _steps(conn, "loss-nonfinite") == [1, 2, 4, 5, 6]
    assert _steps(conn, "loss-inf") == [2, 6]  # -inf at step 4 is within the cooldown of step 2
    automation = parse_rules_text(
        rule("loss-nan", "{type: run_metric_nonfinite, metric: loss, values: [nan]}", extra="cooldown: 1m\n")
    )[0].automation
    assert [f.step for f in backtest(conn, automation, T0)] == [1, 5]

    expl = explain_data(conn, triggers(conn, "loss-nonfinite")[1]["id"])
    text = "\n".join(lines(expl))
    assert "metric: loss, value Infinity at step 2" in text and "(2 finite values stored)" in text
    render_terminal(expl, width=80)
    render_png(expl, tmp_path / "n.png")
    run.finish()


def test_nonfinite_cooldown_on_value_times(conn, database_url):
    """The cooldown runs on the values' own times, whatever order they arrive in: a backfilled
    value (older time, logged later) inside the cooldown of the latest firing stays silent; a
    run whose only firing was on a backfilled value days older fires again on a new one."""
    apply_yaml(
        conn,
        rule(
            "nan-hourly", "{type: run_metric_nonfinite, metric: loss, values: [nan]}", extra="cooldown: 1h\n"
        ),
    )
    a = engine.init(project="acme/vision", name="recent-first", system_metrics_interval=0)
    a.log({"loss": math.nan}, step=0, time=T0 + timedelta(days=3))
    a.flush()
    tick(database_url)
    a.log({"loss": math.nan}, step=1, time=T0 + timedelta(days=3) - timedelta(minutes=30))  # backfilled
    a.log({"loss": math.nan}, step=2, time=T0 + timedelta(days=3, minutes=30))  # within the cooldown
    a.log({"loss": math.nan}, step=3, time=T0 + timedelta(days=3, hours=1))  # a cooldown after step 0
    a.flush()
    tick(database_url)
    b = engine.init(project="acme/vision", name="backfilled-first", system_metrics_interval=0)
    b.log({"loss": math.nan}, step=0, time=T0)  # days older than anything else
    b.flush()
    tick(database_url)
    b.log({"loss": math.nan}, step=1, time=T0 + timedelta(days=3))
    b.flush()
    tick(database_url)
    fired = [(t["run_id"], t["step"]) for t in triggers(conn, "nan-hourly")]
    assert fired == [(a.id, 0), (a.id, 3), (b.id, 0), (b.id, 1)]
    a.finish()
    b.finish()


def test_nonfinite_template_variables(conn, database_url):
    """${metric_value} is NaN, Infinity or -Infinity; ${event_type} the W&B-style name."""
    from engine.actions.context import build_context

    apply_yaml(
        conn, rule("loss-nonfinite", "{type: run_metric_nonfinite, metric: loss}", extra="cooldown: 1m\n")
    )
    run = engine.init(project="acme/vision", name="n", system_metrics_interval=0)
    _log(run, "loss", [math.nan, math.inf, -math.inf])
    tick(database_url)
    contexts = [build_context(conn, t["id"]) for t in triggers(conn, "loss-nonfinite")]
    assert [c["metric_value"] for c in contexts] == ["NaN", "Infinity", "-Infinity"]
    assert {c["event_type"] for c in contexts} == {"RUN_METRIC_NONFINITE"}
    assert contexts[0]["metric_filter"] == "loss is -Infinity or Infinity or NaN"
    run.finish()
