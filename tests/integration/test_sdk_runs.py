"""Run states through the SDK: every transition with its transition row and its event."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

import engine
from engine import clock
from engine.exceptions import IngestError, NotFound
from engine.localdb import LocalDatabase
from tests.integration.sdk_helpers import events, same_transaction, set_env

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _run_row(conn, run_pk: int) -> dict:
    row = conn.execute(
        "SELECT run_id, name, user_name, config, tags, state, exit_code, finished_at FROM runs WHERE id = %s",
        (run_pk,),
    ).fetchone()
    return dict(
        zip(("run_id", "name", "user_name", "config", "tags", "state", "exit_code", "finished_at"), row)
    )


def _transitions(conn, run_pk: int) -> list[tuple]:
    return conn.execute(
        "SELECT from_state, to_state, exit_code, author FROM run_transitions WHERE run_pk = %s ORDER BY id",
        (run_pk,),
    ).fetchall()


def _state_events(conn, run_pk: int) -> list[dict]:
    return [e for e in events(conn, "run_state") if e["run_pk"] == run_pk]


def test_a_new_run_is_a_transition_into_running(conn, database_url):
    with clock.frozen(T0):
        run = engine.init(
            project="acme/vision",
            user="alice",
            config={"lr": 3e-4},
            tags=["a", "b"],
            system_metrics_interval=0,
        )
    row = _run_row(conn, run.pk)
    assert len(run.id) == 8 and run.name == run.id  # generated id; the name defaults to it
    assert row == {
        "run_id": run.id,
        "name": run.id,
        "user_name": "alice",
        "config": {"lr": 3e-4},
        "tags": ["a", "b"],
        "state": "running",
        "exit_code": None,
        "finished_at": None,
    }
    assert _transitions(conn, run.pk) == [(None, "running", None, "alice")]
    [event] = _state_events(conn, run.pk)
    assert event["details"] == {"from": None, "to": "running"}
    assert (event["author"], event["project_id"], event["time"]) == ("alice", run.project_id, T0)
    project = conn.execute("SELECT entity, name FROM projects WHERE id = %s", (run.project_id,)).fetchone()
    assert project == ("acme", "vision")
    assert same_transaction(conn, "runs", "id", run.pk, event["id"])
    assert same_transaction(conn, "run_transitions", "run_pk", run.pk, event["id"])
    run.finish()


def test_finish_with_exit_code_zero_is_finished(conn, database_url):
    run = engine.init(
        project="acme/vision", name="resnet-50", id="r1", user="alice", system_metrics_interval=0
    )
    run.finish()
    run.finish()  # a second call changes nothing
    row = _run_row(conn, run.pk)
    assert (row["name"], row["state"], row["exit_code"]) == ("resnet-50", "finished", 0)
    assert row["finished_at"] is not None and run.state == "finished"
    assert _transitions(conn, run.pk) == [
        (None, "running", None, "alice"),
        ("running", "finished", 0, "alice"),
    ]
    last = _state_events(conn, run.pk)[-1]
    assert last["details"] == {"from": "running", "to": "finished", "exit_code": 0}
    assert same_transaction(conn, "runs", "id", run.pk, last["id"])
    assert len(_state_events(conn, run.pk)) == 2
    with pytest.raises(IngestError, match="finished"):
        run.log({"loss": 1.0})


def test_non_zero_exit_code_is_failed(conn, database_url):
    with engine.init(project="acme/vision", system_metrics_interval=0) as run:
        run.finish(exit_code=3)
    assert _run_row(conn, run.pk)["state"] == "failed"
    assert _state_events(conn, run.pk)[-1]["details"] == {"from": "running", "to": "failed", "exit_code": 3}


def test_an_exception_in_the_with_block_fails_the_run_and_is_re_raised(conn, database_url):
    with pytest.raises(ZeroDivisionError):
        with engine.init(project="acme/vision", system_metrics_interval=0) as run:
            run.log({"loss": 0.5})
            run.log({"loss": 0.4})
            raise ZeroDivisionError("the training code fails")
    assert _run_row(conn, run.pk)["state"] == "failed"
    assert _state_events(conn, run.pk)[-1]["details"] == {"from": "running", "to": "failed", "exit_code": 1}
    # what was logged before the exception was stored first
    assert conn.execute("SELECT count(*) FROM metric_points WHERE run_pk = %s", (run.pk,)).fetchone()[0] == 2


def test_kill_run_through_the_api(conn, database_url):
    run = engine.init(project="acme/vision", user="alice", system_metrics_interval=0)
    api = engine.Api(user="admin")
    assert api.kill_run("acme/vision", run.id) is True
    assert _run_row(conn, run.pk)["state"] == "killed"
    kill = _state_events(conn, run.pk)[-1]
    assert kill["details"] == {"from": "running", "to": "killed", "exit_code": None}
    assert kill["author"] == "admin"
    assert same_transaction(conn, "runs", "id", run.pk, kill["id"])
    # killing again changes nothing; the job's own finish() leaves it killed
    assert api.kill_run("acme/vision", run.id) is False
    run.finish()
    assert _run_row(conn, run.pk)["state"] == "killed" and run.state == "killed"
    assert [e["details"]["to"] for e in _state_events(conn, run.pk)] == ["running", "killed"]
    with pytest.raises(NotFound):
        api.kill_run("acme/vision", "nope")


def test_resume_goes_back_to_running_and_continues_the_steps(conn, database_url):
    with engine.init(project="acme/vision", id="long", system_metrics_interval=0) as run:
        for step in range(10):
            run.log({"loss": 1.0 / (step + 1)})
        run.finish(exit_code=1)
    resumed = engine.init(
        project="acme/vision", id="long", resume=True, name="long (2)", system_metrics_interval=0
    )
    assert resumed.pk == run.pk and resumed.step == 9 and resumed.name == "long (2)"
    assert _run_row(conn, run.pk)["state"] == "running"
    assert _state_events(conn, run.pk)[-1]["details"] == {
        "from": "failed",
        "to": "running",
        "exit_code": None,
    }
    with pytest.warns(engine.StepWarning, match="step 5"):
        resumed.log({"loss": 9.0}, step=5)
    resumed.log({"loss": 0.01})
    resumed.finish()
    steps = [
        s for (s,) in conn.execute("SELECT step FROM metric_points WHERE run_pk = %s ORDER BY seq", (run.pk,))
    ]
    assert steps == list(range(11))
    assert [e["details"]["to"] for e in _state_events(conn, run.pk)] == [
        "running",
        "failed",
        "running",
        "finished",
    ]
    # resume=True with an id that does not exist yet creates the run
    fresh = engine.init(project="acme/vision", id="new-one", resume=True, system_metrics_interval=0)
    assert _run_row(conn, fresh.pk)["state"] == "running"
    fresh.finish()


def test_an_existing_id_needs_resume(conn, database_url):
    engine.init(project="acme/vision", id="dup", system_metrics_interval=0).finish()
    with pytest.raises(ValueError, match="resume=True"):
        engine.init(project="acme/vision", id="dup", system_metrics_interval=0)
    # the same id in another project is another run
    other = engine.init(project="acme/other", id="dup", system_metrics_interval=0)
    other.finish()
    assert conn.execute("SELECT count(*) FROM runs WHERE run_id = 'dup'").fetchone()[0] == 2
    assert conn.execute("SELECT count(*) FROM projects WHERE entity = 'acme'").fetchone()[0] == 2


@pytest.mark.parametrize("project", ["acme", "acme/vi sion", "a/b/c", ""])
def test_project_names_are_checked(database_url, project):
    with pytest.raises(ValueError, match="entity/project"):
        engine.init(project=project)


def test_every_state_change_has_one_transition_and_one_event(conn, database_url):
    runs = [engine.init(project="acme/vision", system_metrics_interval=0) for _ in range(3)]
    runs[0].finish()
    runs[1].finish(exit_code=2)
    engine.Api().kill_run("acme/vision", runs[2].id)
    engine.init(project="acme/vision", id=runs[0].id, resume=True, system_metrics_interval=0).finish()
    transitions = conn.execute("SELECT count(*) FROM run_transitions").fetchone()[0]
    assert transitions == len(events(conn, "run_state")) == 3 + 3 + 2
    runs[2].finish()


def test_the_embedded_database_is_started_and_migrated_on_first_use(monkeypatch):
    """`import engine; engine.init(...)` with no set-up at all (ENGINE_DATABASE_URL unset)."""
    # not tmp_path: as root the server runs as `postgres`, which cannot enter /tmp/pytest-of-root
    data_dir = Path(tempfile.mkdtemp(prefix="engine-sdk-"))
    data_dir.chmod(0o755)
    set_env(monkeypatch, data_dir=data_dir)
    try:
        with engine.init(project="acme/vision", system_metrics_interval=0) as run:
            run.log({"loss": 0.5})
        local = LocalDatabase(data_dir)
        with psycopg.connect(local.url()) as c:
            assert c.execute("SELECT count(*) FROM metric_points").fetchone()[0] == 1
            assert c.execute("SELECT state FROM runs").fetchone()[0] == "finished"
    finally:
        engine.sdk.session.close_all()
        LocalDatabase(data_dir).destroy()
        shutil.rmtree(data_dir, ignore_errors=True)


def test_the_last_points_commit_with_the_final_state(conn, database_url):
    with engine.init(project="acme/vision", system_metrics_interval=0) as run:
        for step in range(20):
            run.log({"loss": 1.0 / (step + 1)})
    finish = _state_events(conn, run.pk)[-1]
    assert finish["details"]["to"] == "finished"
    # the flush that stored the points also carried the state change: one transaction
    assert same_transaction(conn, "metric_points", "run_pk", run.pk, finish["id"])
    assert same_transaction(conn, "series_state", "run_pk", run.pk, finish["id"])


def test_api_apply_hands_rules_to_the_rules_engine(conn, database_url):
    rule = (
        "name: failed-runs\n"
        "scope: {project: acme/vision}\n"
        "event: {type: run_state, states: [crashed]}\n"
        "action: {type: no_op}\n"
    )
    assert engine.Api().apply(rule) == [("failed-runs", "created")]
    assert engine.Api().apply(rule) == [("failed-runs", "unchanged")]


@pytest.mark.parametrize(
    ("ending", "state"), [("", "finished"), ("raise SystemExit(0)", "finished"), ("1 / 0", "failed")]
)
def test_a_script_that_never_calls_finish(conn, database_url, ending, state):
    """At exit, open runs are finished (failed when the script died of an exception)."""
    script = (
        "import engine\n"
        "run = engine.init(project='acme/vision', id='script', system_metrics_interval=0)\n"
        "run.log({'loss': 0.5})\n"
        f"{ending}\n"
    )
    env = {**os.environ, "ENGINE_DATABASE_URL": database_url}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == (1 if state == "failed" else 0), done.stderr
    row = conn.execute("SELECT id, state FROM runs WHERE run_id = 'script'").fetchone()
    assert row[1] == state
    assert conn.execute("SELECT count(*) FROM metric_points WHERE run_pk = %s", (row[0],)).fetchone()[0] == 1
