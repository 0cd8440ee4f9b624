"""`engine demo` as `make demo` runs it, in a subprocess, here against a fresh test database
(ENGINE_DATABASE_URL) so that it needs no cluster of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg

ENGINE = Path(sys.executable).parent / "engine"


def _demo(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ENGINE_DATABASE_URL": database_url}
    return subprocess.run([str(ENGINE), "demo", *args], env=env, capture_output=True, text=True, timeout=120)


def test_demo_stores_a_finished_run_and_shows_it(database_url: str, conn: psycopg.Connection) -> None:
    first = _demo(database_url, "--steps", "10")
    assert first.returncode == 0, first.stderr
    assert "schema up to date" in first.stdout  # the test database is already migrated
    for table in ("runs", "metric_points", "events"):
        assert table in first.stdout

    second = _demo(database_url, "--steps", "10")  # running it twice works: a new run each time
    assert second.returncode == 0, second.stderr

    runs = conn.execute("SELECT id, state, exit_code FROM runs ORDER BY id").fetchall()
    assert [(state, code) for _, state, code in runs] == [("finished", 0), ("finished", 0)]
    run_pk = runs[0][0]
    counts = dict(conn.execute(
        "SELECT k.key, count(*) FROM metric_points m JOIN metric_keys k ON k.id = m.key_id"
        " WHERE m.run_pk = %s GROUP BY k.key", (run_pk,)
    ).fetchall())
    assert counts == {"loss": 10, "accuracy": 10}
    transitions = conn.execute(
        "SELECT details->>'from', details->>'to' FROM events WHERE run_pk = %s AND type = 'run_state' ORDER BY id", (run_pk,)
    ).fetchall()
    assert transitions == [(None, "running"), ("running", "finished")]
    # the per-series state the evaluator reads is written with the points
    tails = dict(conn.execute(
        "SELECT k.key, s.n_finite FROM series_state s JOIN metric_keys k ON k.id = s.key_id"
        " WHERE s.run_pk = %s AND k.key NOT LIKE 'system/%%'", (run_pk,)
    ).fetchall())
    assert tails == {"loss": 10, "accuracy": 10}
    # the demo samples system metrics every 0.2 s during its 0.5 s of "training"
    samples = conn.execute(
        "SELECT count(*) FROM system_metrics m JOIN metric_keys k ON k.id = m.key_id"
        " WHERE m.run_pk = %s AND k.key = 'system/cpu'", (run_pk,)
    ).fetchone()[0]
    assert samples >= 1
