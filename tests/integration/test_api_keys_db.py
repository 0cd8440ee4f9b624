"""API keys in the database: only a hash is stored, refusals say why, last use is throttled,
and SQL's api_scope_covers agrees with keys.covers."""

from __future__ import annotations

from datetime import timedelta

import pytest
from psycopg.types.json import Jsonb

from engine import clock, keys
from engine.exceptions import KeyRefused, NotFound
from tests.unit.test_api_keys import COVERAGE


def test_only_the_hash_is_stored_and_the_key_authenticates(conn):
    key, stored = keys.create(conn, "trainer", role="ingest", scopes=["acme/*", "acme/*"])
    assert stored.scopes == ("acme/*",)
    rows = conn.execute("SELECT * FROM api_keys").fetchall()
    assert key not in repr(rows) and key[keys.PREFIX_LENGTH :] not in repr(rows)
    assert keys.authenticate(conn, key).name == "trainer"


def test_refusals_say_why_and_never_quote_the_key(conn):
    key, _ = keys.create(conn, "old", role="read", scopes=["*"], expires_in=timedelta(hours=1))
    other = keys.generate()
    for presented, reason in [
        ("nonsense", "malformed"),
        (other, "unknown"),
        (key[:-1] + ("A" if key[-1] != "A" else "B"), "unknown"),
    ]:
        with pytest.raises(KeyRefused, match=reason) as refused:
            keys.authenticate(conn, presented)
        assert presented not in str(refused.value)
    with clock.frozen(clock.now() + timedelta(hours=2)):
        with pytest.raises(KeyRefused, match="'old' expired"):
            keys.authenticate(conn, key)
    assert keys.revoke(conn, "old") is True
    assert keys.revoke(conn, "old") is False
    with pytest.raises(KeyRefused, match="'old' was revoked"):
        keys.authenticate(conn, key)
    with pytest.raises(NotFound, match="no API key named 'nope'"):
        keys.revoke(conn, "nope")


def test_names_are_unique_even_once_revoked(conn):
    keys.create(conn, "ci", role="admin", scopes=["*"])
    keys.revoke(conn, "ci")
    with pytest.raises(ValueError, match="exists already"):
        keys.create(conn, "ci", role="admin", scopes=["*"])


def test_last_use_is_written_at_most_once_a_minute(conn):
    key, _ = keys.create(conn, "busy", role="read", scopes=["*"])
    found = keys.authenticate(conn, key)
    keys.touch(conn, found)
    (first,) = conn.execute("SELECT last_used_at FROM api_keys").fetchone()
    assert first is not None
    keys.touch(conn, found)  # within the minute: this process does not write again
    with clock.frozen(first + timedelta(seconds=30)):
        conn.execute(keys.query("key_touch"), {"id": found.id, "now": clock.now()})  # nor another process
    assert conn.execute("SELECT last_used_at FROM api_keys").fetchone()[0] == first


@pytest.mark.parametrize(("patterns", "place", "covered"), COVERAGE)
def test_sql_scope_coverage_agrees_with_python(conn, patterns, place, covered):
    scope = {"project": None, "registry": None, place.kind: place.name}
    (answer,) = conn.execute("SELECT api_scope_covers(%s, %s)", (patterns, Jsonb(scope))).fetchone()
    assert answer is covered
