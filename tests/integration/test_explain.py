"""`engine explain`: the data behind a trigger, its terminal picture and its PNG.

Data is logged through the SDK after the rule is applied, evaluated by the real evaluator,
then explained; the windows shown must be exactly the ones the evaluator recorded."""

from __future__ import annotations

import math
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import matplotlib.image
import psycopg
import pytest

import engine
from engine import db as enginedb
from engine.exceptions import NotFound
from engine.explain import Explanation, explain_data, lines, render_png, render_terminal
from engine.settings import get_settings
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
    # the cause as columns: the series, the position, the window, what was compared
    key_id = conn.execute("SELECT id FROM metric_keys WHERE key = 'accuracy'").fetchone()[0]
    assert (fired["key_id"], fired["pos"], fired["window_size"], fired["prior_window_size"]) == (
        key_id,
        6,
        3,
        None,
    )
    assert (fired["aggregation"], fired["operator"], fired["threshold"]) == ("avg", ">", 0.6)
    assert (fired["change"], fired["direction"], fired["amount"]) == (None, None, None)
    # plain data: it goes to JSON and comes back the same
    assert Explanation.model_validate_json(expl.model_dump_json()) == expl

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
    assert (fired["pos"], fired["window_size"], fired["prior_window_size"]) == (9, 3, 5)
    assert (fired["aggregation"], fired["operator"], fired["threshold"]) == ("avg", None, None)
    assert (fired["change"], fired["direction"], fired["amount"]) == ("relative", "decrease", 0.25)
    assert (expl.change, expl.direction, expl.amount) == ("relative", "decrease", 0.25)

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


def test_explained_from_the_trigger_columns_alone(conn, database_url):
    """Neither the cause text, nor the details, nor the rule are read back to draw it."""
    apply_yaml(conn, LOSS_DROP)
    run = engine.init(project="acme/vision", name="plateau", system_metrics_interval=0)
    _log(run, "loss", [1.0] * 6 + [0.9, 0.5, 0.4, 0.3])
    tick(database_url)
    (fired,) = triggers(conn, "loss-dropped")
    before = explain_data(conn, fired["id"])
    conn.execute(
        "UPDATE triggers SET cause = 'garbled', details = '\"not an object\"'::jsonb WHERE id = %s",
        (fired["id"],),
    )
    conn.execute('UPDATE automation_versions SET rule = \'{"no": "rule"}\'::jsonb')
    conn.execute('UPDATE automations SET rule = \'{"no": "rule"}\'::jsonb')

    expl = explain_data(conn, fired["id"])
    assert expl.warnings == ("the rule of version 1 cannot be read by this engine version",)
    assert expl.condition == "run_metric_change" and expl.scope is None  # the words came from them
    assert expl.series == before.series and expl.windows == before.windows
    assert expl.position == 9 and expl.fired_point == before.fired_point
    assert expl.model_dump(exclude={"condition", "scope", "warnings"}) == before.model_dump(
        exclude={"condition", "scope", "warnings"}
    )
    text = "\n".join(lines(expl))
    assert "prior window #2–#6 (steps 10–50): 1, 1, 1, 1, 1" in text
    assert "current avg = 0.6, prior avg = 1" in text
    assert "d = (cur − prior) / |prior| = -40%; −d ≥ 25%  → fired" in text
    run.finish()


def test_a_trigger_written_before_the_cause_columns_is_explained(empty_database_url, monkeypatch, tmp_path):
    """A database with triggers from before migration 0009: the migration fills the columns
    from the cause text and the rule at the trigger's version, and explain draws as before."""
    old_sql = tmp_path / "sql"
    shutil.copytree(enginedb.SQL_DIR, old_sql)
    for version, path in enginedb.migrations():
        if version == "0009":  # later ones stay: the SDK writes their tables
            (old_sql / "migrations" / path.name).unlink()
    for view in (old_sql / "views").glob("*.sql"):  # today's read tables of later migrations
        view.unlink()  # (the upgrade below recreates them)
    package_sql = enginedb.SQL_DIR
    monkeypatch.setattr(enginedb, "SQL_DIR", old_sql)
    monkeypatch.setenv("ENGINE_DATABASE_URL", empty_database_url)
    get_settings.cache_clear()
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        enginedb.migrate(conn)
        apply_yaml(conn, ACCURACY)
        apply_yaml(conn, LOSS_DROP)
        run = engine.init(project="acme/vision", name="old", system_metrics_interval=0)
        accuracies = [0.1, 0.3, math.nan, 0.5, 0.6, math.inf, 0.7, 0.8, 0.9]
        losses = [1.0] * 6 + [0.9, 0.5, 0.4, 0.3]
        for i, value in enumerate(losses):
            row = {"loss": value, **({"accuracy": accuracies[i]} if i < len(accuracies) else {})}
            run.log(row, step=10 * i, time=T0 + timedelta(minutes=i))
        run.finish()
        # the rows the evaluator wrote before the columns existed (the same firings as above)
        conn.execute(
            """
            INSERT INTO triggers (automation_id, automation_version, event_type, cause, run_pk, metric, step,
                                  value_time, value, window_values, prior_values, current_aggregate,
                                  prior_aggregate, details)
            SELECT a.id, 1, a.rule->'event'->>'type',
                   format('metric:%%s:%%s:%%s', %(run_pk)s::bigint, k.id, f.pos), %(run_pk)s, f.metric, f.step,
                   %(t0)s::timestamptz + f.minutes * interval '1 minute', f.value, f.window_values,
                   f.prior_values, f.current_aggregate, f.prior_aggregate,
                   jsonb_build_object('metric_filter', f.condition)
            FROM (VALUES
                ('accuracy-above-0.6', 'accuracy', 6, 70, 7, 0.7::float8, ARRAY[0.6, 0.7, 0.8]::float8[],
                 NULL::float8[], 0.7::float8, NULL::float8, 'avg(accuracy) over 3 > 0.6'),
                ('loss-dropped', 'loss', 9, 80, 8, -0.4, ARRAY[0.9, 0.5, 0.4], ARRAY[1, 1, 1, 1, 1],
                 0.6, 1.0, 'avg(loss) over 3 vs prior 5 decreased by ≥ 25%%')
            ) AS f(automation, metric, pos, step, minutes, value, window_values, prior_values,
                   current_aggregate, prior_aggregate, condition)
            JOIN automations a ON a.name = f.automation
            JOIN metric_keys k ON k.key = f.metric
            """,
            {"run_pk": run.pk, "t0": T0},
        )
        monkeypatch.setattr(enginedb, "SQL_DIR", package_sql)
        assert enginedb.migrate(conn)[0] == "0009_trigger_cause_columns.sql"
        accuracy, loss = triggers(conn, "accuracy-above-0.6")[0], triggers(conn, "loss-dropped")[0]
        assert (accuracy["pos"], accuracy["window_size"], accuracy["prior_window_size"]) == (6, 3, None)
        assert (accuracy["aggregation"], accuracy["operator"], accuracy["threshold"]) == ("avg", ">", 0.6)
        assert (loss["pos"], loss["window_size"], loss["prior_window_size"]) == (9, 3, 5)
        assert (loss["change"], loss["direction"], loss["amount"]) == ("relative", "decrease", 0.25)

        expl = explain_data(conn, accuracy["id"])
        (window,) = expl.windows
        assert (window.first_pos, window.last_pos, window.values) == (4, 6, [0.6, 0.7, 0.8])
        assert expl.warnings == () and expl.fired_point is not None and expl.fired_point.step == 70
        assert "avg of the window = 0.7 > 0.6  → fired" in lines(expl)
        expl = explain_data(conn, loss["id"])
        prior, current = expl.windows
        assert (prior.first_pos, prior.last_pos, current.first_pos, current.last_pos) == (2, 6, 7, 9)
        assert expl.warnings == () and current.values == [0.9, 0.5, 0.4]
        assert "d = (cur − prior) / |prior| = -40%; −d ≥ 25%  → fired" in lines(expl)


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

    assert (fired["key_id"], fired["pos"], fired["window_size"], fired["aggregation"]) == (None,) * 4
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
