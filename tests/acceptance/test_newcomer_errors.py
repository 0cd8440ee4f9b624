"""The errors a newcomer hits first, as they see them: one line `error: <what> <fix>` on
stderr, exit code 1, and never a Python traceback. Each is caused for real (a closed port, a
database without migrations, a server without TimescaleDB preloaded, ...), not simulated."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from engine.localdb import LocalDatabase
from tests.team_deployment import TeamDatabase

ENGINE = Path(sys.executable).parent / "engine"
REPO = Path(__file__).resolve().parents[2]
NOWHERE = "postgresql://engine@127.0.0.1:1/engine"  # port 1: nothing listens, refused at once


def engine(
    *args: str, env: dict[str, str] | None = None, cwd: Path = REPO
) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [str(ENGINE), *args], env=full, cwd=cwd, capture_output=True, text=True, timeout=120
    )


def assert_one_line_error(done: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit 1, no traceback, and an `error:` line that holds every needle (the problem and its fix)."""
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr + done.stdout
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, done.stderr
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


@pytest.mark.parametrize(
    "command",
    [["rules", "apply", "rules"], ["history"], ["serve"], ["db", "migrate"], ["explain", "1"]],
    ids=" ".join,
)
def test_no_database_reachable(command: list[str]) -> None:
    done = engine(*command, env={"ENGINE_DATABASE_URL": NOWHERE})
    line = assert_one_line_error(
        done, "no database reachable", "Connection refused", "ENGINE_DATABASE_URL is set", "engine doctor"
    )
    assert "unset" not in line  # on a training node that would split the data into a private database


@pytest.fixture(scope="module")
def team_db() -> Iterator[TeamDatabase]:
    """A server as a team runs one: TCP with passwords, a role that is not a superuser, and
    room for two of its connections (5 minus the 3 kept for superusers)."""
    with TeamDatabase(max_connections=5) as database:
        database.login("trainer", "right-password")
        yield database


def test_wrong_password_says_so_and_never_shows_it(team_db: TeamDatabase) -> None:
    done = engine("history", env={"ENGINE_DATABASE_URL": team_db.url("trainer", "wrong-secret")})
    line = assert_one_line_error(
        done, "refused the credentials", "password authentication failed", "user name and password"
    )
    assert "unset" not in line and "wrong-secret" not in done.stderr + done.stdout


def test_missing_database_says_create_it(team_db: TeamDatabase) -> None:
    url = team_db.url("trainer", "right-password").rsplit("/", 1)[0] + "/nosuchdb"
    done = engine("history", env={"ENGINE_DATABASE_URL": url})
    line = assert_one_line_error(done, "does not exist", "createdb", "engine db migrate")
    assert "unset" not in line


def test_full_server_says_capacity(team_db: TeamDatabase) -> None:
    url = team_db.url("trainer", "right-password")
    held = [psycopg.connect(url) for _ in range(2)]  # every slot a non-superuser may take
    try:
        done = engine("history", env={"ENGINE_DATABASE_URL": url})
    finally:
        for conn in held:
            conn.close()
    line = assert_one_line_error(done, "out of capacity", "max_connections", "PgBouncer")
    assert "unset" not in line


@pytest.fixture
def unmigrated_url(empty_database_url: str) -> str:
    """A database of the test cluster on which `engine db migrate` never ran."""
    return empty_database_url


@pytest.mark.parametrize(
    "command",
    [
        ["rules", "apply", "rules"],
        ["history"],
        ["deliveries"],
        ["serve"],
        ["explain", "1"],
        ["actions", "test", "x"],
    ],
    ids=" ".join,
)
def test_migrations_not_applied(unmigrated_url: str, command: list[str]) -> None:
    done = engine(*command, env={"ENGINE_DATABASE_URL": unmigrated_url})
    assert_one_line_error(done, "run `engine db migrate`")


def test_migrations_not_applied_then_migrate_fixes_it(unmigrated_url: str) -> None:
    env = {"ENGINE_DATABASE_URL": unmigrated_url}
    assert_one_line_error(engine("rules", "list", env=env), "migrations not applied", "0001_core.sql")
    assert engine("db", "migrate", env=env).returncode == 0
    fixed = engine("rules", "list", env=env)
    assert fixed.returncode == 0 and "no automations" in fixed.stdout


@pytest.fixture(scope="module")
def unpreloaded_url() -> Iterator[str]:
    """A throwaway PostgreSQL with TimescaleDB installed but not in shared_preload_libraries."""
    # Not tmp_path: as root the server runs as `postgres`, which cannot enter /tmp/pytest-of-root.
    folder = Path(tempfile.mkdtemp(prefix="engine-nopreload-"))
    folder.chmod(0o755)
    cluster = LocalDatabase(folder / "data", fast=True, extra_conf={"shared_preload_libraries": "''"})
    try:
        cluster.up()
        yield cluster.url()
    finally:
        cluster.destroy()
        folder.rmdir()


def test_timescaledb_not_preloaded(unpreloaded_url: str) -> None:
    done = engine("db", "migrate", env={"ENGINE_DATABASE_URL": unpreloaded_url})
    assert_one_line_error(
        done,
        "TimescaleDB is installed but not preloaded",
        "shared_preload_libraries = 'timescaledb'",
        "restart PostgreSQL",
    )


def test_rule_file_not_found(tmp_path: Path) -> None:
    done = engine("rules", "validate", "rules/no-such-rule.yaml")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "rules/no-such-rule.yaml: rule file not found" in done.stderr
    # no path, run from a folder without rules/: the default folder is relative to where you are
    elsewhere = engine("rules", "validate", cwd=tmp_path)
    assert_one_line_error(
        elsewhere, "default folder rules/ does not exist", str(tmp_path), "ENGINE_RULES_PATH"
    )
    assert_one_line_error(engine("rules", "compile", cwd=tmp_path), "ENGINE_RULES_PATH")


PRIVATE_RULE = """\
name: private-hook
scope: {project: acme/vision}
event: {type: run_state, states: [failed]}
action: {type: webhook, url: "http://127.0.0.1:9/hook"}
"""


def test_webhook_refused_as_private(database_url: str, tmp_path: Path) -> None:
    rule = tmp_path / "private.yaml"
    rule.write_text(PRIVATE_RULE)
    env = {**os.environ, "ENGINE_DATABASE_URL": database_url}
    env.pop("ENGINE_WEBHOOK_ALLOW_HOSTS", None)  # the fixture allows 127.0.0.1; a newcomer has not
    applied = subprocess.run(
        [str(ENGINE), "rules", "apply", str(rule)], env=env, capture_output=True, text=True, timeout=120
    )
    assert applied.returncode == 0, applied.stderr
    done = subprocess.run(
        [str(ENGINE), "actions", "test", "private-hook"],
        env={**env, "COLUMNS": "300"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr + done.stdout
    line = next(line for line in done.stdout.splitlines() if "error:" in line)
    assert "127.0.0.1" in line and "private address" in line and "ENGINE_WEBHOOK_ALLOW_HOSTS" in line
    # with the host allowed, the same request goes out (and finds nothing listening on port 9)
    allowed = subprocess.run(
        [str(ENGINE), "actions", "test", "private-hook"],
        env={**env, "COLUMNS": "300", "ENGINE_WEBHOOK_ALLOW_HOSTS": "127.0.0.1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "private address" not in allowed.stdout and "Traceback" not in allowed.stderr


def test_unreadable_since_is_a_usage_error(database_url: str) -> None:
    for command in (
        ["history", "--since", "last tuesday"],
        ["rules", "test", "rules", "--since", "2024-13-01"],
    ):
        done = engine(*command, env={"ENGINE_DATABASE_URL": database_url})
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert "--since" in done.stderr and "try one of: 7d, 24h, today, yesterday" in " ".join(
            done.stderr.split()
        )
