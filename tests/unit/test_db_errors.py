"""engine.db.translate(): each psycopg error a newcomer can meet becomes one EngineError whose
message says what is wrong and what to do. (The acceptance tests cause these errors for real;
this covers "TimescaleDB not installed", which cannot be caused on a machine that has it.)"""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors as pgerrors

from engine.db import translate
from engine.exceptions import DatabaseError, DatabaseUnavailable, ExtensionMissing, QueryTimeout, SchemaNotReady
from engine.settings import get_settings


def test_timescaledb_not_installed() -> None:
    # PostgreSQL 15's words when the extension's files are missing
    error = translate(pgerrors.FeatureNotSupported('extension "timescaledb" is not available'))
    assert isinstance(error, ExtensionMissing)
    assert "not installed" in str(error) and "scripts/setup" in str(error) and "ENGINE_DATABASE_URL" in str(error)


def test_timescaledb_not_preloaded() -> None:
    error = translate(pgerrors.InternalError_('extension "timescaledb" must be preloaded\nHINT:  Please preload ...'))
    assert isinstance(error, ExtensionMissing)
    assert "not preloaded" in str(error) and "shared_preload_libraries = 'timescaledb'" in str(error)
    assert "\n" not in str(error)  # one line, the server's long hint left out


def test_schema_missing() -> None:
    error = translate(pgerrors.UndefinedTable('relation "automation_history" does not exist'))
    assert isinstance(error, SchemaNotReady) and "engine db migrate" in str(error)


def test_timeout() -> None:
    assert isinstance(translate(pgerrors.QueryCanceled("canceling statement due to statement timeout")), QueryTimeout)


@pytest.mark.parametrize("configured", [True, False])
def test_unreachable_says_which_database(configured: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if configured:
        monkeypatch.setenv("ENGINE_DATABASE_URL", "postgresql://engine@db.internal/engine")
    get_settings.cache_clear()
    error = translate(psycopg.OperationalError("connection failed: Connection refused"))
    assert isinstance(error, DatabaseUnavailable) and "Connection refused" in str(error)
    if configured:
        assert "ENGINE_DATABASE_URL is set" in str(error) and "engine db up" not in str(error)
    else:
        assert "engine db up" in str(error)


def test_anything_else_keeps_its_first_line() -> None:
    error = translate(pgerrors.UniqueViolation("duplicate key value violates unique constraint\nDETAIL: x"))
    assert type(error) is DatabaseError and str(error) == "duplicate key value violates unique constraint"
