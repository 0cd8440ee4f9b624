"""A training job and a database that is down, full, or never answers.

`engine.init` must never end a training job over a problem that may pass: the run goes on in
memory and is created, before its points, once the database answers. A problem that cannot
pass (wrong password, missing database or schema) still fails at once. The database is the
real test cluster, reached through a real TCP proxy that is down until the test brings it up.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

import engine
from engine.db import is_transient
from engine.exceptions import EngineError, IngestError, SchemaNotReady
from tests.acceptance.service_helpers import ENGINE
from tests.integration.db_proxy import BlackHole, Proxy
from tests.integration.sdk_helpers import set_env

WARNING = "cannot write to the database"


@pytest.fixture
def proxy(pg_cluster, database_url):
    """Down until the test calls `up()`."""
    p = Proxy(Path(pg_cluster.socket_dir) / ".s.PGSQL.5432")
    p.dbname = conninfo_to_dict(database_url)["dbname"]
    yield p
    p.down()


@pytest.fixture
def black_hole():
    hole = BlackHole()
    hole.up()
    yield hole
    hole.down()


def _points(conn, run_id: str) -> list[tuple]:
    return conn.execute(
        "SELECT k.key, p.step, p.value FROM metric_points p JOIN runs r ON r.id = p.run_pk"
        " JOIN metric_keys k ON k.id = p.key_id WHERE r.run_id = %s ORDER BY p.seq",
        (run_id,),
    ).fetchall()


TRAINING = r"""
import sys, engine
run = engine.init(project="acme/outage", id="down", system_metrics_interval=0)
print("started", run.id, run.name, run.pk, flush=True)
for step in range(50):
    run.log({"loss": 1 / (step + 1), "acc": step / 100})
print("logged", run.step, flush=True)
sys.stdin.readline()  # the test brings the database up
for step in range(50, 100):
    run.log({"loss": 1 / (step + 1), "acc": step / 100}, step=step)
run.finish()
print("finished", run.pk is not None, flush=True)
"""


def test_a_job_started_while_the_database_is_down_stores_everything_once_it_answers(conn, proxy):
    url = proxy.url(proxy.dbname, password="s3cret-pw")  # trust auth: the password is never asked for
    env = {**os.environ, "ENGINE_DATABASE_URL": url, "ENGINE_FLUSH_INTERVAL": "0.05"}
    with subprocess.Popen(
        [sys.executable, "-c", TRAINING],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as job:
        assert job.stdout.readline().split() == ["started", "down", "down", "None"]  # id and name at once
        assert job.stdout.readline().split() == ["logged", "49"]
        proxy.up()
        job.stdin.write("\n")
        job.stdin.flush()
        out, err = job.communicate(timeout=120)
    assert job.returncode == 0, err
    assert out.split() == ["finished", "True"]
    expected = [(k, s, v) for s in range(100) for k, v in (("loss", 1 / (s + 1)), ("acc", s / 100))]
    assert _points(conn, "down") == expected  # all of them, once, in logging order
    assert conn.execute("SELECT state FROM runs WHERE run_id = 'down'").fetchone() == ("finished",)
    # one warning for the outage (naming the server, not the password), one when it is over
    assert err.count(WARNING) == 1 and f"127.0.0.1:{proxy.port}" in err and "answers again" in err
    assert "s3cret-pw" not in err


def test_a_run_created_late_keeps_its_creation_time_and_gets_its_state_events(
    conn, proxy, monkeypatch, caplog
):
    set_env(monkeypatch, database_url=proxy.url(proxy.dbname), system_metrics_interval=0)
    caplog.set_level(logging.WARNING, logger="engine.sdk.buffer")
    run = engine.init(project="acme/outage", name="late", config={"lr": 0.1}, tags=["a"])
    assert (run.pk, run.name, run.config, run.tags) == (None, "late", {"lr": 0.1}, ["a"])
    run.log({"loss": 0.5})
    started = conn.execute("SELECT now()").fetchone()[0]
    proxy.up()
    run.finish()
    row = conn.execute(
        "SELECT id, name, config, tags, state, created_at < %s FROM runs WHERE run_id = %s", (started, run.id)
    ).fetchone()
    assert row == (run.pk, "late", {"lr": 0.1}, ["a"], "finished", True)
    states = conn.execute(
        "SELECT details ->> 'from', details ->> 'to' FROM events WHERE run_pk = %s ORDER BY id", (run.pk,)
    ).fetchall()
    assert states == [(None, "running"), ("running", "finished")]
    assert [r.getMessage().startswith(WARNING) for r in caplog.records].count(True) == 1


def test_a_run_resumed_during_an_outage_continues_after_its_stored_steps(
    conn, database_url, proxy, monkeypatch
):
    set_env(monkeypatch, system_metrics_interval=0)
    with engine.init(project="acme/outage", id="again") as run:
        for step in range(5):
            run.log({"loss": float(step)})
        run._log_system([("system/cpu", 1.0)])
    set_env(monkeypatch, database_url=proxy.url(proxy.dbname))
    run = engine.init(project="acme/outage", id="again", resume=True, name="second")
    run.log({"loss": 10.0})  # "the next step": 5 once the stored steps are known
    run.log({"loss": 11.0})
    run.log({"loss": 12.0}, step=3)  # lower than the stored 4: dropped when the run opens
    run.log({"loss": 13.0})
    run._log_system([("system/cpu", 2.0)])
    proxy.up()
    run.flush()
    assert run.step == 7 and run.name == "second"
    run.finish()
    assert [(s, v) for _, s, v in _points(conn, "again")] == [
        (0, 0.0),
        (1, 1.0),
        (2, 2.0),
        (3, 3.0),
        (4, 4.0),
        (5, 10.0),
        (6, 11.0),
        (7, 13.0),
    ]
    system = conn.execute("SELECT step, value FROM system_metrics ORDER BY seq").fetchall()
    assert system == [(0, 1.0), (1, 2.0)]
    transitions = conn.execute(
        "SELECT from_state, to_state FROM run_transitions WHERE run_pk = %s ORDER BY id", (run.pk,)
    ).fetchall()
    assert transitions == [
        (None, "running"),
        ("running", "finished"),
        ("finished", "running"),
        ("running", "finished"),
    ]


def test_an_id_taken_by_another_run_is_reported_when_the_database_answers(conn, proxy, monkeypatch):
    set_env(monkeypatch, system_metrics_interval=0)
    with engine.init(project="acme/outage", id="taken") as first:
        first.log({"loss": 1.0})
    set_env(monkeypatch, database_url=proxy.url(proxy.dbname))
    second = engine.init(project="acme/outage", id="taken")  # without resume=True
    second.log({"loss": 2.0})
    proxy.up()
    with pytest.raises(
        IngestError, match=r"'taken' already exists.*pass resume=True.*1 logged points were not stored"
    ):
        second.finish()
    assert [v for _, _, v in _points(conn, "taken")] == [1.0]  # the other run is untouched


def test_a_full_server_is_waited_for(conn, database_url, monkeypatch, caplog):
    """A role at its connection limit gets SQLSTATE 53300 ("too many connections"), as every
    job does when max_connections is reached."""
    role = "engine_full_" + uuid.uuid4().hex[:8]
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN CONNECTION LIMIT 0").format(sql.Identifier(role)))
    conn.execute(sql.SQL("GRANT engine TO {}").format(sql.Identifier(role)))
    try:
        url = database_url.replace("postgresql://engine@", f"postgresql://{role}@")
        with pytest.raises(psycopg.OperationalError, match="too many connections") as refused:
            psycopg.connect(url).close()
        assert is_transient(refused.value)
        set_env(monkeypatch, database_url=url, system_metrics_interval=0)
        caplog.set_level(logging.WARNING, logger="engine.sdk.buffer")
        run = engine.init(project="acme/outage", id="full")
        run.log({"loss": 0.5})
        assert run.pk is None
        conn.execute(sql.SQL("ALTER ROLE {} CONNECTION LIMIT -1").format(sql.Identifier(role)))
        run.finish()
        assert _points(conn, "full") == [("loss", 0, 0.5)]
        assert any("too many connections" in r.getMessage() for r in caplog.records)
    finally:
        engine.sdk.session.close_all()
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_a_port_that_never_answers_hangs_neither_init_nor_the_cli(black_hole):
    env = {**os.environ, "ENGINE_DATABASE_URL": black_hole.url("engine"), "ENGINE_CONNECT_TIMEOUT": "2"}
    script = (
        "import engine\n"
        "run = engine.init(project='acme/outage', id='hole', system_metrics_interval=0)\n"
        "print('returned', run.id, flush=True)\n"
        "run.log({'loss': 0.5})\n"
        "try:\n"
        "    run.finish(timeout=3)\n"
        "except engine.exceptions.IngestError as exc:\n"
        "    print('lost:', exc, flush=True)\n"
    )
    # generous guards: without a connect timeout each would wait for minutes
    job = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=90, check=False
    )
    assert job.returncode == 0, job.stderr
    returned, lost = job.stdout.splitlines()
    assert returned == "returned hole"
    assert "1 points of run acme/outage/hole (the run itself is not in the database) were not stored" in lost
    assert job.stderr.count(WARNING) == 1 and "timeout" in job.stderr

    cli = subprocess.run(
        [ENGINE, "history"], env=env, capture_output=True, text=True, timeout=90, check=False
    )
    assert cli.returncode == 1
    assert cli.stderr.startswith("error:") and "timeout" in cli.stderr


def _unmigrated(pg_cluster) -> str:
    name = "empty_" + uuid.uuid4().hex[:8]
    with psycopg.connect(pg_cluster.url("postgres"), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name


@pytest.mark.parametrize("problem", ["password", "database", "schema"])
def test_a_problem_that_cannot_pass_fails_init_at_once(pg_cluster, conn, monkeypatch, caplog, problem):
    caplog.set_level(logging.WARNING, logger="engine.sdk.buffer")
    socket_dir = pg_cluster.socket_dir
    cleanup = []
    if problem == "password":
        # the test cluster trusts local connections; this role alone must give its password
        role = "engine_pw_" + uuid.uuid4().hex[:8]
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'right-one'").format(sql.Identifier(role)))
        hba = Path(conn.execute("SHOW hba_file").fetchone()[0])
        before = hba.read_text()
        hba.write_text(f"local all {role} scram-sha-256\n" + before)
        conn.execute("SELECT pg_reload_conf()")
        cleanup.append(lambda: (hba.write_text(before), conn.execute("SELECT pg_reload_conf()")))
        cleanup.append(lambda: conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role))))
        url, words = (
            f"postgresql://{role}:wrong-one@/engine_template?host={socket_dir}",
            "password authentication failed",
        )
    elif problem == "database":
        url, words = (
            f"postgresql://engine@/no_such_db?host={socket_dir}",
            'database "no_such_db" does not exist',
        )
    else:
        name = _unmigrated(pg_cluster)
        cleanup.append(
            lambda: conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
        )
        url, words = pg_cluster.url(name), "engine db migrate"
    try:
        set_env(monkeypatch, database_url=url, system_metrics_interval=0)
        with pytest.raises(EngineError) as failed:
            engine.init(project="acme/outage")
        message = str(failed.value)
        assert words in message and "\n" not in message and "wrong-one" not in message
        assert not is_transient(failed.value)
        assert problem != "schema" or isinstance(failed.value, SchemaNotReady)
        assert not any(r.getMessage().startswith(WARNING) for r in caplog.records)  # not taken for an outage
    finally:
        engine.sdk.session.close_all()
        for undo in reversed(cleanup):
            undo()


def test_a_creation_whose_answer_was_lost_is_recognised_when_tried_again(conn, database_url, monkeypatch):
    """The commit of a run's creation may succeed while its answer is lost: trying again
    finds that run (same id, creation time and author) instead of failing or doubling it."""
    from engine.clock import now
    from engine.sdk.run import _Opening

    opening = _Opening(
        "acme", "outage", "lost", None, "alice", None, None, None, now(), resume=False, redraw=False
    )
    with psycopg.connect(database_url) as c1:
        first = opening.open(c1)
    with psycopg.connect(database_url) as c2:
        again = opening.open(c2)
    assert first == again == (opening.pk, -1, -1)
    assert conn.execute("SELECT count(*) FROM runs WHERE run_id = 'lost'").fetchone() == (1,)
