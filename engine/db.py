"""The database gateway: connections, named queries, the one place where psycopg errors
become EngineErrors, and migrations.

Every part of the engine talks to PostgreSQL through this module:

    database = Database(settings=settings, shares={"web": 4})   # the process's pool
    rows = database.rows("history", {"automation": None, "since": None, "limit": 50})
    row = database.one("delivery_find", {"prefix": "3f2a"})      # first row as a dict, or None
    with database.connection() as conn:        # a pooled autocommit connection, for several statements
        due = value(conn, "delivery_next_due")
    with database.transaction() as conn:       # BEGIN ... COMMIT (ROLLBACK when the block raises)
        run(conn, "delivery_redeliver", params)
    database.close()

A psycopg error raised inside any of these (connecting included) leaves as the EngineError
`translate` gives it, once, with the driver's error as its `__cause__`; a caller that needs
one condition reads `DatabaseError.sqlstate`. Code that is handed a connection uses the
module functions `rows`, `one`, `value`, `run` and `transaction(conn)`, which translate the
same way; `connection(url)` is a connection of its own (a CLI command, a LISTEN), closed
after its block. `boundary()` is the translation on its own, for a block of raw driver calls.

SQL written by hand lives in `engine/sql/queries/*.sql`, in blocks named `-- name: <name>`,
loaded with `query("<name>")`. Migrations are `engine/sql/migrations/NNNN_*.sql`, views
`engine/sql/views/*.sql` (recreated after every migrate). The SQL is package data: an
installed engine (a wheel, the Docker image) carries its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pgerrors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row

from engine.exceptions import (
    DatabaseAuthFailed,
    DatabaseBusy,
    DatabaseError,
    DatabaseUnavailable,
    EngineError,
    ExtensionMissing,
    LockBusy,
    QueryTimeout,
    SchemaNotReady,
)
from engine.settings import Settings, get_settings

log = logging.getLogger(__name__)
R = TypeVar("R")

# ENGINE_SQL_DIR points at another copy of the SQL (a test of an edited migration uses it).
SQL_DIR = Path(os.environ.get("ENGINE_SQL_DIR") or Path(__file__).resolve().parent / "sql")
NOTIFY_CHANNEL = "engine_ingest"
_MIGRATION_LOCK = 0x656E67696E65  # "engine": serialises concurrent `db migrate`


# -- error boundary ------------------------------------------------------------------------
def translate(exc: BaseException) -> EngineError:
    """Map a psycopg error to the engine's tree, by SQLSTATE class, with the fix in words.

    The advice differs by cause (credentials, capacity, reachability, schema) and never says
    to unset ENGINE_DATABASE_URL: on a training node that would send runs to a private
    database that no rule ever sees.
    """
    if isinstance(exc, EngineError):
        return exc
    error = _translate(exc)
    error.sqlstate = getattr(exc, "sqlstate", None) or _driver_state(exc)
    return error


def _driver_state(exc: BaseException) -> str | None:
    """The SQLSTATE class of an error psycopg raises itself, before the server sees the
    statement (text with a NUL byte is a DataError without a SQLSTATE): callers read the
    condition from `sqlstate` alone, whoever refused it."""
    if isinstance(exc, psycopg.DataError):
        return "22000"
    if isinstance(exc, psycopg.IntegrityError):
        return "23000"
    return None


def _translate(exc: BaseException) -> DatabaseError:
    state = getattr(exc, "sqlstate", None) or ""
    if not state and isinstance(exc, psycopg.OperationalError):
        state = _connection_state(str(exc))
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if state.startswith("28"):
        return DatabaseAuthFailed(f"the database refused the credentials ({text}). {_AUTH_FIX}")
    if state == "3D000":
        return SchemaNotReady(f"the database does not exist ({text}). {_DATABASE_MISSING_FIX}")
    if state.startswith("53"):
        return DatabaseBusy(f"the database is out of capacity ({text}). {_CAPACITY_FIX}")
    if (
        (isinstance(exc, psycopg.OperationalError) and not state)
        or state.startswith("08")
        or state in _SHUTTING_DOWN
    ):
        return DatabaseUnavailable(f"no database reachable ({text}). {_where_hint()}")
    if state == "42501":
        return DatabaseError(f"{text}: {_PRIVILEGE_FIX}")
    if state == "55P03":
        return LockBusy(f"a lock stayed held longer than the statement waits ({text}): retry")
    if state == "57014":
        return QueryTimeout(f"query cancelled by statement_timeout ({text})")
    if state in ("42P01", "42883", "3F000") and "timescaledb" not in text:
        return SchemaNotReady(f"the database schema is missing or old ({text}): run `engine db migrate`.")
    lowered = text.lower()
    if "timescaledb" in lowered and "preload" in lowered:
        return ExtensionMissing(
            f"TimescaleDB is installed but not preloaded ({text}): add shared_preload_libraries = 'timescaledb' "
            "to postgresql.conf and restart PostgreSQL."
        )
    if "timescaledb" in lowered and ("not available" in lowered or state in ("0A000", "58P01")):
        return ExtensionMissing(
            f"TimescaleDB is not installed in this PostgreSQL ({text}). {_NOT_INSTALLED_FIX}"
        )
    return DatabaseError(text)


_SHUTTING_DOWN = ("57P01", "57P02", "57P03")

# libpq gives no SQLSTATE for a refused connection, only the server's FATAL message; these
# are PostgreSQL's (and PgBouncer's) English words for the causes that need their own advice.
# A server set to another lc_messages falls back to the generic "no database reachable".
_CONNECTION_MESSAGES = (  # first match wins: "too many connections for role "x"" is capacity
    ("too many clients", "53300"),
    ("too many connections", "53300"),
    ("remaining connection slots are reserved", "53300"),
    ("no more connections allowed", "53300"),  # PgBouncer's max_client_conn
    ("password authentication failed", "28P01"),
    ("no password supplied", "28P01"),
    ("no pg_hba.conf entry", "28000"),
    ("authentication failed", "28000"),
    ("is not permitted to log in", "28000"),
    ("permission denied for database", "28000"),
    ('role "', "28000"),  # role "x" does not exist
    ("no such user", "28000"),  # PgBouncer's
    ("no such database", "3D000"),  # PgBouncer's
    ("does not exist", "3D000"),  # database "x" does not exist
    ("the database system is starting up", "57P03"),
    ("the database system is shutting down", "57P03"),
)


def _connection_state(message: str) -> str:
    """The SQLSTATE a refused connection would carry, read from the server's message."""
    message = message.lower()
    for words, state in _CONNECTION_MESSAGES:
        if words in message:
            return state
    return ""


_NOT_INSTALLED_FIX = (
    "Install it with `scripts/setup`, or point ENGINE_DATABASE_URL at a TimescaleDB "
    "(for example `docker compose up -d db`)."
)
_AUTH_FIX = (
    "Check the user name and password in ENGINE_DATABASE_URL (or ~/.pgpass, PGPASSWORD) and that "
    "pg_hba.conf lets this user connect from this machine; `engine doctor` shows the URL without its password."
)
_DATABASE_MISSING_FIX = (
    "Create it (`createdb NAME` as an administrator) and run `engine db migrate`, "
    "or correct the database name in ENGINE_DATABASE_URL."
)
_PRIVILEGE_FIX = (
    "the database role of ENGINE_DATABASE_URL may not do this; engine/sql/grants.sql says what the service, "
    'ingest and reader roles are granted (docs/production.md, "Least-privilege roles")'
)
_CAPACITY_FIX = (
    "The server allows no more connections (or is out of disk or memory): wait and retry, raise "
    'max_connections, or put PgBouncer in front of it (docs/production.md, "Connection budget").'
)


def _where_hint() -> str:
    """The fix for an unreachable database depends on which database the engine was told to use."""
    try:
        configured = get_settings().database_url
    except Exception:  # invalid settings are reported elsewhere; do not hide this error behind them
        configured = None
    if configured:
        return (
            "ENGINE_DATABASE_URL is set: check that this server runs and that this machine reaches it "
            "(host, port, firewall); `engine doctor` checks the connection."
        )
    return "Start the embedded one with `engine db up` (see `engine db status`), or set ENGINE_DATABASE_URL to a running TimescaleDB."


@contextlib.contextmanager
def boundary() -> Iterator[None]:
    """Translate driver errors raised inside the block."""
    try:
        yield
    except psycopg.Error as exc:
        raise translate(exc) from exc


# -- connections ---------------------------------------------------------------------------
def database_url(settings: Settings | None = None, *, start: bool = True) -> str:
    """The URL to use: ENGINE_DATABASE_URL, or the embedded cluster (started if needed)."""
    settings = settings or get_settings()
    if settings.database_url:
        return settings.database_url
    from engine.localdb import LocalDatabase

    local = LocalDatabase(settings.data_dir)
    if start and not local.status().running:
        log.info("starting the embedded database under %s", settings.data_dir)
        local.up()
    return local.url()


# Who opens a connection, shown in pg_stat_activity.application_name so that an operator can
# count each part's connections: engine-sdk, engine-serve, engine-cli, engine-web. A process
# sets its role once at its entry point; a Python script using the library is the SDK.
_application_name = "engine-sdk"


def set_application_name(name: str) -> None:
    """The application_name of every connection this process opens from now on."""
    global _application_name
    _application_name = name


def conninfo(
    url: str | None = None,
    *,
    settings: Settings | None = None,
    application_name: str | None = None,
    connect_timeout: int | None = None,
) -> str:
    """The connection string every connection of the engine uses (pools take it as it is):
    the URL with this process's application_name and a connect timeout, so that a server
    that accepts but never answers fails the connection instead of hanging it. A
    connect_timeout written in the URL wins over ENGINE_CONNECT_TIMEOUT."""
    settings = settings or get_settings()
    url = url or database_url(settings)
    extra: dict[str, str | int] = {"application_name": application_name or _application_name}
    if connect_timeout is not None or "connect_timeout" not in conninfo_to_dict(url):
        extra["connect_timeout"] = connect_timeout or settings.connect_timeout
    return make_conninfo(url, **extra)


def connect(
    url: str | None = None,
    *,
    autocommit: bool = False,
    settings: Settings | None = None,
    application_name: str | None = None,
    connect_timeout: int | None = None,
) -> psycopg.Connection:
    """A connection, errors translated. It prepares no statement (psycopg would from a
    statement's fifth run): PgBouncer in transaction pooling mode (1.18, as Debian ships it)
    does not keep them from one transaction to the next. A holder that keeps them says so
    (`prepare_when_direct`, or the evaluator's own threshold)."""
    with boundary():
        return psycopg.connect(
            conninfo(
                url, settings=settings, application_name=application_name, connect_timeout=connect_timeout
            ),
            autocommit=autocommit,
            prepare_threshold=None,
        )


# On a connection of its own to the server, a statement run a second time is prepared (parsed
# and planned once per connection): every flush's, a run's creation and state change, a
# delivery's claim and outcome, a request's queries.
PREPARE_THRESHOLD = 1


def prepare_when_direct(conn: psycopg.Connection) -> None:
    """Have psycopg prepare the statements `conn` runs again, unless a pooler stands between
    it and the server (`is_pooled`): then every statement is parsed each time."""
    if not is_pooled(conn):
        conn.prepare_threshold = PREPARE_THRESHOLD


def is_pooled(conn: psycopg.Connection) -> bool:
    """Whether a pooler (PgBouncer, any proxy that keeps server connections) stands between
    `conn` and the server: the backend pid the client was given at startup is then the
    pooler's own, not the pid of the server process that answers. Such a connection's next
    transaction may run in another server session, so it must keep no session state there
    (prepared statements: a name missing there, or another client's statement under it)."""
    return bool(value(conn, "server_backend_pid") != conn.info.backend_pid)


def describe_url(url: str) -> str:
    """Where a URL points, for messages: `dbname on host:port`, never the password."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error:
        return "the configured database"
    host = params.get("host") or params.get("hostaddr") or "localhost"
    where = host if str(host).startswith("/") else f"{host}:{params.get('port') or 5432}"
    return f"{params.get('dbname') or params.get('user') or 'the database'} on {where}"


def is_transient(exc: BaseException) -> bool:
    """Whether the same call may succeed later (an outage, a full server, a lost serialisation
    race, a statement prepared before a migration: see `is_stale_plan`) rather than never
    (wrong password, missing database, schema or extension): the classes of `translate`, so
    that retrying and advice never disagree."""
    cause = _psycopg_cause(exc)
    if isinstance(cause, psycopg.Error) and (cause.sqlstate or "") in _RACES:
        return True
    return is_stale_plan(cause) or isinstance(translate(cause), DatabaseUnavailable)


def is_stale_plan(exc: BaseException) -> bool:
    """A prepared statement whose result changed shape since it was prepared (a migration
    altered what it returns): the server refuses to run it again on that connection, and
    the same call succeeds on a new one, whose statements are prepared anew."""
    cause = _psycopg_cause(exc)
    return isinstance(
        cause, psycopg.errors.FeatureNotSupported
    ) and "cached plan must not change result type" in str(cause)


def _psycopg_cause(exc: BaseException) -> BaseException:
    """The psycopg error behind one `boundary` translated, or `exc` itself."""
    if isinstance(exc, EngineError) and isinstance(exc.__cause__, psycopg.Error):
        return exc.__cause__
    return exc


# A transaction that lost a serialisation race or a deadlock succeeds when tried again.
_RACES = ("40001", "40P01")


# -- the gateway ---------------------------------------------------------------------------
@contextlib.contextmanager
def connection(
    url: str | None = None,
    *,
    autocommit: bool = True,
    settings: Settings | None = None,
    connect_timeout: int | None = None,
) -> Iterator[psycopg.Connection]:
    """A connection of its own (not pooled: a CLI command, a LISTEN), closed after the block;
    psycopg errors raised in the block leave translated. Without autocommit, the block is one
    transaction, committed at its end (rolled back when it raises), as psycopg's own."""
    with (
        boundary(),
        connect(url, autocommit=autocommit, settings=settings, connect_timeout=connect_timeout) as conn,
    ):
        yield conn


@contextlib.contextmanager
def transaction(conn: psycopg.Connection) -> Iterator[psycopg.Connection]:
    """A transaction on `conn` (a savepoint inside another one), errors translated."""
    with boundary(), conn.transaction():
        yield conn


def rows(conn: psycopg.Connection, name: str, params: Params = None) -> list[dict[str, Any]]:
    """Every row of the named query, as dicts."""
    with boundary(), conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query(name), params).fetchall()


def one(conn: psycopg.Connection, name: str, params: Params = None) -> dict[str, Any] | None:
    """The first row of the named query as a dict, or None when it returns none."""
    with boundary(), conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query(name), params).fetchone()


def value(conn: psycopg.Connection, name: str, params: Params = None) -> Any:
    """The first column of the named query's first row (None when it returns no row)."""
    with boundary():
        row = conn.execute(query(name), params).fetchone()
    return None if row is None else row[0]


def run(conn: psycopg.Connection, name: str, params: Params = None) -> int:
    """Run the named query for its effect; the number of rows it touched."""
    with boundary():
        return conn.execute(query(name), params).rowcount


Params = Mapping[str, Any] | Sequence[Any] | None

FRESH_SECONDS = 1.0  # a connection given back more recently than this is not pinged
IDLE_SECONDS = 600.0  # an idle connection unused for longer is closed
WAIT_SECONDS = 10.0  # waiting longer for a connection of one's share means it is stuck


class Database:
    """The process's connections to one database, shared out among its parts: the pool of
    `engine serve` (evaluation, deliveries, metrics) and of `engine web`.

        database = Database(settings=settings, shares={"evaluation": 2, "deliveries": 2})
        with database.connection("deliveries") as conn:   # borrowed for the block
            ...
        conn = database.lease("evaluation")               # kept until its holder closes it
        database.close()

    One per process and database: `engine serve` builds its own (scheduler.pool_shares) and
    hands it to the evaluator, the dispatcher and the metrics; `engine web` builds one per
    worker process (engine/web/deps.py: `shares={"web": n}, application_name="engine-web"`,
    the name given since a spawned worker does not inherit `set_application_name`) and lends
    each request a connection of it; code holding the Database runs its queries with
    `database.rows(name, params)` / `one` / `value` / `run`, or several in
    `with database.transaction() as conn:` through the module's helpers.

    `shares` gives each part the most connections it may hold at once (the first share is
    the default); the pool holds at most their sum, so a part waits only for its own
    connections, never for another part's: a long evaluation cannot starve the deliveries,
    nor a burst of deliveries an evaluation. A part waiting longer than `wait` seconds gets
    DatabaseUnavailable.

    Connections are autocommit (a block opens its transaction with `transaction()`), carry
    this process's application_name, and are opened in the caller's thread when no idle one
    is left, so that a refused connection raises at once with the server's reason. An idle
    connection unused for a moment is pinged before it is handed out (one broken by a
    database restart is replaced instead of failing the caller); one idle for IDLE_SECONDS
    is closed. Nothing relies on session state kept between blocks (the statements a
    connection runs again are prepared only when it is the server's own,
    `prepare_when_direct`), so the pool may sit behind PgBouncer in transaction mode; a part
    that keeps session state (the evaluator's settings and prepared statements) leases its
    connections instead of borrowing them.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        settings: Settings | None = None,
        shares: Mapping[str, int] | None = None,
        application_name: str | None = None,
        wait: float = WAIT_SECONDS,
    ):
        self.settings = settings or get_settings()
        self._url = url
        self.shares = dict(shares or {"default": 1})
        if not self.shares or min(self.shares.values()) < 1:
            raise ValueError(f"every share needs at least one connection: {self.shares}")
        self.default_share = next(iter(self.shares))
        self.application_name = application_name
        self.wait = wait
        self._lock = threading.Lock()
        self._slots = {share: threading.BoundedSemaphore(n) for share, n in self.shares.items()}
        self._idle: list[tuple[psycopg.Connection, float]] = []  # most recently given back last
        self._leased: dict[str, list[psycopg.Connection]] = {share: [] for share in self.shares}
        self._in_use: dict[str, int] = dict.fromkeys(self.shares, 0)
        self._closed = False
        self.opened = 0  # connections opened so far (a healthy process opens at most max_size)
        self.checkouts: dict[str, int] = dict.fromkeys(self.shares, 0)

    @property
    def url(self) -> str:
        """ENGINE_DATABASE_URL, or the embedded database's (started on first use)."""
        if self._url is None:
            self._url = database_url(self.settings)
        return self._url

    @property
    def max_size(self) -> int:
        """The most connections this pool opens at once: the sum of the shares."""
        return sum(self.shares.values())

    # -- borrowing ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def connection(self, share: str | None = None) -> Iterator[psycopg.Connection]:
        """A pooled autocommit connection of `share` for the block; psycopg errors raised in
        it leave translated. It goes back to the pool after the block (closed if broken)."""
        share = share or self.default_share
        conn = self._take(share)
        try:
            with boundary():
                yield conn
        except BaseException as exc:
            if is_stale_plan(exc):  # its prepared statements are out of date: not kept
                conn.close()
            raise
        finally:
            self._give_back(share, conn)

    @contextlib.contextmanager
    def transaction(self, share: str | None = None) -> Iterator[psycopg.Connection]:
        """A pooled connection inside one transaction (committed after the block)."""
        with self.connection(share) as conn, conn.transaction():
            yield conn

    def rows(self, name: str, params: Params = None, *, share: str | None = None) -> list[dict[str, Any]]:
        """Every row of the named query, as dicts, on a connection borrowed for it."""
        with self.connection(share) as conn:
            return rows(conn, name, params)

    def one(self, name: str, params: Params = None, *, share: str | None = None) -> dict[str, Any] | None:
        """The named query's first row as a dict, or None."""
        with self.connection(share) as conn:
            return one(conn, name, params)

    def value(self, name: str, params: Params = None, *, share: str | None = None) -> Any:
        """The first column of the named query's first row, or None."""
        with self.connection(share) as conn:
            return value(conn, name, params)

    def run(self, name: str, params: Params = None, *, share: str | None = None) -> int:
        """Run the named query for its effect; the number of rows it touched."""
        with self.connection(share) as conn:
            return run(conn, name, params)

    def take_now(self, share: str | None = None) -> psycopg.Connection | None:
        """A connection of `share` when one is free, idle and fresh right now, taken without
        waiting or any I/O (no ping, no connect); else None (`take` waits, pings or connects).
        For callers on an event loop, which must not block; they give it back with
        `give_back`."""
        share = share or self.default_share
        slots = self._slots[share]
        if not slots.acquire(blocking=False):
            return None
        with self._lock:
            fresh = (
                bool(self._idle)
                and not self._closed
                and time.monotonic() - self._idle[-1][1] <= FRESH_SECONDS
                and not self._idle[-1][0].closed
            )
            if fresh:
                conn = self._idle.pop()[0]
                self._in_use[share] += 1
                self.checkouts[share] += 1
                return conn
        slots.release()
        return None

    def take(self, share: str | None = None) -> psycopg.Connection:
        """A connection of `share` (waiting, pinging or connecting as `connection` does), for
        the caller to give back with `give_back`."""
        return self._take(share or self.default_share)

    def give_back(self, conn: psycopg.Connection, share: str | None = None) -> None:
        """Return a connection of `take`/`take_now` (a transaction left open is rolled back)."""
        self._give_back(share or self.default_share, conn)

    # -- leasing -----------------------------------------------------------------------------
    def lease(self, share: str) -> psycopg.Connection:
        """A connection of `share` that its holder keeps, session state and all, until it
        closes it (which frees its place in the share). Errors are not translated after
        this call returns: the holder runs its statements inside `boundary()`."""
        with self._lock:
            held = self._leased[share]
            for gone in [c for c in held if c.closed]:  # closed by their holder: their place is free
                held.remove(gone)
                self._in_use[share] -= 1
                self._slots[share].release()
        conn = self._take(share)
        with self._lock:
            self._leased[share].append(conn)
        return conn

    # -- the pool ----------------------------------------------------------------------------
    def _take(self, share: str) -> psycopg.Connection:
        slots = self._slots.get(share)
        if slots is None:
            raise ValueError(f"no share {share!r} in this pool (its shares: {', '.join(self.shares)})")
        if not slots.acquire(timeout=self.wait):
            raise self.none_free(share)
        try:
            conn = self._idle_connection()
            if conn is None:
                conn = connect(
                    self.url, autocommit=True, settings=self.settings, application_name=self.application_name
                )
                with self._lock:
                    self.opened += 1
                try:
                    prepare_when_direct(conn)
                except BaseException:
                    conn.close()
                    raise
        except BaseException:
            slots.release()
            raise
        with self._lock:
            self._in_use[share] += 1
            self.checkouts[share] += 1
        return conn

    def none_free(self, share: str) -> DatabaseUnavailable:
        """The error of a wait for a connection of `share` that lasted `wait` seconds."""
        return DatabaseUnavailable(
            f"no database connection came free in {self.wait:g} s: the {self.shares[share]} connection(s) "
            f"of {share} are all in use by statements that do not finish"
        )

    def _idle_connection(self) -> psycopg.Connection | None:
        """The most recently given back idle connection that still works, or None."""
        while True:
            stale: list[psycopg.Connection] = []
            with self._lock:
                if self._closed:
                    raise DatabaseUnavailable("the engine's database connections are closed (it is stopping)")
                now = time.monotonic()
                while self._idle and now - self._idle[0][1] > IDLE_SECONDS:
                    stale.append(self._idle.pop(0)[0])
                conn, returned = self._idle.pop() if self._idle else (None, now)
            for old in stale:
                old.close()
            if conn is None:
                return None
            if conn.closed:
                continue
            if now - returned <= FRESH_SECONDS:
                return conn
            try:
                conn.execute("")  # a round trip: one broken while idle is replaced, not handed out
            except psycopg.Error:
                conn.close()
                continue
            return conn

    def _give_back(self, share: str, conn: psycopg.Connection) -> None:
        try:
            if not conn.closed and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.rollback()  # a block that left a transaction open (or failed) does not leak it
        except psycopg.Error:
            conn.close()
        with self._lock:
            self._in_use[share] -= 1
            keep = not conn.closed and not self._closed
            if keep:
                self._idle.append((conn, time.monotonic()))
        self._slots[share].release()
        if not keep:
            conn.close()

    def close(self) -> None:
        """Close the idle connections and those leased; a connection borrowed at this moment
        is closed when its block ends. Final."""
        with self._lock:
            self._closed = True
            idle, self._idle = [c for c, _ in self._idle], []
            leased = [c for held in self._leased.values() for c in held]
        for conn in idle + leased:
            conn.close()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- hand-written queries ------------------------------------------------------------------
_BLOCK = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


@cache
def _queries() -> dict[str, str]:
    found: dict[str, str] = {}
    where: dict[str, str] = {}
    for path in sorted((SQL_DIR / "queries").glob("*.sql")):
        parts = _BLOCK.split(path.read_text())
        for name, body in zip(parts[1::2], parts[2::2]):
            if name in found:
                raise RuntimeError(f"query {name!r} defined twice ({where[name]} and {path.name})")
            found[name] = body.strip()
            where[name] = path.name
    return found


def query(name: str) -> str:
    """A named block from engine/sql/queries/*.sql."""
    try:
        return _queries()[name]
    except KeyError:
        raise KeyError(f"no query named {name!r} in {SQL_DIR / 'queries'}") from None


def query_names() -> set[str]:
    return set(_queries())


def one_row(cursor: psycopg.Cursor[R]) -> R:
    """The row of a statement that always returns one (`INSERT ... RETURNING`, an aggregate,
    an upsert); none back means the statement and its caller disagree, so it is not hidden."""
    row = cursor.fetchone()
    if row is None:
        raise DatabaseError("the statement returned no row where one was certain")
    return row


# -- migrations ----------------------------------------------------------------------------
def migrations() -> list[tuple[str, Path]]:
    return [(p.name.split("_", 1)[0], p) for p in sorted((SQL_DIR / "migrations").glob("[0-9]*.sql"))]


def checksum(text: str) -> str:
    """What `schema_migrations.checksum` records of a migration: sha256 of its text."""
    return hashlib.sha256(text.encode()).hexdigest()


def edited_migrations(conn: psycopg.Connection) -> list[str]:
    """The applied migrations whose file no longer has the text that was applied."""
    with boundary():
        recorded: dict[str, str] = dict(
            conn.execute("SELECT version, checksum FROM schema_migrations").fetchall()
        )
    return [p.name for v, p in migrations() if v in recorded and recorded[v] != checksum(p.read_text())]


def migrate(conn: psycopg.Connection) -> list[str]:
    """Apply pending migrations (each in its own transaction), then recreate the views.

    Idempotent: applied versions are recorded in `schema_migrations`. Returns what was applied.
    """
    applied_now: list[str] = []
    with boundary():
        conn.autocommit = True
        conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {v for (v,) in conn.execute("SELECT version FROM schema_migrations")}
            if not migrations():
                fix = (
                    "ENGINE_SQL_DIR names a folder without them; unset it to use the SQL inside the package"
                    if os.environ.get("ENGINE_SQL_DIR")
                    else "the engine is installed without its SQL: reinstall it"
                )
                raise SchemaNotReady(f"no migration files in {SQL_DIR / 'migrations'}: {fix}.")
            # Applying on top of an edited migration would leave a schema that no file describes.
            edited = edited_migrations(conn)
            if edited:
                raise SchemaNotReady(
                    f"{', '.join(edited)} in {SQL_DIR / 'migrations'} changed after it was applied to this database "
                    "(its sha256 differs from the one recorded in schema_migrations): restore the file as it was; "
                    "a schema change goes in a new migration."
                )
            for version, path in migrations():
                if version in done:
                    continue
                text = path.read_text()
                with conn.transaction():
                    conn.execute(text)
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                        (version, path.name, checksum(text)),
                    )
                applied_now.append(path.name)
                log.info("applied migration %s", path.name)
            with conn.transaction():
                for view in sorted((SQL_DIR / "views").glob("*.sql")):
                    conn.execute(view.read_text())
        except pgerrors.UndefinedFile as exc:
            raise ExtensionMissing(
                f"TimescaleDB is not installed in this PostgreSQL. {_NOT_INSTALLED_FIX}"
            ) from exc
        finally:
            # A FATAL error (TimescaleDB not preloaded ends the session) already released the
            # lock with the session; unlocking then would hide the real error.
            if not conn.closed:
                conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))
    return applied_now


def pending_migrations(conn: psycopg.Connection) -> list[str]:
    with boundary():
        exists = one_row(conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL"))[0]
        done = {v for (v,) in conn.execute("SELECT version FROM schema_migrations")} if exists else set()
    return [p.name for v, p in migrations() if v not in done]


def ensure_schema(conn: psycopg.Connection) -> None:
    """Raise SchemaNotReady with the fix when migrations are missing."""
    pending = pending_migrations(conn)
    if pending:
        raise SchemaNotReady(f"migrations not applied ({', '.join(pending)}): run `engine db migrate`.")
