import re

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


def test_a_database_migrated_from_zero_matches_schema_sql(empty_database_url):
    import difflib

    import psycopg

    from tests.schema_dump import schema_text

    with psycopg.connect(empty_database_url) as conn:
        enginedb.migrate(conn)
    committed = (enginedb.SQL_DIR / "schema.sql").read_text()
    actual = schema_text(empty_database_url)
    diff = "".join(
        difflib.unified_diff(
            committed.splitlines(keepends=True),
            actual.splitlines(keepends=True),
            "schema.sql",
            "migrated from zero",
            n=1,
        )
    )
    assert actual == committed, (
        "engine/sql/schema.sql is not the schema the migrations leave: run `scripts/schema` and commit "
        f"the file (after a new migration or a view change), or fix the migration.\n{diff[:4000]}"
    )


def test_the_migration_numbers_skip_0003_only_and_the_folder_says_why():
    versions = [version for version, _ in enginedb.migrations()]
    assert all(re.fullmatch(r"\d{4}", v) for v in versions), versions
    assert len(set(versions)) == len(versions), f"two migrations share a number: {versions}"
    # Databases in the field recorded 0001, 0002, 0004...: the gap stays, and no file fills it.
    expected = [f"{n:04d}" for n in range(1, int(versions[-1]) + 1) if n != 3]
    assert versions == expected, (
        f"migrations are numbered 0001, 0002, then 0004 onwards without gaps: {versions}"
    )
    readme = (enginedb.SQL_DIR / "migrations" / "README.md").read_text()
    assert "There is no 0003, on purpose." in readme
