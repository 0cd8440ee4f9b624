"""One SDK session per process and database: ONE connection, and the writer.

Opening a connection costs milliseconds, which a script that starts hundreds of short runs
(sweeps, importers, the benchmark) would pay every time; so runs and `Api` calls share a
session, counted by `acquire`/`release`, and an unused session lingers a few seconds before
it closes. The session's `Transport` holds at most one connection, for run states,
artifacts and the writer's flushes alike (a flush and a state change take turns): a hundred
training jobs cost a hundred connections at most, and a job that logs rarely holds none
between its flushes, since the connection closes after ENGINE_SDK_IDLE_TIMEOUT seconds
unused. Nothing relies on session state across transactions (no SET, LISTEN or session
locks), so the connection may go through PgBouncer in transaction mode; the statements it
runs again are prepared only on a connection that is the server's own (`db.is_pooled`).

With ENGINE_URL set, the session is an `HttpSession` instead: the same writer over the HTTP
transport (http_transport.py), keep-alive connections to `engine web`, and no database
connection at all.

The first connection to the embedded database migrates it when migrations are pending (a
user runs `import engine; engine.init(...)` with no setup); an external database must already
be migrated (`engine db migrate`), else SchemaNotReady says so.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import psycopg

from engine import db
from engine.exceptions import EngineError
from engine.sdk.buffer import Writer
from engine.sdk.flush import DatabaseTransport
from engine.settings import Settings, get_settings

if TYPE_CHECKING:
    from engine.sdk.http_transport import Remote

log = logging.getLogger(__name__)

LINGER_SECONDS = 5.0
APPLICATION_NAME = "engine-sdk"

_registry: dict[Settings, Session | HttpSession] = {}
_registry_lock = threading.Lock()


class Transport:
    """The session's one connection: opened on first use, replaced when broken, closed once
    unused for `idle_timeout` seconds (the writer thread calls `close_if_idle`)."""

    def __init__(self, url: str, settings: Settings, *, on_open: Callable[[psycopg.Connection], None]):
        self.url = url
        self.settings = settings
        self.idle_timeout = settings.sdk_idle_timeout
        self._on_open = on_open
        self._lock = threading.RLock()  # one user of the connection at a time
        self._conn: psycopg.Connection | None = None
        self._last_used = 0.0
        self._schema_checked = False

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """The connection, for this thread only while the block runs (EngineError when none
        can be opened)."""
        with self._lock:
            conn = self._conn
            if conn is None or conn.closed or conn.broken:
                self.drop()
                conn = self._conn = self._open()
            stale = False
            try:
                yield conn
            except BaseException as exc:
                stale = db.is_stale_plan(exc)  # its prepared statements are out of date
                raise
            finally:
                self._last_used = time.monotonic()
                if stale or conn.closed or conn.broken or self.idle_timeout == 0:
                    self.drop()

    def _open(self) -> psycopg.Connection:
        conn = db.connect(
            self.url, autocommit=True, settings=self.settings, application_name=APPLICATION_NAME
        )
        try:
            if not self._schema_checked:
                if self.settings.database_url is None:
                    if db.pending_migrations(conn):
                        db.migrate(conn)
                else:
                    db.ensure_schema(conn)
                self._schema_checked = True
            self._on_open(conn)
            db.prepare_when_direct(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def close_if_idle(self) -> float | None:
        """Close the connection once unused for `idle_timeout` seconds. Returns the seconds
        left before that, or None when no connection is open."""
        if not self._lock.acquire(blocking=False):
            return self.idle_timeout  # in use right now
        try:
            if self._conn is None:
                return None
            left = self._last_used + self.idle_timeout - time.monotonic()
            if left > 0:
                return left
            self.drop()
            return None
        finally:
            self._lock.release()

    def drop(self) -> None:
        """Close the connection (the next use opens a new one)."""
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                with contextlib.suppress(EngineError), db.boundary():
                    conn.close()


class Session:
    remote: Remote | None = None  # the API's calls, when the session talks to ENGINE_URL

    def __init__(self, settings: Settings):
        self.settings = settings
        self.url = db.database_url(settings)
        self.pid = os.getpid()
        self.refs = 0
        self.closed = False
        self.idle_since = 0.0
        self.reaper: threading.Timer | None = None
        self.transport = Transport(self.url, settings, on_open=DatabaseTransport.prepare_connection)
        self.writer = Writer(DatabaseTransport(self.transport, settings.series_tail), settings)
        self.writer.start()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[psycopg.Connection]:
        """The connection inside one transaction, translated errors at the boundary."""
        with self.transport.connection() as conn, db.transaction(conn):
            yield conn

    def one(self, name: str, params: dict[str, Any]) -> dict[str, Any] | None:
        """One named statement on its own (atomic without BEGIN/COMMIT round trips); its
        first row."""
        with self.transport.connection() as conn:
            return db.one(conn, name, params)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.writer.stop()
        self.transport.drop()


class HttpSession:
    """A session whose runs and calls go to ENGINE_URL (`engine web`): one HTTP client with
    keep-alive connections, and the same writer over the HTTP transport."""

    def __init__(self, settings: Settings):
        from engine.sdk.http_transport import Client, HttpTransport, Remote

        self.settings = settings
        self.pid = os.getpid()
        self.refs = 0
        self.closed = False
        self.idle_since = 0.0
        self.reaper: threading.Timer | None = None
        self.client = Client(settings)
        transport = HttpTransport(self.client)
        self.remote: Remote | None = Remote(self.client, transport)
        # a log request carries one run: batches of one run, so that a run's flush never waits
        # for the requests of every other run of the process (buffer.py)
        self.writer = Writer(transport, settings, runs_per_batch=1)
        self.writer.start()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.writer.stop()
        self.client.close()


def acquire(settings: Settings | None = None) -> Any:
    """The session for the current settings (and so database, or ENGINE_URL), opened on first
    use: a Session, or an HttpSession when ENGINE_URL is set (it wins over ENGINE_DATABASE_URL)."""
    settings = settings or get_settings()
    with _registry_lock:
        session = _registry.get(settings)
        if session is None or session.closed or session.pid != os.getpid():
            # a session inherited through fork() shares its sockets with the parent: new one
            session = HttpSession(settings) if settings.url else Session(settings)
            _registry[settings] = session
        session.refs += 1
        return session


def release(session: Session) -> None:
    """Give a session back; once unused for LINGER_SECONDS it closes."""
    with _registry_lock:
        session.refs -= 1
        if session.refs > 0:
            return
        session.idle_since = time.monotonic()
        if session.reaper is None:
            _schedule_close(session, LINGER_SECONDS)


@contextlib.contextmanager
def using(settings: Settings | None = None) -> Iterator[Session]:
    session = acquire(settings)
    try:
        yield session
    finally:
        release(session)


def _schedule_close(session: Session, delay: float) -> None:
    # one timer per idle session, not one per release (a sweep releases hundreds of times)
    session.reaper = threading.Timer(delay, _close_if_idle, (session,))
    session.reaper.daemon = True
    session.reaper.start()


def _close_if_idle(session: Session) -> None:
    with _registry_lock:
        session.reaper = None
        if session.refs or session.closed:
            return
        idle = time.monotonic() - session.idle_since
        if idle < LINGER_SECONDS:
            _schedule_close(session, LINGER_SECONDS - idle)
            return
        if _registry.get(session.settings) is session:
            del _registry[session.settings]
    session.close()


def close_all() -> None:
    """Close every session of this process (at exit; tests)."""
    with _registry_lock:
        sessions = [s for s in _registry.values() if s.pid == os.getpid()]
        _registry.clear()
    for session in sessions:
        try:
            session.close()
        except Exception:  # at exit, a dead database must not turn into a traceback
            log.debug("closing an SDK session failed", exc_info=True)


atexit.register(close_all)
