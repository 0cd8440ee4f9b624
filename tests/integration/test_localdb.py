"""The embedded cluster's lifecycle, on real servers of its own (not the session cluster):
idempotent `up`, `status`, recovery after SIGKILL and from a stale pid file, `down` twice.

One cluster per module (initdb is the slow part); every test starts from `up()` or checks
the state it needs, so the order of the tests does not matter."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from engine.exceptions import LocalDatabaseError
from engine.localdb import LocalDatabase


def _new_cluster_dir(prefix: str) -> Path:
    # Not tmp_path: as root the server runs as `postgres`, which cannot enter
    # /tmp/pytest-of-root (0700). Same reason as in tests/conftest.py.
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    folder.chmod(0o755)
    return folder


@pytest.fixture(scope="module")
def local() -> Iterator[LocalDatabase]:
    # The default (durable) configuration, as users get it: the SIGKILL test relies on
    # committed rows surviving the crash.
    db = LocalDatabase(_new_cluster_dir("engine-localdb-"))
    try:
        yield db
    finally:
        db.destroy()  # stops the server even when a test failed half-way


def _wait_stopped(db: LocalDatabase, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while db.status().running:
        assert time.monotonic() < deadline, f"still running after {timeout}s: {db.status().describe()}"
        time.sleep(0.05)


def _dead_pid() -> int:
    """A pid that belongs to no process (a child that has already been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    with pytest.raises(ProcessLookupError):
        os.kill(proc.pid, 0)
    return proc.pid


def test_status_of_an_empty_folder_is_not_initialised(tmp_path: Path) -> None:
    st = LocalDatabase(tmp_path / "nothing-here").status()
    assert (st.initialised, st.running, st.pid) == (False, False, None)
    assert st.describe().startswith("not initialised")


def test_up_twice_is_harmless(local: LocalDatabase) -> None:
    first = local.up()
    second = local.up()
    assert first.running and second.running
    assert first.pid == second.pid
    assert second.describe().startswith(f"running (pid {first.pid})")
    # the socket lives inside the data dir (short path): no TCP port involved
    assert local.socket_dir == local.data_dir / "run"
    with psycopg.connect(local.url()) as conn:
        assert conn.execute("SELECT current_database(), current_setting('listen_addresses')").fetchone() == ("engine", "")


def test_status_reports_running_then_stopped_and_down_twice_says_so(local: LocalDatabase) -> None:
    pid = local.up().pid
    st = local.status()
    assert st.running and st.pid == pid

    assert local.down() is True
    st = local.status()
    assert (st.initialised, st.running, st.pid) == (True, False, None)
    assert st.describe().startswith("stopped")
    assert not (local.pgdata / "postmaster.pid").exists()

    # stopping a stopped cluster reports that nothing was running
    assert local.down() is False


def test_up_recovers_after_sigkill_and_keeps_the_data(local: LocalDatabase) -> None:
    pid = local.up().pid
    assert pid is not None
    with psycopg.connect(local.url(), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS survivor")
        conn.execute("CREATE TABLE survivor (id int PRIMARY KEY, note text)")
        conn.execute("INSERT INTO survivor VALUES (1, 'committed before the crash')")

    os.kill(pid, signal.SIGKILL)
    _wait_stopped(local)
    st = local.status()
    assert st.describe().startswith("stopped")
    # the crash left its pid file behind: that is what `up` must cope with
    assert (local.pgdata / "postmaster.pid").exists()

    again = local.up()
    assert again.running and again.pid != pid
    with psycopg.connect(local.url()) as conn:
        assert conn.execute("SELECT note FROM survivor WHERE id = 1").fetchone() == ("committed before the crash",)


def test_up_recovers_from_a_stale_pid_file(local: LocalDatabase) -> None:
    local.up()
    pidfile = local.pgdata / "postmaster.pid"
    lines = pidfile.read_text().splitlines(keepends=True)
    assert local.down() is True

    # The pid file of a server that died without cleaning up, pointing at a dead process.
    dead = _dead_pid()
    pidfile.write_text(f"{dead}\n" + "".join(lines[1:]))
    st = local.status()
    assert not st.running and st.describe().startswith("stopped")

    started = local.up()
    assert started.running and started.pid != dead
    with psycopg.connect(local.url()) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_timescaledb_is_preloaded(local: LocalDatabase) -> None:
    local.up()
    with psycopg.connect(local.url()) as conn:
        assert "timescaledb" in conn.execute("SHOW shared_preload_libraries").fetchone()[0]


@pytest.mark.skipif(os.geteuid() != 0, reason="only as root does the server run as another user (postgres)")
def test_unreachable_data_dir_says_how_to_fix_it() -> None:
    closed = Path(tempfile.mkdtemp(prefix="engine-closed-"))  # 0700: postgres cannot enter
    try:
        with pytest.raises(LocalDatabaseError, match="must be able to enter every folder above"):
            LocalDatabase(closed / "data").up()
    finally:
        LocalDatabase(closed / "data").destroy()
        shutil.rmtree(closed, ignore_errors=True)
