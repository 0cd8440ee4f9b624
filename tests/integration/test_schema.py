from engine import db as enginedb


def test_migrations_are_idempotent(conn):
    before = conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0]
    assert enginedb.migrate(conn) == []
    assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] == before
    assert enginedb.pending_migrations(conn) == []


def test_metric_tables_are_hypertables(conn):
    names = {r[0] for r in conn.execute("SELECT hypertable_name FROM timescaledb_information.hypertables")}
    assert {"metric_points", "system_metrics"} <= names


def test_events_are_append_only(conn):
    import psycopg
    import pytest

    conn.execute("INSERT INTO events (type, details) VALUES ('run_state', '{}')")
    with pytest.raises(psycopg.errors.RestrictViolation):
        conn.execute("UPDATE events SET author = 'x'")
