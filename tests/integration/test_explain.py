"""`engine explain`: the data behind a trigger, its terminal picture and its PNG.

Data is logged through the SDK after the rule is applied, evaluated by the real evaluator,
then explained; the windows shown must be exactly the ones the evaluator recorded."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import matplotlib.image
import pytest

import engine
from engine.exceptions import NotFound
from engine.explain import explain_data, lines, render_png, render_terminal
from tests.integration.evaluation_helpers import apply_yaml, rule, tick, triggers
from tests.integration.sdk_helpers import wait_for

T0 = datetime(2026, 3, 1, tzinfo=UTC)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

ACCURACY = rule(
    "accuracy-above-0.6",
    '{type: run_metric_threshold, metric: accuracy, window: 3, aggregation: avg, operator: ">", threshold: 0.6}',
)
LOSS_DROP = rule(
    "loss-dropped",
    "{type: run_metric_change, metric: loss, current_window: 3, prior_window: 5, aggregation: avg,"
    " change: relative, direction: decrease, amount: 0.25}",
)


def _log(run, key: str, values: list[float]) -> None:
    for i, v in enumerate(values):
        run.log({key: v}, step=10 * i, time=T0 + timedelta(minutes=i))
    run.flush()


def _check_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert 10_000 < len(data) < 2_000_000
    assert matplotlib.image.imread(path).shape[:2] == (500, 1000)  # 10 × 5 in at 100 dpi


def test_threshold_trigger(conn, database_url, tmp_path):
    apply_yaml(conn, ACCURACY)
    run = engine.init(project="acme/vision", name="sweep-1", user="alice", system_metrics_interval=0)
    # finite values #1..#7 (NaN and inf are stored but are no values for the rule);
    # avg of 3 at #5 is 0.6 (not > 0.6), at #6 it is 0.7: fires there, at step 70
    _log(run, "accuracy", [0.1, 0.3, math.nan, 0.5, 0.6, math.inf, 0.7, 0.8, 0.9])
    tick(database_url)
    (fired,) = triggers(conn, "accuracy-above-0.6")

    expl = explain_data(conn, fired["id"])
    assert expl.is_metric and expl.automation == "accuracy-above-0.6" and expl.automation_version == 1
    assert expl.condition == "avg(accuracy) over 3 > 0.6" == fired["details"]["metric_filter"]
    assert expl.run is not None and expl.run.run_id == run.id and expl.run.user == "alice"
    assert [(p.pos, p.step, p.value) for p in expl.series] == [
        (1, 0, 0.1),
        (2, 10, 0.3),
        (3, 30, 0.5),
        (4, 40, 0.6),
        (5, 60, 0.7),
        (6, 70, 0.8),
        (7, 80, 0.9),
    ]
    assert expl.position == 6 and expl.step == fired["step"] == 70
    assert expl.fired_point is not None and expl.fired_point.value == 0.8
    (window,) = expl.windows
    assert (window.name, window.first_pos, window.last_pos) == ("window", 4, 6)
    assert window.values == fired["window_values"] == [0.6, 0.7, 0.8]
    assert window.aggregate == pytest.approx(0.7) and expl.threshold == 0.6
    assert expl.value_time == T0 + timedelta(minutes=7) and expl.warnings == ()

    text = render_terminal(expl, width=100)
    assert "accuracy-above-0.6" in text and "avg(accuracy) over 3 > 0.6" in text
    assert "window #4–#6 (steps 40–70): 0.6, 0.7, 0.8" in text
    assert "avg of the window = 0.7 > 0.6" in text
    assert f"acme/vision/{run.id}" in text and "step 70" in text
    assert "\x1b[" not in text and "\x1b[" in render_terminal(expl, width=100, color=True)
    plot_rows = text.split("\n\n")[0].splitlines()
    assert max(len(row) for row in plot_rows[:-1]) == 100  # the key line may be narrower

    _check_png(render_png(expl, tmp_path / "threshold.png"))
    run.finish()


def test_change_trigger(conn, database_url, tmp_path):
    apply_yaml(conn, LOSS_DROP)
    run = engine.init(project="acme/vision", name="plateau", system_metrics_interval=0)
    # at #8: current avg(1, .9, .5) = .8 vs prior 1: d = -20 %, too small;
    # at #9: current avg(.9, .5, .4) = .6 vs prior avg(#2..#6) = 1: d = -40 %: fires
    _log(run, "loss", [1.0] * 6 + [0.9, 0.5, 0.4, 0.3])
    tick(database_url)
    (fired,) = triggers(conn, "loss-dropped")

    expl = explain_data(conn, fired["id"])
    assert expl.is_change and expl.position == 9 and expl.step == 80
    prior, current = expl.windows
    assert (prior.name, prior.first_pos, prior.last_pos) == ("prior window", 2, 6)
    assert (current.name, current.first_pos, current.last_pos) == ("current window", 7, 9)
    assert prior.values == fired["prior_values"] == [1.0] * 5
    assert current.values == fired["window_values"] == [0.9, 0.5, 0.4]
    assert current.aggregate == pytest.approx(0.6) and prior.aggregate == pytest.approx(1.0)
    assert expl.value == pytest.approx(-0.4) and expl.threshold is None

    text = render_terminal(expl, width=90)
    assert "loss-dropped" in text and "avg(loss) over 3 vs prior 5 decreased by ≥ 25%" in text
    assert "current window #7–#9 (steps 60–80): 0.9, 0.5, 0.4" in text
    assert "prior window #2–#6 (steps 10–50): 1, 1, 1, 1, 1" in text
    assert "current avg = 0.6, prior avg = 1" in text
    assert "d = (cur − prior) / |prior| = -40%; −d ≥ 25%" in text

    _check_png(render_png(expl, tmp_path / "change.png"))
    run.finish()


def test_the_rule_is_the_one_at_the_triggers_version(conn, database_url):
    apply_yaml(conn, ACCURACY)
    run = engine.init(project="acme/vision", name="r", system_metrics_interval=0)
    _log(run, "accuracy", [0.9, 0.9, 0.9])
    tick(database_url)
    (fired,) = triggers(conn)
    # version 2 has a window of 5: the old trigger is still explained with its window of 3
    apply_yaml(conn, ACCURACY.replace("window: 3", "window: 5"))
    expl = explain_data(conn, fired["id"])
    assert expl.automation_version == 1 and expl.condition == "avg(accuracy) over 3 > 0.6"
    assert [(w.first_pos, w.last_pos) for w in expl.windows] == [(1, 3)]
    assert expl.windows[0].values == fired["window_values"] == [0.9, 0.9, 0.9]
    run.finish()


def test_values_deleted_after_firing_are_reported_not_invented(conn, database_url):
    apply_yaml(conn, ACCURACY)
    run = engine.init(project="acme/vision", name="r", system_metrics_interval=0)
    _log(run, "accuracy", [0.9, 0.8, 0.7])
    run.finish()
    tick(database_url)
    (fired,) = triggers(conn)
    conn.execute("DELETE FROM metric_points WHERE run_pk = %s", (run.pk,))
    expl = explain_data(conn, fired["id"])
    assert expl.series == () and expl.fired_point is None
    assert expl.warnings == ("no finite value of accuracy is stored for this run any more",)
    text = render_terminal(expl)
    assert text == "\n".join(lines(expl))  # nothing to draw
    assert "window #1–#3: 0.9, 0.8, 0.7" in text  # the values the trigger recorded
    assert "warning: no finite value of accuracy is stored for this run any more" in text


def test_system_metric_trigger(conn, database_url, tmp_path):
    apply_yaml(
        conn,
        rule(
            "threads",
            "{type: run_metric_threshold, metric: system/proc.cpu.threads, window: 2,"
            ' operator: ">=", threshold: 1}',
        ),
    )
    run = engine.init(project="acme/vision", name="sys", system_metrics_interval=0.2)
    count = "SELECT count(*) FROM system_metrics WHERE run_pk = %s"
    assert wait_for(lambda: conn.execute(count, (run.pk,)).fetchone()[0] >= 14, timeout=15)  # >= 2 samples
    run.finish()
    tick(database_url)
    (fired,) = triggers(conn, "threads")
    expl = explain_data(conn, fired["id"])
    assert expl.metric == "system/proc.cpu.threads" and len(expl.series) >= 2
    assert [p.step for p in expl.series] == list(range(len(expl.series)))  # a sample's index is its step
    assert expl.windows[0].values == fired["window_values"] and expl.position == 2
    _check_png(render_png(expl, tmp_path / "system.png"))


def test_event_trigger_is_explained_in_text(conn, database_url):
    apply_yaml(conn, rule("on-failure", "{type: run_state, states: [crashed]}"))
    with pytest.raises(RuntimeError):
        with engine.init(project="acme/vision", name="boom", user="bob", system_metrics_interval=0):
            raise RuntimeError("boom")
    tick(database_url)
    (fired,) = triggers(conn, "on-failure")

    expl = explain_data(conn, fired["id"])
    assert not expl.is_metric and expl.series == () and expl.windows == ()
    assert expl.event is not None and expl.event.id == fired["event_id"] and expl.event.type == "run_state"
    text = render_terminal(expl, width=100)
    assert text == "\n".join(lines(expl))  # no plot
    assert "on-failure" in text and "run state: running → failed (exit code 1)" in text
    assert "matched: run state in (failed)" in text and '"boom" (user bob, failed)' in text
    with pytest.raises(ValueError, match="no series to draw"):
        render_png(expl, "never.png")


def test_artifact_alias_trigger_names_the_alias_and_version(conn, database_url):
    apply_yaml(conn, rule("to-production", "{type: artifact_alias_added, alias_regex: ^production$}"))
    with engine.init(project="acme/vision", name="train", system_metrics_interval=0) as run:
        run.log_artifact("resnet", type="model", digest="d1", aliases=["production"])
    tick(database_url)
    (fired,) = triggers(conn, "to-production")
    text = "\n".join(lines(explain_data(conn, fired["id"])))
    assert "alias: production" in text and "artifact version: acme/vision/resnet:v0" in text
    assert "matched: alias ~ ^production$" in text


def test_unknown_trigger(conn):
    with pytest.raises(NotFound, match="no trigger 424242"):
        explain_data(conn, 424242)
