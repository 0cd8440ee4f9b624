"""The embedded cluster's lifecycle, on real servers of its own (not the session cluster):
idempotent `up`, `status`, recovery after SIGKILL and from a stale pid file, `down` twice —
each in a folder the server's user can enter (the cluster stays in it) and in one only its
owner may enter (as root: the cluster's files go elsewhere, named by a marker) — and where a
cluster goes when its data dir is copied, moved or deleted.

One cluster per kind of folder (initdb is the slow part); every test starts from `up()` or
checks the state it needs, so the order of the tests does not matter."""

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
from engine.localdb import ELSEWHERE, SERVER_USER, LocalDatabase

AS_ROOT = os.geteuid() == 0


@pytest.fixture(scope="module", params=["open-folder", "closed-folder"])
def local(request: pytest.FixtureRequest) -> Iterator[LocalDatabase]:
    # The default (durable) configuration, as users get it: the SIGKILL test relies on
    # committed rows surviving the crash.
    folder = Path(tempfile.mkdtemp(prefix="engine-localdb-"))  # 0700, like a home folder
    if request.param == "open-folder":
        folder.chmod(0o755)  # the server's user may enter: the cluster stays in the data dir
    db = LocalDatabase(folder / "data")
    try:
        yield db
    finally:
        db.destroy()  # stops the server even when a test failed half-way
        shutil.rmtree(folder, ignore_errors=True)


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
    # the socket lives with the cluster's files (short path): no TCP port involved
    assert local.socket_dir == local.home / "run" == second.socket_dir
    assert second.home == local.home and second.url == local.url()
    with psycopg.connect(local.url()) as conn:
        assert conn.execute("SELECT current_database(), current_setting('listen_addresses')").fetchone() == (
            "engine",
            "",
        )


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
        assert conn.execute("SELECT note FROM survivor WHERE id = 1").fetchone() == (
            "committed before the crash",
        )


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


def test_the_files_stay_in_the_data_dir_unless_the_servers_user_cannot_enter_it(local: LocalDatabase) -> None:
    folder = local.data_dir.parent
    mode, owner = folder.stat().st_mode, folder.stat().st_uid
    st = local.up()
    closed = AS_ROOT and not mode & 0o001
    if closed:
        # the checkout-under-/root case: the files go where `postgres` can reach them, named by the marker
        assert st.home.parent == ELSEWHERE and st.elsewhere and st.server_user == SERVER_USER
        assert local.marker.read_text().splitlines()[0] == str(st.home)
        assert st.home.stat().st_uid == local.pgdata.stat().st_uid != 0
        assert not (local.data_dir / "pgdata").exists()
        assert f"cannot enter the data dir {local.data_dir}" in st.where()[0]
    else:
        assert st.home == local.data_dir and not st.elsewhere and not local.marker.exists()
        assert st.server_user == (SERVER_USER if AS_ROOT else None)
    assert (local.pgdata / "PG_VERSION").exists() and local.pgdata.is_relative_to(st.home)
    assert st.where()[1] == f"log:   {st.home / 'postgres.log'}"
    # nothing of the user's changed owner or mode
    assert (folder.stat().st_mode, folder.stat().st_uid) == (mode, owner)


def test_two_data_dirs_get_two_clusters_and_destroy_removes_all_of_each() -> None:
    folders = [Path(tempfile.mkdtemp(prefix="engine-two-")) for _ in range(2)]
    first, second = (LocalDatabase(f / ".engine", fast=True) for f in folders)
    try:
        a, b = first.up(), second.up()
        assert a.home != b.home and a.pid != b.pid and a.socket_dir != b.socket_dir
        with psycopg.connect(first.url(), autocommit=True) as conn:
            conn.execute("CREATE TABLE only_in_first (id int)")
        with psycopg.connect(second.url()) as conn:
            assert conn.execute("SELECT to_regclass('only_in_first')").fetchone() == (None,)
        first.destroy()
        assert not a.home.exists() and not first.data_dir.exists() and not first.status().running
        assert second.status().running
    finally:
        for db, folder in ((first, folders[0]), (second, folders[1])):
            db.destroy()
            shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.skipif(not AS_ROOT, reason="only as root are a cluster's files kept outside its data dir")
def test_a_copied_data_dir_is_told_apart_and_a_moved_or_deleted_one_finds_its_files() -> None:
    home_folder = Path(tempfile.mkdtemp(prefix="engine-moves-"))
    original = LocalDatabase(home_folder / "a" / ".engine", fast=True)
    moved = LocalDatabase(home_folder / "moved" / ".engine", fast=True)
    try:
        files = original.up().home
        assert files.parent == ELSEWHERE
        with psycopg.connect(original.url(), autocommit=True) as conn:
            conn.execute("CREATE TABLE survivor AS SELECT 'kept' AS note")
        assert original.down()

        # a copy of the data dir names the same files: refused, and destroying the copy keeps them
        shutil.copytree(original.data_dir.parent, home_folder / "copy")
        copy = LocalDatabase(home_folder / "copy" / ".engine")
        with pytest.raises(LocalDatabaseError, match=f"names the embedded database of {original.data_dir}"):
            copy.status()
        copy.destroy()
        assert not copy.data_dir.exists() and (files / "pgdata" / "PG_VERSION").exists()

        # a data dir deleted (its marker with it) and made again at the same place finds its
        # files again rather than losing them (`destroy` is the way to start afresh)
        shutil.rmtree(original.data_dir)
        assert not original.status().initialised
        assert original.up().home == files
        with psycopg.connect(original.url()) as conn:
            assert conn.execute("SELECT note FROM survivor").fetchone() == ("kept",)
        assert original.down()

        # a moved data dir keeps its cluster, which learns the new place
        original.data_dir.parent.rename(moved.data_dir.parent)
        st = moved.up()
        assert st.home == files and (files / "data-dir").read_text().strip() == str(moved.data_dir)
        with psycopg.connect(moved.url()) as conn:
            assert conn.execute("SELECT note FROM survivor").fetchone() == ("kept",)
    finally:
        for db in (original, moved):
            db.destroy()
        shutil.rmtree(home_folder, ignore_errors=True)


@pytest.mark.skipif(not AS_ROOT, reason="only as root are a cluster's files kept outside its data dir")
def test_when_no_place_is_reachable_the_error_says_how_to_fix_it(monkeypatch: pytest.MonkeyPatch) -> None:
    closed = Path(tempfile.mkdtemp(prefix="engine-nowhere-"))  # 0700: postgres can enter neither
    monkeypatch.setattr("engine.localdb.ELSEWHERE", closed / "elsewhere")
    db = LocalDatabase(closed / "project" / ".engine")
    try:
        with pytest.raises(LocalDatabaseError, match="must be able to enter every folder above") as raised:
            db.up()
        assert f"cannot keep the embedded database in {closed / 'elsewhere'}" in str(raised.value)
        assert "set ENGINE_DATA_DIR to a folder it can enter" in str(raised.value)
        assert not db.marker.exists() and not db.status().initialised
        assert list((closed / "elsewhere").iterdir()) == []  # nothing left half-made
    finally:
        db.destroy()
        shutil.rmtree(closed, ignore_errors=True)
