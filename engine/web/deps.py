"""The database connections of `engine web`: the process's pool (engine/db.py's Database,
as `engine serve` has), opened by the app's lifespan with one share, `web`, of
ENGINE_WEB_POOL_SIZE connections. Every route and the auth dependency get their connection
here.

Connections are in autocommit: each operation opens the transaction it needs (the SDK's
writer issues its own BEGIN/COMMIT around a COPY). They are opened when a request needs
one: while the database is down, requests answer 503 with its reason, and /healthz says so.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Annotated

import psycopg
from fastapi import Depends
from fastapi.concurrency import run_in_threadpool

from engine import db as enginedb
from engine.exceptions import DatabaseUnavailable
from engine.settings import Settings

APPLICATION_NAME = "engine-web"
SHARE = "web"
CHECKOUT_TIMEOUT = 10.0  # seconds a request waits for a free connection before a 503

_database: enginedb.Database | None = None
# Requests holding a connection, or about to take one, with the key check counted: as many as
# the pool has connections. The others wait here, on the event loop. Waiting in the thread
# pool instead let a burst of requests fill every thread with waiters while the requests that
# held the connections waited for a thread to run their route: nothing moved until the
# waiters gave up (503s for everyone).
_admission: asyncio.Semaphore | None = None


def open_pool(settings: Settings) -> enginedb.Database:
    """Open this process's pool (it connects on first use). Each worker process of
    `--workers N` opens its own, so the application_name is given here, not inherited."""
    global _database, _admission
    close_pool()
    _admission = asyncio.Semaphore(settings.web_pool_size)
    _database = enginedb.Database(
        settings=settings,
        shares={SHARE: settings.web_pool_size},
        application_name=APPLICATION_NAME,
        wait=CHECKOUT_TIMEOUT,
    )
    return _database


def close_pool() -> None:
    global _database
    if _database is not None:
        _database.close()
        _database = None


@contextlib.asynccontextmanager
async def admitted() -> AsyncIterator[None]:
    """A place among the requests that may hold one of the pool's connections, waited for on
    the event loop (a 503 after CHECKOUT_TIMEOUT, as a wait for a connection)."""
    if _admission is None or _database is None:
        raise DatabaseUnavailable("the web server's connection pool is not open")
    admission, database = _admission, _database
    try:
        await asyncio.wait_for(admission.acquire(), database.wait)
    except TimeoutError:
        raise database.none_free(SHARE) from None
    try:
        yield
    finally:
        admission.release()


@contextlib.contextmanager
def connect() -> Iterator[psycopg.Connection]:
    """A pooled connection for the block, errors translated."""
    if _database is None:
        raise DatabaseUnavailable("the web server's connection pool is not open")
    with _database.connection(SHARE) as conn:
        yield conn


async def connection() -> AsyncIterator[psycopg.Connection]:
    """A FastAPI dependency: a pooled connection for the request, returned after it.

    Taken and given back on the event loop when that needs no I/O (an idle connection used a
    moment ago; a request that left no transaction open): a synchronous dependency costs two
    trips through the thread pool per request, each a thread wake-up that a loaded machine
    makes wait for a time slice. Waiting for a free connection, pinging a stale one, opening
    one and rolling back go to the thread pool."""
    if _database is None:
        raise DatabaseUnavailable("the web server's connection pool is not open")
    database = _database
    async with admitted():
        conn = database.take_now(SHARE)
        if conn is None:
            conn = await run_in_threadpool(database.take, SHARE)
        try:
            with enginedb.boundary():
                yield conn
        finally:
            if conn.closed or conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
                database.give_back(conn, SHARE)
            else:
                await run_in_threadpool(database.give_back, conn, SHARE)


# A route parameter `conn: Conn` gets the request's connection. Declare it after the key
# (`principal: Annotated[Principal, access(...)]`): the access check borrows its own
# connection, and a request that already held one would wait for a second.
Conn = Annotated[psycopg.Connection, Depends(connection)]
