"""engine.db's gateway on a real database: psycopg errors leave it as the engine's exceptions,
once, with the driver's error as their cause; the pool of a process (db.Database) never opens
more connections than its shares, a share waits only for its own connections, a connection
broken while idle is replaced; and `engine serve` evaluates, delivers and answers a metrics
scrape through one pool."""

from __future__ import annotations

import threading
import uuid

import psycopg
import pytest
from psycopg import errors as pgerrors

import engine
from engine import db
from engine.exceptions import DatabaseError, DatabaseUnavailable, QueryTimeout, SchemaNotReady
from engine.scheduler import Service, connection_budget
from engine.settings import Settings
from tests.acceptance.service_helpers import wait_until
from tests.integration.evaluation_helpers import apply_yaml, rule
from tests.integration.test_metrics import scrape, value
from tests.receiver import Receiver, free_port


def backends(conn: psycopg.Connection, application_name: str) -> int:
    return conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (application_name,)
    ).fetchone()[0]


# -- translation -------------------------------------------------------------------------------
def test_an_error_inside_a_borrowed_connection_leaves_translated_once(database_url):
    with db.Database(database_url) as database:
        with (
            pytest.raises(SchemaNotReady, match="run `engine db migrate`") as raised,
            database.connection() as conn,
        ):
            conn.execute("SELECT * FROM no_such_table")
        assert isinstance(raised.value.__cause__, pgerrors.UndefinedTable)  # the driver's error, kept
        assert raised.value.sqlstate == "42P01"
        with pytest.raises(QueryTimeout) as timed_out, database.transaction() as conn:
            conn.execute("SET LOCAL statement_timeout = 50")
            conn.execute("SELECT pg_sleep(5)")
        assert isinstance(timed_out.value.__cause__, pgerrors.QueryCanceled)
        # the connection went back to the pool usable, outside any transaction
        assert database.value("delivery_next_due") is None
        assert database.opened == 1


def test_named_queries_on_a_database_without_the_schema_say_to_migrate(empty_database_url):
    with db.connection(empty_database_url) as conn, pytest.raises(SchemaNotReady, match="engine db migrate"):
        db.rows(conn, "list_automations", {"scopes": None})


def test_a_refused_connection_raises_at_once_with_its_reason():
    down = f"postgresql://engine@127.0.0.1:{free_port()}/engine?connect_timeout=1"
    with (
        db.Database(down) as database,
        pytest.raises(DatabaseUnavailable, match="no database reachable") as raised,
    ):
        database.rows("delivery_list", {"status": None, "automation": None, "limit": 1})
    assert isinstance(raised.value.__cause__, psycopg.OperationalError)


def test_a_condition_the_caller_expects_is_read_from_the_translated_error(conn):
    with pytest.raises(DatabaseError) as raised, db.transaction(conn):
        db.value(conn, "check_regex", {"pattern": "(unclosed"})
    assert raised.value.sqlstate == "2201B"  # invalid_regular_expression: the rule store reports it
    assert "invalid regular expression" in str(raised.value)


# -- the pool ----------------------------------------------------------------------------------
def test_the_pool_never_opens_more_connections_than_its_shares(database_url, conn):
    name = f"engine-test-{uuid.uuid4().hex[:8]}"
    peak = 0
    peak_lock = threading.Lock()
    with db.Database(database_url, shares={"a": 2, "b": 1}, application_name=name) as database:

        def borrow(share: str) -> None:
            nonlocal peak
            for _ in range(5):
                with database.connection(share) as c:
                    c.execute("SELECT pg_sleep(0.01)")
                    with peak_lock:
                        peak = max(peak, backends(conn, name))

        threads = [threading.Thread(target=borrow, args=("a" if i % 3 else "b",)) for i in range(9)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert database.checkouts == {"a": 30, "b": 15}
        assert 0 < peak <= 3 and database.opened <= 3
    assert wait_until(lambda: backends(conn, name) == 0)  # close() closed them


def test_a_share_waits_for_its_own_connections_only(database_url):
    with db.Database(database_url, shares={"slow": 1, "fast": 1}, wait=0.2) as database:
        with database.connection("slow") as held:
            held.execute("SELECT 1")
            assert database.value("delivery_next_due", share="fast") is None  # not held up by "slow"
            with pytest.raises(DatabaseUnavailable, match="connection\\(s\\) of slow are all in use"):
                database.value("delivery_next_due", share="slow")
        assert database.value("delivery_next_due", share="slow") is None  # free again
        with pytest.raises(ValueError, match="no share 'other'"):
            database.value("delivery_next_due", share="other")


def test_a_connection_broken_while_idle_is_replaced_instead_of_failing(database_url, conn, monkeypatch):
    monkeypatch.setattr(db, "FRESH_SECONDS", 0.0)  # ping every idle connection before handing it out
    with db.Database(database_url) as database:
        with database.connection() as c:
            first = c.execute("SELECT pg_backend_pid()").fetchone()[0]
        conn.execute("SELECT pg_terminate_backend(%s)", (first,))  # as a database restart would
        with database.connection() as c:
            second = c.execute("SELECT pg_backend_pid()").fetchone()[0]
        assert database.opened == 2
    assert second != first


def test_a_block_that_leaves_a_transaction_open_does_not_leak_it(database_url):
    with db.Database(database_url) as database:
        with database.connection() as c:
            c.execute("BEGIN")
            c.execute("SET LOCAL statement_timeout = 1")
        with database.connection() as c:
            assert c.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            assert c.execute("SHOW statement_timeout").fetchone()[0] == "0"


def test_a_pooled_connection_prepares_what_it_runs_again_and_is_closed_when_a_migration_made_it_stale(
    database_url, conn
):
    """The server's own connection prepares a statement's second run; a migration (another
    connection) that changes what it returns makes the server refuse it there ("cached plan
    must not change result type"): a retryable error, and the connection is not pooled again."""
    conn.execute("CREATE TABLE stale_plan (a integer)")
    conn.commit()
    with db.Database(database_url) as database:
        with database.connection() as c:
            for _ in range(2):
                c.execute("SELECT * FROM stale_plan")
            assert c.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()[0] >= 1
            conn.execute("ALTER TABLE stale_plan ADD COLUMN b integer")
            conn.commit()
        with pytest.raises(DatabaseError) as raised, database.connection() as again:
            assert again is c  # the idle one, with its prepared statement
            again.execute("SELECT * FROM stale_plan")
        assert db.is_stale_plan(raised.value) and db.is_transient(raised.value)
        assert c.closed
        with database.connection() as fresh:
            assert fresh.execute("SELECT * FROM stale_plan").fetchall() == []


def test_a_lease_keeps_its_place_until_its_holder_closes_it(database_url):
    with db.Database(database_url, shares={"evaluation": 1}, wait=0.2) as database:
        leased = database.lease("evaluation")
        leased.execute("SELECT set_config('jit', 'off', false)")  # session state stays with its holder
        with pytest.raises(DatabaseUnavailable):
            database.lease("evaluation")
        leased.close()
        again = database.lease("evaluation")
        assert again.execute("SELECT 1").fetchone() == (1,)


# -- one pool per service ----------------------------------------------------------------------
def test_the_service_evaluates_delivers_and_scrapes_through_one_pool(conn, database_url, monkeypatch):
    name = f"engine-serve-{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(db, "_application_name", name)  # the service's connections, told apart
    port = free_port()
    settings = Settings(
        database_url=database_url,
        evaluation_connections=2,
        delivery_connections=2,
        delivery_workers=8,
        metrics_port=port,
        metrics_address="127.0.0.1",
        interval=0.2,
    )
    runs = 6
    with Receiver() as receiver:
        apply_yaml(
            conn,
            rule(
                "gw-acc",
                '{type: run_metric_threshold, metric: acc, window: 1, operator: ">", threshold: 0.5}',
            ).replace("action: {type: no_op}", f"action: {{type: webhook, url: '{receiver.url()}'}}"),
        )
        service = Service(settings)
        pool = service.database
        assert service.evaluator.database is pool and service.dispatcher.database is pool
        assert service.metrics.database.database is pool
        assert pool.shares == {"evaluation": 2, "deliveries": 2, "metrics": 1}
        peak, done = 0, threading.Event()

        def watch() -> None:
            nonlocal peak
            with psycopg.connect(database_url, autocommit=True) as watcher:
                while not done.wait(0.02):
                    peak = max(peak, backends(watcher, name))

        monitor = threading.Thread(target=watch)
        monitor.start()
        service.start()
        try:
            for r in range(runs):
                with engine.init(project="acme/vision", name=f"gw-{r}", system_metrics_interval=0) as run:
                    run.log({"acc": 0.9}, step=0)
            receiver.wait_for(runs, timeout=60)
            assert value(scrape(port), "engine_database_up") == 1
        finally:
            service.stop()
            done.set()
            monitor.join()
    assert pool.checkouts["evaluation"] >= 1  # its connections are leased from the pool
    assert pool.checkouts["deliveries"] >= 2  # a claim and an outcome, at least
    assert pool.checkouts["metrics"] >= 1
    assert pool.opened <= pool.max_size == 5
    assert 0 < peak <= sum(connection_budget(settings).values()) == 6  # the pool and the LISTEN connection
    assert backends(conn, name) == 0 or wait_until(lambda: backends(conn, name) == 0)
