"""Shared by the SDK's integration tests (test_sdk_*.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from psycopg import sql

from engine.settings import get_settings


def set_env(monkeypatch: pytest.MonkeyPatch, **values: Any) -> None:
    """ENGINE_<NAME>=value for the rest of the test (before engine.init reads the settings)."""
    for name, value in values.items():
        monkeypatch.setenv(f"ENGINE_{name.upper()}", str(value))
    get_settings.cache_clear()


def events(conn, type_: str | None = None) -> list[dict]:
    rows = conn.execute(
        "SELECT id, type, author, project_id, run_pk, collection_id, version_id, registry_id,"
        " registry_collection_id, link_id, details, time"
        " FROM events WHERE %(type)s::text IS NULL OR type = %(type)s ORDER BY id",
        {"type": type_},
    ).fetchall()
    names = (
        "id",
        "type",
        "author",
        "project_id",
        "run_pk",
        "collection_id",
        "version_id",
        "registry_id",
        "registry_collection_id",
        "link_id",
        "details",
        "time",
    )
    return [dict(zip(names, r)) for r in rows]


def same_transaction(conn, table: str, column: str, value: Any, event_id: int) -> bool:
    """True when the row of `table` whose `column` is `value` was last written by the
    transaction of event `event_id` (a row's xmin is the low 32 bits of that xid8)."""
    statement = sql.SQL(
        "SELECT t.xmin::text::bigint = mod(e.xid::text::numeric, 4294967296)::bigint"
        " FROM {table} t, events e WHERE e.id = %s AND t.{column} = %s"
    ).format(table=sql.Identifier(table), column=sql.Identifier(column))
    rows = conn.execute(statement, (event_id, value)).fetchall()
    return bool(rows) and all(r[0] for r in rows)


def wait_for(check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll until `check()` is truthy; its last value (falsy after the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)
