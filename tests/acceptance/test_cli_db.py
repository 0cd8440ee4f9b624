"""`engine db up | status | url | migrate | down | destroy`, run in a subprocess as a user runs
them, against an embedded cluster of their own under a temporary ENGINE_DATA_DIR — in a folder
the server's user may enter, and in a home folder only its owner may enter (a checkout under
/root) — and `engine db status` diagnosing the database of ENGINE_DATABASE_URL without ever
showing its password."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from engine import db as enginedb
from engine.localdb import ELSEWHERE, MARKER, SERVER_USER, LocalDatabase

# The console script installed next to the interpreter running the tests (.venv/bin/engine).
ENGINE = Path(sys.executable).parent / "engine"
PASSWORD = "Sup3r-s3cret-pw"


@pytest.fixture
def data_dir() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="engine-cli-"))
    folder.chmod(0o755)  # a folder the server's user may enter: the cluster stays in the data dir
    try:
        yield folder / "data"
    finally:
        # Whatever the test did or where it failed, no server outlives it.
        LocalDatabase(folder / "data").destroy()
        folder.rmdir()


@pytest.fixture
def home() -> Iterator[Path]:
    """A home folder only its owner may enter (mkdtemp: 0700), like /root."""
    folder = Path(tempfile.mkdtemp(prefix="engine-home-"))
    try:
        yield folder
    finally:
        LocalDatabase(folder / "project" / ".engine").destroy()
        shutil.rmtree(folder)


def engine(data_dir: Path, *args: str, database_url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ENGINE_DATA_DIR": str(data_dir)}
    env.pop("ENGINE_DATABASE_URL", None)
    if database_url:
        env["ENGINE_DATABASE_URL"] = database_url
    return subprocess.run(
        [str(ENGINE), *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def _pid(out: str) -> int:
    m = re.search(r"running \(pid (\d+)\)", out)
    assert m, out
    return int(m.group(1))


@pytest.mark.slow
def test_db_commands_as_a_user_runs_them(data_dir: Path) -> None:
    st = engine(data_dir, "db", "status")
    assert st.returncode == 3, st
    assert "not initialised" in st.stdout

    up = engine(data_dir, "db", "up")
    assert up.returncode == 0, up.stderr
    pid = _pid(up.stdout)
    assert (data_dir / "pgdata" / "PG_VERSION").exists()

    again = engine(data_dir, "db", "up")
    assert again.returncode == 0, again.stderr
    assert _pid(again.stdout) == pid

    st = engine(data_dir, "db", "status")
    assert st.returncode == 1, st  # it runs, but cannot be used before the migrations
    assert _pid(st.stdout) == pid
    assert _files(st.stdout) == data_dir
    assert "✗ migrations applied: " in st.stdout and "fix: run `engine db migrate`" in st.stdout

    url = engine(data_dir, "db", "url")
    assert url.returncode == 0, url.stderr
    url_text = url.stdout.strip()
    assert url_text == LocalDatabase(data_dir).url()
    assert f"host={data_dir / 'run'}" in url_text  # a Unix socket inside the data dir

    migrated = engine(data_dir, "db", "migrate")
    assert migrated.returncode == 0, migrated.stderr
    names = [path.name for _, path in enginedb.migrations()]
    assert "applied: " + ", ".join(names) in " ".join(migrated.stdout.split())
    with psycopg.connect(url_text) as conn:
        recorded = [r[0] for r in conn.execute("SELECT name FROM schema_migrations ORDER BY version")]
        assert recorded == names
        assert conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'").fetchone() == (
            1,
        )

    again = engine(data_dir, "db", "migrate")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "schema up to date"
    st = engine(data_dir, "db", "status")
    assert st.returncode == 0, st
    assert f"✓ migrations applied: all {len(names)} migrations applied" in st.stdout

    down = engine(data_dir, "db", "down")
    assert (down.returncode, down.stdout.strip()) == (0, "stopped")
    st = engine(data_dir, "db", "status")
    assert st.returncode == 3
    assert "stopped" in st.stdout and _files(st.stdout) == data_dir

    down = engine(data_dir, "db", "down")
    assert (down.returncode, down.stdout.strip()) == (0, "was not running")


@pytest.mark.slow
def test_migrate_starts_the_embedded_database_when_needed(data_dir: Path) -> None:
    # A newcomer's first command may well be `engine db migrate`: it must not need `up` first.
    migrated = engine(data_dir, "db", "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout.startswith("applied: ")
    st = engine(data_dir, "db", "status")
    assert st.returncode == 0 and "running" in st.stdout


def _files(out: str) -> Path:
    m = re.search(r"^  files: (\S+)", out, re.MULTILINE)
    assert m, out
    return Path(m.group(1))


@pytest.mark.slow
def test_db_commands_from_a_home_folder_only_its_owner_may_enter(home: Path) -> None:
    """A checkout in a 0700 home folder (as root: /root, which `postgres` cannot enter): every
    command works, and nothing of the user's changes owner or mode."""
    data_dir = home / "project" / ".engine"
    before = home.stat()

    # several processes starting it at once (training jobs do) get one cluster
    starting = [
        subprocess.Popen(
            [str(ENGINE), "db", "up"],
            env={**os.environ, "ENGINE_DATA_DIR": str(data_dir)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [proc.communicate(timeout=120) for proc in starting]
    assert [proc.returncode for proc in starting] == [0, 0, 0], outputs
    assert len({_pid(out) for out, _ in outputs}) == 1
    pid = _pid(outputs[0][0])
    files = _files(outputs[0][0])

    if os.geteuid() == 0:
        # the server runs as `postgres`, which cannot enter the home folder: its files are kept
        # where it can reach them, and the data dir names that place
        assert files.parent == ELSEWHERE
        assert (data_dir / MARKER).read_text().splitlines()[0] == str(files)
        assert files.stat().st_uid == (files / "pgdata").stat().st_uid != 0
        assert f"the server's user `{SERVER_USER}` cannot enter the data dir {data_dir}" in outputs[0][0]
    else:
        assert files == data_dir and not (data_dir / MARKER).exists()  # the server runs as the user
    assert (files / "pgdata" / "PG_VERSION").exists()

    migrated = engine(data_dir, "db", "migrate")
    assert migrated.returncode == 0, migrated.stderr
    url = engine(data_dir, "db", "url").stdout.strip()
    assert url == LocalDatabase(data_dir).url() and f"host={files / 'run'}" in url
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE notes AS SELECT 'written before down' AS note")

    st = engine(data_dir, "db", "status")
    assert st.returncode == 0, st
    assert _pid(st.stdout) == pid and _files(st.stdout) == files
    assert f"  log:   {files / 'postgres.log'}" in st.stdout.splitlines()
    assert "✓ migrations applied" in st.stdout

    down = engine(data_dir, "db", "down")
    assert (down.returncode, down.stdout.strip()) == (0, "stopped")
    st = engine(data_dir, "db", "status")
    assert st.returncode == 3 and "stopped" in st.stdout and _files(st.stdout) == files

    up = engine(data_dir, "db", "up")
    assert up.returncode == 0, up.stderr
    assert _pid(up.stdout) != pid and _files(up.stdout) == files
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT note FROM notes").fetchone() == ("written before down",)

    assert (home.stat().st_mode, home.stat().st_uid, home.stat().st_gid) == (
        before.st_mode,
        before.st_uid,
        before.st_gid,
    )

    # destroy asks first (no terminal to answer: nothing is deleted), then deletes both places
    asked = engine(data_dir, "db", "destroy")
    assert asked.returncode == 1 and "Delete the embedded database and all its data" in asked.stdout
    assert (files / "pgdata" / "PG_VERSION").exists()
    destroyed = engine(data_dir, "db", "destroy", "--yes")
    assert destroyed.returncode == 0, destroyed.stderr
    assert str(files) in destroyed.stdout and not files.exists() and not data_dir.exists()
    st = engine(data_dir, "db", "status")
    assert st.returncode == 3 and "not initialised" in st.stdout


def _with_password(url: str) -> str:
    # The test cluster trusts local connections: the password is sent and ignored, as a real
    # server's would be checked; what matters here is where it is printed.
    return url.replace("postgresql://engine@", f"postgresql://engine:{PASSWORD}@", 1)


def test_status_checks_the_database_of_the_url_and_never_shows_its_password(
    database_url: str, data_dir: Path
) -> None:
    url = _with_password(database_url)
    st = engine(data_dir, "db", "status", database_url=url)
    assert st.returncode == 0, st
    assert PASSWORD not in st.stdout + st.stderr
    lines = st.stdout.splitlines()
    assert lines[0] == f"using ENGINE_DATABASE_URL={url.replace(PASSWORD, '***')}"
    assert lines[1].startswith("✓ database reachable: connected to postgresql://engine:***@")
    assert lines[2].startswith("✓ TimescaleDB installed and preloaded: TimescaleDB ")
    assert lines[3].startswith(f"✓ migrations applied: all {len(enginedb.migrations())} migrations applied")
    assert "engine db up" not in st.stdout  # the embedded database is not the one in use

    shown = engine(data_dir, "db", "url", database_url=url)
    assert shown.returncode == 0 and PASSWORD not in shown.stdout
    assert shown.stdout.strip() == database_url  # no password: psql asks for it
    assert "--show-password" in shown.stderr
    full = engine(data_dir, "db", "url", "--show-password", database_url=url)
    assert full.stdout.strip() == url


def test_status_of_a_url_that_does_not_answer_exits_3_without_the_password(data_dir: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql://engine:{PASSWORD}@127.0.0.1:{port}/engine?sslmode=disable&sslpassword={PASSWORD}x"
    up = engine(data_dir, "db", "up")  # an embedded database that exists, but is not the one in use
    assert up.returncode == 0, up.stderr
    st = engine(data_dir, "db", "status", database_url=url)
    assert st.returncode == 3, st
    assert PASSWORD not in st.stdout + st.stderr
    assert (
        f"using ENGINE_DATABASE_URL=postgresql://engine:***@127.0.0.1:{port}/engine?sslmode=disable&sslpassword=***"
        in st.stdout
    )
    assert "✗ database reachable: cannot connect to postgresql://engine:***@" in st.stdout
    assert "fix: start the server, or correct ENGINE_DATABASE_URL" in st.stdout
    assert (
        f"(the embedded database under {data_dir} runs; it is not used while ENGINE_DATABASE_URL is set)"
        in st.stdout
    )


def test_status_of_a_url_whose_schema_is_not_migrated_exits_1_with_the_fix(
    pg_cluster: LocalDatabase, data_dir: Path
) -> None:
    name = "t_status_unmigrated"
    with psycopg.connect(pg_cluster.url("postgres"), autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        st = engine(data_dir, "db", "status", database_url=_with_password(pg_cluster.url(name)))
        assert st.returncode == 1, st
        assert PASSWORD not in st.stdout + st.stderr
        assert "✓ database reachable" in st.stdout
        assert "✗ migrations applied: " in st.stdout and "fix: run `engine db migrate`" in st.stdout
    finally:
        with psycopg.connect(pg_cluster.url("postgres"), autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
