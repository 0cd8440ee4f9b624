"""The stop_run action against the real database: a training loop in a subprocess (the SDK's
database transport) learns the stop request in the flush after the evaluator stored it, gets
`engine.RunStopped`, and its run ends `killed` naming the automation."""

from __future__ import annotations

import threading

import psycopg
import pytest
from evaluation_helpers import apply_yaml, tick
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from sdk_helpers import wait_for
from stop_run_helpers import FREE_RUNNING, STEPPED, STOP_RULE, run_row, start, step, stop_requests

import engine
from engine import clock, db
from engine.actions import outbox
from engine.evaluation import Evaluator
from engine.evaluation.firing import Firing, trigger_row
from engine.exceptions import EngineError


def test_a_training_loop_gets_run_stopped_in_the_flush_after_the_firing_and_ends_killed(conn, database_url):
    apply_yaml(conn, STOP_RULE.format(name="stop-on-divergence"))
    with start(STEPPED, "diverges") as proc:
        assert step(proc, "0.5") == "stored 0 False"
        assert step(proc, "2e6") == "stored 1 False"  # stored; nobody evaluated it yet
        tick(database_url)  # the trigger and its stop request, in one transaction
        (request,) = stop_requests(conn)
        assert request["automation"] == "stop-on-divergence" and request["ended_at"] is None
        # The next flush (the one storing step 2) reads the request: run.flush raises.
        assert step(proc, "0.4") == "stopped stop-on-divergence 2 True killed"
        assert proc.wait(timeout=60) == 0
    run = run_row(conn, "diverges")
    assert run["state"] == "killed" and run["points"] == 3  # the step logged with the stop is stored
    assert run["last_event"] == {
        "from": "running",
        "to": "killed",
        "exit_code": None,
        "stopped_by": "stop-on-divergence",
    }
    (request,) = stop_requests(conn)
    assert request["ended_at"] is not None  # the state change ended it
    history = (
        conn.cursor(row_factory=dict_row)
        .execute("SELECT action_type, delivery_status, attempts, last_error FROM automation_history")
        .fetchall()
    )
    assert history == [
        {"action_type": "stop_run", "delivery_status": "succeeded", "attempts": 0, "last_error": None}
    ]


def test_a_free_running_loop_flushing_in_the_background_is_stopped_and_loses_nothing(conn, database_url):
    apply_yaml(conn, STOP_RULE.format(name="stop-on-divergence"))
    with start(FREE_RUNNING, "free", ENGINE_FLUSH_INTERVAL="0.05") as proc:
        # the diverging value is stored (by the flush thread), then the service evaluates it
        assert wait_for(
            lambda: conn.execute(
                "SELECT 1 FROM metric_points m JOIN runs r ON r.id = m.run_pk"
                " WHERE r.run_id = 'free' AND m.value > 1e6"
            ).fetchone(),
            timeout=60,
        )
        tick(database_url)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    word, automation, last_step, state = out.split()
    assert (word, automation, state) == ("stopped", "stop-on-divergence", "killed")
    run = run_row(conn, "free")
    assert run["state"] == "killed" and run["last_event"]["stopped_by"] == "stop-on-divergence"
    assert run["points"] == int(last_step) + 1  # every logged step stored, the last one included


def test_the_request_is_stored_once_when_two_services_fire_the_same_value(conn, database_url):
    """Two services insert the same firing at the same moment: the trigger's unique key lets
    one through, and with it one stop request; then both evaluators tick at once."""
    apply_yaml(conn, STOP_RULE.format(name="once"))
    run = engine.init(project="acme/vision", id="twice", system_metrics_interval=0)
    automation_id, version, action = conn.execute(
        "SELECT id, version, rule->'action' FROM automations WHERE name = 'once'"
    ).fetchone()
    stored = type("Stored", (), {"id": automation_id, "version": version})
    firing = Firing("once", "run_metric_threshold", f"metric:{run.pk}:1:0", clock.now(), run_pk=run.pk)
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def service() -> None:
        try:
            with psycopg.connect(database_url, autocommit=True) as own:
                actions = outbox.delivery_rows(automation_id, [action])
                barrier.wait()
                with own.transaction():
                    own.execute(
                        db.query("insert_triggers"),
                        {
                            "triggers": Jsonb([trigger_row(stored, firing) | {"n": 0}]),
                            "actions": Jsonb(actions),
                            "now": clock.now(),
                            # no triggers inserted by a metric group's own statement
                            "fired_ids": [],
                            "fired_automations": [],
                            "fired_runs": [],
                        },
                    )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=service) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert [r["trigger_id"] for r in stop_requests(conn)] == [
        r[0] for r in conn.execute("SELECT id FROM triggers").fetchall()
    ]
    assert len(stop_requests(conn)) == 1

    with pytest.raises(engine.RunStopped, match="asked to stop by automation 'once'"), run:
        run.log({"loss": 0.1})  # learned at this call's flush
        run.flush()
    assert run.state == "killed"

    # Now a real crossing, evaluated by two services ticking together.
    other = engine.init(project="acme/vision", id="twice-b", system_metrics_interval=0)
    other.log({"loss": 5e6})
    other.flush()
    evaluators = [Evaluator(database_url), Evaluator(database_url)]
    try:
        ticks = [threading.Thread(target=e.tick) for e in evaluators]
        for t in ticks:
            t.start()
        for t in ticks:
            t.join()
    finally:
        for e in evaluators:
            e.close()
    assert conn.execute("SELECT count(*) FROM triggers").fetchone() == (2,)
    assert len(stop_requests(conn)) == 2
    assert conn.execute("SELECT count(*) FROM deliveries WHERE action_type = 'stop_run'").fetchone() == (2,)
    assert [r["run_pk"] for r in stop_requests(conn)] == [run.pk, other.pk]
    with pytest.raises(engine.RunStopped, match="asked to stop by automation 'once'"), other:
        other.log({"loss": 0.1})
        other.flush()
    assert other.state == "killed"


def test_a_silenced_or_ended_run_is_not_stopped_and_history_says_why(conn, database_url):
    apply_yaml(conn, STOP_RULE.format(name="stop-silenced") + "---\n" + STOP_RULE.format(name="stop-late"))
    conn.execute(
        "INSERT INTO silences (automation_id, starts_at, ends_at, reason)"
        " SELECT id, now() - interval '1 minute', now() + interval '1 hour', 'night' FROM automations"
        " WHERE name = 'stop-silenced'"
    )
    running = engine.init(project="acme/vision", id="running", system_metrics_interval=0)
    running.log({"loss": 5e6})
    running.flush()
    ended = engine.init(project="acme/vision", id="ended", system_metrics_interval=0)
    ended.log({"loss": 5e6})
    ended.finish()  # finished before the service evaluated the value
    tick(database_url)
    rows = conn.execute(
        "SELECT automation, run_id, delivery_status, last_error FROM automation_history ORDER BY automation, run_id"
    ).fetchall()
    assert rows == [
        ("stop-late", "ended", "skipped", "the run was no longer running"),
        ("stop-late", "running", "succeeded", None),
        ("stop-silenced", "ended", "silenced", f"silenced by silence {_silence_id(conn)}: night"),
        ("stop-silenced", "running", "silenced", f"silenced by silence {_silence_id(conn)}: night"),
    ]
    assert [r["automation"] for r in stop_requests(conn)] == ["stop-late"]  # for the running run only
    running.log({"loss": 0.1})  # learned at the next flush
    with pytest.raises(engine.RunStopped, match="'stop-late'"):
        running.flush()
    running.finish()  # an explicit finish is the user's choice: finished, as asked
    assert running.state == "finished"


def _silence_id(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT id FROM silences").fetchone()[0]


def test_a_resumed_run_starts_without_the_old_request(conn, database_url):
    apply_yaml(conn, STOP_RULE.format(name="stop-then-resume"))
    first = engine.init(project="acme/vision", id="again", system_metrics_interval=0)
    first.log({"loss": 5e6})
    first.flush()
    tick(database_url)
    with pytest.raises(engine.RunStopped), first:
        first.log({"loss": 1.0})
        first.flush()
    assert first.state == "killed"
    resumed = engine.init(project="acme/vision", id="again", resume=True, system_metrics_interval=0)
    resumed.log({"loss": 0.5})
    resumed.flush()  # no RunStopped: the kill ended the request
    assert not resumed.stop_requested
    resumed.finish()
    assert resumed.state == "finished"
    assert all(r["ended_at"] is not None for r in stop_requests(conn))


def test_a_stop_run_delivery_is_not_redelivered(conn, database_url):
    apply_yaml(conn, STOP_RULE.format(name="stop-once"))
    run = engine.init(project="acme/vision", id="r", system_metrics_interval=0)
    run.log({"loss": 5e6})
    run.flush()
    tick(database_url)
    (delivery,) = outbox.list_deliveries(conn)
    assert (delivery["action_type"], delivery["status"]) == ("stop_run", "succeeded")
    with pytest.raises(EngineError, match="stop_run action: its stop request was stored with the trigger"):
        outbox.redeliver(conn, str(delivery["id"]))
    run.finish()


def test_rules_test_actions_test_and_explain_say_what_stop_run_does(conn, database_url, tmp_path):
    from typer.testing import CliRunner

    from engine.cli import app

    rule_file = tmp_path / "stop.yaml"
    rule_file.write_text(STOP_RULE.format(name="stop-shown"))
    apply_yaml(conn, rule_file.read_text())
    run = engine.init(project="acme/vision", id="shown", system_metrics_interval=0)
    run.log({"loss": 5e6})
    run.flush()
    runner = CliRunner()
    backtest = runner.invoke(app, ["rules", "test", str(rule_file), "--since", "1h"])
    assert backtest.exit_code == 0, backtest.output
    assert "stop-shown: 1 would fire (stop_run: each run would be asked to stop)" in " ".join(
        backtest.output.split()
    )
    assert stop_requests(conn) == []  # a backtest only reports
    preview = runner.invoke(app, ["actions", "test", "stop-shown"])
    assert preview.exit_code == 0, preview.output
    assert "action 0 (stop_run): would ask the run to stop" in " ".join(preview.output.split())
    assert stop_requests(conn) == []
    tick(database_url)
    (trigger_id,) = conn.execute("SELECT id FROM triggers").fetchone()
    explained = runner.invoke(app, ["explain", str(trigger_id)])
    assert explained.exit_code == 0, explained.output
    assert "delivery: stop_run: the run was asked to stop" in explained.output
    with pytest.raises(engine.RunStopped), run:
        run.log({"loss": 0.1})
        run.flush()
    assert run.state == "killed"
