"""Every connection says which part of the engine opened it (pg_stat_activity.application_name):
`engine-cli` for a command, `engine-serve` for the service (the SDK's `engine-sdk` is checked
in tests/integration/test_sdk_connections.py)."""

from __future__ import annotations

import os
import subprocess

import psycopg

from tests.acceptance.service_helpers import ENGINE, ServeProcess, wait_until

OTHERS = (
    "SELECT application_name, wait_event_type FROM pg_stat_activity"
    " WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
)


def test_a_cli_command_connects_as_engine_cli(conn, database_url):
    with subprocess.Popen(
        [ENGINE, "history"],
        env={**os.environ, "ENGINE_DATABASE_URL": database_url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        # the test holds a lock that `engine history` waits for, so that its connection is seen
        # (pg_stat_activity is read on another connection: a transaction sees one snapshot of it)
        with psycopg.connect(database_url, application_name="engine-test-lock") as lock:
            lock.execute("LOCK TABLE triggers IN ACCESS EXCLUSIVE MODE")
            assert wait_until(lambda: ("engine-cli", "Lock") in conn.execute(OTHERS).fetchall(), timeout=60)
            assert {name for name, _ in conn.execute(OTHERS)} == {"engine-cli", "engine-test-lock"}
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr


def test_the_service_connects_as_engine_serve(conn, database_url, tmp_path):
    service = ServeProcess(database_url, tmp_path / "serve.log").start()
    try:
        # running: its LISTEN connection is up (SIGTERM before that would find no handler yet)
        listening = OTHERS + " AND application_name = 'engine-serve' AND query LIKE 'LISTEN%'"
        assert wait_until(lambda: conn.execute(listening).fetchall(), timeout=60)
        names = conn.execute(OTHERS).fetchall()
        assert {name for name, _ in names} == {"engine-serve"}, names
        assert service.terminate() == 0, (tmp_path / "serve.log").read_text()
    finally:
        service.stop_quietly()
