"""The SDK's database connections: at most one per process, closed when idle, PgBouncer-safe.

A training process is a real subprocess here; its connections are counted in
pg_stat_activity by application_name (`engine-sdk`).
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading

import pytest

import engine
from engine import db
from engine.exceptions import EngineError
from tests.integration.sdk_helpers import set_env, wait_for

# Three runs (one with system metrics every 0.1 s), artifacts and Api calls, all logging at
# once; then the sampled run finishes and the process goes quiet with two runs still open.
TRAINING = r"""
import sys, threading, engine

runs = [engine.init(project="acme/vision", id=f"conn-{i}", system_metrics_interval=0.1 if i == 0 else 0)
        for i in range(3)]
api = engine.Api(user="alice")
logged = [0, 0, 0]

def log(run_index, n):
    for _ in range(n):
        runs[run_index].log({"loss": 0.5, "acc": 0.25})
        logged[run_index] += 2

print("busy", flush=True)
threads = [threading.Thread(target=log, args=(i, 3000)) for i in (1, 2)]
for t in threads:
    t.start()
for k in range(30):
    log(0, 100)
    v = runs[0].log_artifact("data", type="dataset", metadata={"k": k})
    api.add_tag(v, f"t{k}")
    runs[0].flush()
for t in threads:
    t.join()
runs[0].finish()
print("idle", flush=True)
for line in sys.stdin:
    if line.strip() == "log":
        for i in (1, 2):
            log(i, 1)
            runs[i].flush()
        print("logged", flush=True)
    elif line.strip() == "finish":
        for run in runs[1:]:
            run.finish()
        print("logged", *logged, flush=True)
        break
"""

SDK_CONNECTIONS = (
    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'engine-sdk'"
)


def _lines(proc: subprocess.Popen) -> queue.Queue:
    lines: queue.Queue = queue.Queue()

    def read() -> None:
        for line in proc.stdout:
            lines.put(line.strip())
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    return lines


def test_a_training_process_holds_at_most_one_connection_and_closes_it_when_idle(conn, database_url):
    env = {
        **os.environ,
        "ENGINE_DATABASE_URL": database_url,
        "ENGINE_FLUSH_INTERVAL": "0.05",
        "ENGINE_SDK_IDLE_TIMEOUT": "6",
    }
    with subprocess.Popen(
        [sys.executable, "-c", TRAINING],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        lines = _lines(proc)
        assert lines.get(timeout=60) == "busy"
        samples: list[list[int]] = []
        while True:  # sampled every 10 ms while the process logs from three threads, until it says it is done
            samples.append([pid for (pid,) in conn.execute(SDK_CONNECTIONS)])
            try:
                said = lines.get(timeout=0.01)
                break
            except queue.Empty:
                continue
        assert said == "idle", proc.stderr.read() if proc.poll() is not None else ""
        assert max(len(s) for s in samples) == 1
        # one connection all along: a process that keeps logging keeps it open
        assert len({pid for s in samples for pid in s}) == 1

        # quiet, with two runs still open: the connection closes after ENGINE_SDK_IDLE_TIMEOUT
        assert wait_for(lambda: not conn.execute(SDK_CONNECTIONS).fetchall(), timeout=30)
        proc.stdin.write("log\n")
        proc.stdin.flush()
        assert lines.get(timeout=60) == "logged"  # logged through a new connection...
        assert len(conn.execute(SDK_CONNECTIONS).fetchall()) <= 1
        assert wait_for(lambda: not conn.execute(SDK_CONNECTIONS).fetchall(), timeout=30)  # ...closed again

        proc.stdin.write("finish\n")
        proc.stdin.flush()
        final = lines.get(timeout=60).split()
        assert proc.wait(60) == 0, proc.stderr.read()
    logged = [int(n) for n in final[1:]]
    stored = dict(
        conn.execute(
            "SELECT r.run_id, count(p.*) FROM runs r LEFT JOIN metric_points p ON p.run_pk = r.id GROUP BY r.run_id"
        ).fetchall()
    )
    assert stored == {f"conn-{i}": logged[i] for i in range(3)}
    assert conn.execute("SELECT count(*) FROM runs WHERE state = 'finished'").fetchone()[0] == 3
    assert conn.execute("SELECT count(*) FROM artifact_versions").fetchone()[0] == 30


def test_the_sdk_connection_prepares_what_it_runs_again_unless_a_pooler_stands_between(
    conn, database_url, monkeypatch
):
    """On a connection of its own to the server, the statements of every run and flush are
    prepared (parsed and planned once). Through a pooler (PgBouncer in transaction mode) the
    next transaction may run on another server connection, where a prepared name is missing
    or is another client's statement: nothing is prepared there (the real PgBouncer:
    tests/acceptance/test_pgbouncer.py)."""
    set_env(monkeypatch, system_metrics_interval=0)

    def log_and_read(run_id: str) -> list[str]:
        with engine.init(project="acme/vision", id=run_id) as run:
            for i in range(20):
                run.log({"loss": float(i)})
                run.flush()
            run.log_artifact("data", type="dataset")
            with run._session.transport.connection() as c:
                assert c.execute("SHOW application_name").fetchone()[0] == "engine-sdk"
                prepared = [s for (s,) in c.execute("SELECT statement FROM pg_prepared_statements")]
        run._session.transport.drop()  # the next run opens a connection again
        return prepared

    prepared = log_and_read("prepared")
    assert any("The series a flush touched" in s for s in prepared), prepared  # upsert_series
    assert any("ingest_flush(" in s for s in prepared), prepared

    monkeypatch.setattr(db, "is_pooled", lambda _conn: True)
    assert log_and_read("pooled") == []
    assert conn.execute("SELECT count(*) FROM metric_points").fetchone()[0] == 40


def test_with_an_idle_timeout_of_zero_no_connection_stays_open(conn, database_url, monkeypatch):
    set_env(monkeypatch, system_metrics_interval=0, sdk_idle_timeout=0)
    with engine.init(project="acme/vision", id="zero") as run:
        run.log({"loss": 0.5})
        run.flush()
        # closed by the SDK; its server process leaves pg_stat_activity a moment later
        assert wait_for(lambda: not conn.execute(SDK_CONNECTIONS).fetchall())
        run.log({"loss": 0.25})
    assert conn.execute("SELECT count(*) FROM metric_points").fetchone()[0] == 2


def test_a_statement_prepared_before_a_migration_changed_its_result_is_tried_again_on_a_new_connection(
    conn, database_url, monkeypatch
):
    """A migration (another connection) that changes what a prepared statement returns makes
    the server refuse it on the SDK's connection ("cached plan must not change result type"):
    a retryable error, after which the session opens a new connection (whose statements are
    prepared anew)."""
    set_env(monkeypatch, system_metrics_interval=0)
    conn.execute("CREATE TABLE stale_plan (a integer)")
    conn.commit()
    with engine.init(project="acme/vision", id="stale") as run:
        transport = run._session.transport
        with pytest.raises(EngineError) as raised, transport.connection() as c:
            c.execute("SELECT * FROM stale_plan", prepare=True)
            conn.execute("ALTER TABLE stale_plan ADD COLUMN b integer")
            conn.commit()
            with db.boundary():
                c.execute("SELECT * FROM stale_plan", prepare=True)
        assert db.is_stale_plan(raised.value)
        assert db.is_transient(raised.value)
        assert transport._conn is None  # dropped: the next use opens a new connection
        run.log({"loss": 0.5})
    assert not db.is_stale_plan(EngineError("cached plan must not change result type"))
