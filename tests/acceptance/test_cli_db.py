"""`engine db up | status | url | migrate | down`, run in a subprocess as a user runs them,
against an embedded cluster of their own under a temporary ENGINE_DATA_DIR."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from engine import db as enginedb
from engine.localdb import LocalDatabase

# The console script installed next to the interpreter running the tests (.venv/bin/engine).
ENGINE = Path(sys.executable).parent / "engine"


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Not tmp_path: as root the server runs as `postgres`, which cannot enter /tmp/pytest-of-root.
    folder = Path(tempfile.mkdtemp(prefix="engine-cli-"))
    folder.chmod(0o755)
    try:
        yield folder / "data"
    finally:
        # Whatever the test did or where it failed, no server outlives it.
        LocalDatabase(folder / "data").destroy()
        folder.rmdir()


def engine(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ENGINE_DATA_DIR": str(data_dir)}
    env.pop("ENGINE_DATABASE_URL", None)
    return subprocess.run([str(ENGINE), *args], env=env, capture_output=True, text=True, timeout=120)


def _pid(out: str) -> int:
    m = re.search(r"running \(pid (\d+)\)", out)
    assert m, out
    return int(m.group(1))


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
    assert st.returncode == 0, st
    assert _pid(st.stdout) == pid

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
        assert conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'").fetchone() == (1,)

    again = engine(data_dir, "db", "migrate")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "schema up to date"

    down = engine(data_dir, "db", "down")
    assert (down.returncode, down.stdout.strip()) == (0, "stopped")
    st = engine(data_dir, "db", "status")
    assert st.returncode == 3
    assert "stopped" in st.stdout

    down = engine(data_dir, "db", "down")
    assert (down.returncode, down.stdout.strip()) == (0, "was not running")


def test_migrate_starts_the_embedded_database_when_needed(data_dir: Path) -> None:
    # A newcomer's first command may well be `engine db migrate`: it must not need `up` first.
    migrated = engine(data_dir, "db", "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout.startswith("applied: ")
    st = engine(data_dir, "db", "status")
    assert st.returncode == 0 and "running" in st.stdout
