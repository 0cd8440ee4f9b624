"""`engine keys create | list | revoke` in a subprocess, as an operator runs them."""

from __future__ import annotations

import json
import os
import subprocess

from engine import keys
from tests.acceptance.service_helpers import ENGINE


def engine(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ENGINE_DATABASE_URL": url}
    return subprocess.run([ENGINE, *args], env=env, capture_output=True, text=True, timeout=60, check=False)


def test_create_prints_the_key_once_alone_on_the_last_line_and_list_never_shows_it(conn, database_url):
    made = engine("keys", "create", "trainer", "--role", "ingest", "--scope", "acme/*", "--scope", "registry:model",
                  "--expires", "90d", url=database_url)  # fmt: skip
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert made.stdout == key + "\n" and keys.well_formed(key)  # stdout: the key alone (KEY=$(…))
    assert "shown only this once" in made.stderr and "role ingest" in made.stderr and key not in made.stderr
    assert keys.authenticate(conn, key).scopes == ("acme/*", "registry:model")

    for fmt in ("table", "json", "tsv"):
        listed = engine("keys", "list", "--format", fmt, url=database_url)
        assert listed.returncode == 0, listed.stderr
        assert "trainer" in listed.stdout and key not in listed.stdout + listed.stderr
        assert keys.digest(key) not in listed.stdout and key[: keys.PREFIX_LENGTH] not in listed.stdout
    (row,) = json.loads(engine("keys", "list", "--format", "json", url=database_url).stdout)
    assert row["role"] == "ingest" and row["scopes"] == ["acme/*", "registry:model"]
    assert row["expires_at"] is not None and row["revoked_at"] is None and row["last_used_at"] is None
    assert set(row) == {"name", "role", "scopes", "created_at", "last_used_at", "expires_at", "revoked_at"}

    revoked = engine("keys", "revoke", "trainer", url=database_url)
    assert revoked.returncode == 0 and "revoked trainer" in revoked.stdout
    assert "already revoked" in engine("keys", "revoke", "trainer", url=database_url).stdout
    (row,) = json.loads(engine("keys", "list", "--format", "json", url=database_url).stdout)
    assert row["revoked_at"] is not None


def test_bad_input_is_refused_with_the_reason_and_nothing_is_stored(conn, database_url):
    cases = [
        (["nobody", "--role", "root", "--scope", "*"], "role 'root'"),
        (["nobody", "--role", "read", "--scope", "acme"], "scope 'acme' is not a scope pattern"),
        (["nobody", "--role", "read", "--scope", "*", "--expires", "soon"], "not a duration"),
        (["no body", "--role", "read", "--scope", "*"], "key name 'no body'"),
    ]
    for args, reason in cases:
        result = engine("keys", "create", *args, url=database_url)
        assert result.returncode != 0 and reason in " ".join(result.stderr.split()), result.stderr
        assert "Traceback" not in result.stderr
    assert conn.execute("SELECT count(*) FROM api_keys").fetchone()[0] == 0
    missing = engine("keys", "revoke", "ghost", url=database_url)
    assert missing.returncode == 1 and "no API key named 'ghost'" in missing.stderr
    assert "no API keys" in engine("keys", "list", url=database_url).stdout
