"""One SDK session per process and database: two connections and the writer.

Opening a connection costs milliseconds, which a script that starts hundreds of short runs
(sweeps, importers, the benchmark) would pay every time; so runs and `Api` calls share a
session, counted by `acquire`/`release`, and an unused session lingers a few seconds before
it closes. The *control* connection carries run states and artifacts (the caller's thread);
the writer has its own for the flushes, so that a flush never waits behind a run's change.

The first session on the embedded database migrates it when migrations are pending (a user
runs `import engine; engine.init(...)` with no setup); an external database must already be
migrated (`engine db migrate`), else SchemaNotReady says so.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg

from engine import db
from engine.sdk.writer import Writer
from engine.settings import Settings, get_settings

log = logging.getLogger(__name__)

LINGER_SECONDS = 5.0

_registry: dict[Settings, Session] = {}
_registry_lock = threading.Lock()


class Session:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.url = db.database_url(settings)
        self.pid = os.getpid()
        self.refs = 0
        self.closed = False
        self.idle_since = 0.0
        self.reaper: threading.Timer | None = None
        self._control_lock = threading.RLock()
        self._control = self._connect()
        try:
            if settings.database_url is None:
                if db.pending_migrations(self._control):
                    db.migrate(self._control)
            else:
                db.ensure_schema(self._control)
        except BaseException:
            self._control.close()
            raise
        self.writer = Writer(self._connect, settings)
        self.writer.start()

    def _connect(self) -> psycopg.Connection:
        return db.connect(self.url, autocommit=True)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[psycopg.Connection]:
        """The control connection inside one transaction, translated errors at the boundary.
        A broken connection is replaced at the next call."""
        with self._control_lock:
            conn = self._control_connection()
            with db.boundary(), conn.transaction():
                yield conn

    def execute(self, statement: str, params: dict[str, Any]) -> tuple | None:
        """One statement on its own (atomic without BEGIN/COMMIT round trips); its first row."""
        with self._control_lock:
            conn = self._control_connection()
            with db.boundary():
                return conn.execute(statement, params).fetchone()

    def _control_connection(self) -> psycopg.Connection:
        # after the server went away the connection is broken: replace it on the next call
        if self._control.closed or self._control.broken:
            self._control.close()
            self._control = self._connect()
        return self._control

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.writer.stop()
        with self._control_lock:
            self._control.close()


def acquire(settings: Settings | None = None) -> Session:
    """The session for the current settings (and so database), opened on first use."""
    settings = settings or get_settings()
    with _registry_lock:
        session = _registry.get(settings)
        if session is None or session.closed or session.pid != os.getpid():
            # a session inherited through fork() shares its sockets with the parent: new one
            session = Session(settings)
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
