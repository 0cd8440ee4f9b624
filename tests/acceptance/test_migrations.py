"""`engine db migrate` and `engine doctor` on a database whose applied migration was edited
since: the SQL comes from a copy of the package's folder (ENGINE_SQL_DIR) in which one applied
migration differs from the text the database recorded the checksum of."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from engine import db as enginedb

ENGINE = Path(sys.executable).parent / "engine"


def engine(*args: str, sql_dir: Path, database_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ENGINE_SQL_DIR": str(sql_dir), "ENGINE_DATABASE_URL": database_url}
    return subprocess.run(
        [str(ENGINE), *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_migrate_refuses_an_applied_migration_that_was_edited(database_url: str, tmp_path: Path) -> None:
    sql_dir = tmp_path / "sql"
    shutil.copytree(enginedb.SQL_DIR, sql_dir)
    unchanged = engine("db", "migrate", sql_dir=sql_dir, database_url=database_url)
    assert (unchanged.returncode, unchanged.stdout.strip()) == (0, "schema up to date"), unchanged.stderr

    edited = sql_dir / "migrations" / "0002_automations.sql"
    edited.write_text(edited.read_text().replace("CREATE TABLE", "CREATE UNLOGGED TABLE", 1))
    refused = engine("db", "migrate", sql_dir=sql_dir, database_url=database_url)
    assert refused.returncode == 1, refused
    lines = refused.stderr.strip().splitlines()
    assert (
        len(lines) == 1 and "0002_automations.sql" in lines[0] and "changed after it was applied" in lines[0]
    ), lines
    assert "Traceback" not in refused.stderr

    doctor = engine("doctor", sql_dir=sql_dir, database_url=database_url)
    assert "0002_automations.sql changed after it was applied" in doctor.stdout, doctor.stdout


def test_migrate_from_a_folder_without_migrations_says_so(database_url: str, tmp_path: Path) -> None:
    result = engine("db", "migrate", sql_dir=tmp_path, database_url=database_url)
    assert result.returncode == 1
    assert (
        f"no migration files in {tmp_path / 'migrations'}: ENGINE_SQL_DIR names a folder without them"
        in result.stderr
    )
