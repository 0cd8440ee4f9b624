"""engine.db.translate(): each psycopg error a newcomer can meet becomes one EngineError whose
message says what is wrong and what to do. (The acceptance tests cause these errors for real;
this covers "TimescaleDB not installed", which cannot be caused on a machine that has it.)"""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors as pgerrors

from engine.db import translate
from engine.exceptions import (
    DatabaseAuthFailed,
    DatabaseBusy,
    DatabaseError,
    DatabaseUnavailable,
    ExtensionMissing,
    QueryTimeout,
    SchemaNotReady,
)
from engine.settings import get_settings


def test_timescaledb_not_installed() -> None:
    # PostgreSQL 15's words when the extension's files are missing
    error = translate(pgerrors.FeatureNotSupported('extension "timescaledb" is not available'))
    assert isinstance(error, ExtensionMissing)
    assert (
        "not installed" in str(error)
        and "scripts/setup" in str(error)
        and "ENGINE_DATABASE_URL" in str(error)
    )


def test_timescaledb_not_preloaded() -> None:
    error = translate(
        pgerrors.InternalError_('extension "timescaledb" must be preloaded\nHINT:  Please preload ...')
    )
    assert isinstance(error, ExtensionMissing)
    assert "not preloaded" in str(error) and "shared_preload_libraries = 'timescaledb'" in str(error)
    assert "\n" not in str(error)  # one line, the server's long hint left out


def test_schema_missing() -> None:
    error = translate(pgerrors.UndefinedTable('relation "automation_history" does not exist'))
    assert isinstance(error, SchemaNotReady) and "engine db migrate" in str(error)


def test_timeout() -> None:
    assert isinstance(
        translate(pgerrors.QueryCanceled("canceling statement due to statement timeout")), QueryTimeout
    )


@pytest.mark.parametrize("configured", [True, False])
def test_unreachable_says_which_database(configured: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if configured:
        monkeypatch.setenv("ENGINE_DATABASE_URL", "postgresql://engine@db.internal/engine")
    get_settings.cache_clear()
    error = translate(psycopg.OperationalError("connection failed: Connection refused"))
    assert isinstance(error, DatabaseUnavailable) and "Connection refused" in str(error)
    if configured:
        assert "ENGINE_DATABASE_URL is set" in str(error) and "engine db up" not in str(error)
        assert "unset" not in str(error)
    else:
        assert "engine db up" in str(error)


def test_anything_else_keeps_its_first_line() -> None:
    error = translate(pgerrors.UniqueViolation("duplicate key value violates unique constraint\nDETAIL: x"))
    assert type(error) is DatabaseError and str(error) == "duplicate key value violates unique constraint"


# libpq reports a refused connection without a SQLSTATE: these are the server's own words
# (PostgreSQL 15 and PgBouncer 1.18), as the acceptance tests meet them for real.
@pytest.mark.parametrize(
    ("message", "kind", "advice"),
    [
        (
            'connection failed: FATAL:  password authentication failed for user "bob"',
            DatabaseAuthFailed,
            "user name and password",
        ),
        (
            'connection failed: FATAL:  no pg_hba.conf entry for host "10.0.0.1", user "bob"',
            DatabaseAuthFailed,
            "pg_hba.conf",
        ),
        (
            'connection failed: FATAL:  role "bob" does not exist',
            DatabaseAuthFailed,
            "user name and password",
        ),
        ('connection failed: FATAL:  database "nope" does not exist', SchemaNotReady, "createdb"),
        ("connection failed: FATAL:  sorry, too many clients already", DatabaseBusy, "PgBouncer"),
        (
            "connection failed: FATAL:  remaining connection slots are reserved for non-replication superuser connections",
            DatabaseBusy,
            "max_connections",
        ),
        (
            "connection failed: ERROR:  no more connections allowed (max_client_conn)",
            DatabaseBusy,
            "max_connections",
        ),
        ('connection failed: FATAL:  too many connections for role "bob"', DatabaseBusy, "max_connections"),
        ('connection failed: FATAL:  role "bob" is not permitted to log in', DatabaseAuthFailed, "user name"),
        ("connection failed: ERROR:  no such database: nope", SchemaNotReady, "createdb"),
        ("connection failed: FATAL:  the database system is starting up", DatabaseUnavailable, "reaches it"),
        ("connection failed: timeout expired", DatabaseUnavailable, "reaches it"),
    ],
)
def test_each_refusal_gets_its_own_advice(
    message: str, kind: type, advice: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENGINE_DATABASE_URL", "postgresql://bob@db.internal/engine")
    get_settings.cache_clear()
    error = translate(psycopg.OperationalError(message))
    assert type(error) is kind and advice in str(error), str(error)
    assert "unset" not in str(error)


def test_capacity_is_transient_and_credentials_are_not() -> None:
    # retry loops catch DatabaseUnavailable: a full server is waited for, a wrong password is not
    assert issubclass(DatabaseBusy, DatabaseUnavailable)
    assert not issubclass(DatabaseAuthFailed, DatabaseUnavailable)
    assert isinstance(translate(pgerrors.TooManyConnections("sorry, too many clients already")), DatabaseBusy)
    assert isinstance(
        translate(pgerrors.InvalidPassword("password authentication failed")), DatabaseAuthFailed
    )
