"""The database connections of `engine web`: one pool per process, opened by the app's
lifespan. Every route and the auth dependency get their connection here, so that moving to
the engine's own pool (engine/db.py) is a change of this module only.

Connections are in autocommit: each operation opens the transaction it needs (the SDK's
writer issues its own BEGIN/COMMIT around a COPY).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import psycopg
from psycopg_pool import ConnectionPool

from engine import db as enginedb
from engine.exceptions import DatabaseUnavailable
from engine.settings import Settings

APPLICATION_NAME = "engine-web"
CHECKOUT_TIMEOUT = 10.0  # seconds a request waits for a free connection before a 503

_pool: ConnectionPool | None = None


def open_pool(settings: Settings) -> ConnectionPool:
    """Open this process's pool (it connects in the background: a database that is down at
    start-up makes requests answer 503 until it is up, and /healthz says so)."""
    global _pool
    close_pool()
    _pool = ConnectionPool(
        enginedb.conninfo(settings=settings, application_name=APPLICATION_NAME),
        min_size=1,
        max_size=settings.web_pool_size,
        kwargs={"autocommit": True, "prepare_threshold": None},
        check=ConnectionPool.check_connection,  # a connection broken by a restart is replaced, not used
        timeout=CHECKOUT_TIMEOUT,
        name=APPLICATION_NAME,
        open=False,
    )
    _pool.open(wait=False)
    return _pool


def close_pool() -> None:
    global _pool
    if _pool is not None:
        _pool.close()
        _pool = None


@contextlib.contextmanager
def connect() -> Iterator[psycopg.Connection]:
    """A pooled connection for the block, errors translated."""
    if _pool is None:
        raise DatabaseUnavailable("the web server's connection pool is not open")
    with enginedb.boundary(), _pool.connection() as conn:
        yield conn


def connection() -> Iterator[psycopg.Connection]:
    """A FastAPI dependency: a pooled connection for the request, returned after it."""
    with connect() as conn:
        yield conn
