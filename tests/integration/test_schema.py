import re
import shutil

import psycopg

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


def test_run_steps_are_filled_in_from_the_points_of_runs_logged_before(
    empty_database_url, monkeypatch, tmp_path
):
    """0017 keeps a run's current steps on the run; runs logged before it get theirs from
    their points, so a resumed run continues where its points end."""
    current, older = enginedb.SQL_DIR, tmp_path / "sql"
    shutil.copytree(current, older)
    for later in sorted((older / "migrations").glob("*.sql")):
        if later.name >= "0017":
            later.unlink()
    with psycopg.connect(empty_database_url) as conn:
        monkeypatch.setattr(enginedb, "SQL_DIR", older)
        enginedb.migrate(conn)
        conn.execute("INSERT INTO projects (id, entity, name) VALUES (1, 'acme', 'p')")
        conn.execute(
            "INSERT INTO runs (id, project_id, run_id, name, state) "
            "VALUES (1, 1, 'logged', 'logged', 'running'), (2, 1, 'empty', 'empty', 'running')"
        )
        conn.execute("INSERT INTO metric_keys (id, key) VALUES (1, 'loss'), (2, 'system/gpu')")
        conn.execute(
            "INSERT INTO metric_points (time, run_pk, key_id, step, seq, value) "
            "SELECT now(), 1, 1, s, s, 0.5 FROM generate_series(0, 41) AS s"
        )
        conn.execute(
            "INSERT INTO system_metrics (time, run_pk, key_id, step, seq, value) "
            "SELECT now(), 1, 2, s, s, 0.5 FROM generate_series(0, 6) AS s"
        )
        monkeypatch.setattr(enginedb, "SQL_DIR", current)
        enginedb.migrate(conn)
        steps = conn.execute("SELECT run_id, step, system_step FROM runs ORDER BY id").fetchall()
    assert steps == [("logged", 41, 6), ("empty", -1, -1)]


def test_a_trigger_deleted_by_hand_takes_its_deliveries_with_it(conn):
    """Deliveries carry no foreign key to their trigger (the evaluator writes both in one
    transaction); deleting triggers by hand still deletes their deliveries, as the key's
    ON DELETE CASCADE did, and only theirs."""
    from tests.integration.actions_helpers import fire, make_automation, make_run

    automation = make_automation(conn, "cascade", [{"type": "no_op"}])
    run = make_run(conn)
    gone, gone_deliveries = fire(conn, automation, [{"type": "no_op"}, {"type": "no_op"}], run_pk=run)
    kept, kept_deliveries = fire(conn, automation, [{"type": "no_op"}], run_pk=run)
    assert len(gone_deliveries) == 2 and len(kept_deliveries) == 1
    conn.execute("DELETE FROM triggers WHERE id = %s", (gone,))
    left = conn.execute("SELECT trigger_id, count(*) FROM deliveries GROUP BY trigger_id").fetchall()
    assert left == [(kept, 1)]
