"""The engine as a wheel, installed into a fresh virtual environment, migrates a database from
zero and validates the example rules, run from a folder outside the checkout: the SQL ships
inside the package and nothing is read from the source tree.

The wheel is built from a copy of the sources (the build leaves build/ and *.egg-info behind)
with pip's build isolation: the build backend comes from the package index, as it does for
`pip install -e .` in scripts/setup. The fresh environment borrows the runtime dependencies of
the test's own environment through a path entry (no network, seconds instead of a minute), and
`pip check` proves they satisfy what the wheel declares. That path entry is a plain folder on
sys.path: the .pth files in it, among them the editable install of the checkout, are not run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import psycopg

from tests.schema_dump import schema_text

ROOT = Path(__file__).resolve().parents[2]
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check"]


def run(
    args: list[str | Path],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, f"{' '.join(map(str, args))}\n{result.stdout}\n{result.stderr}"
    return result


def test_the_wheel_migrates_and_validates_rules_outside_the_checkout(
    empty_database_url: str, tmp_path: Path
) -> None:
    source = tmp_path / "source"
    shutil.copytree(ROOT / "engine", source / "engine", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    run([*PIP, "wheel", "--no-deps", "--quiet", "--wheel-dir", tmp_path / "dist", source])
    (wheel,) = (tmp_path / "dist").glob("engine-*.whl")

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    run([*PIP, "--python", python, "install", "--no-deps", "--no-index", "--quiet", wheel])
    purelib = Path(
        run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    )
    (purelib / "borrowed_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([*PIP, "--python", python, "check"])

    workdir = tmp_path / "elsewhere"
    shutil.copytree(ROOT / "rules", workdir / "rules")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ENGINE_", "PYTHON", "VIRTUAL_ENV"))}
    env |= {"ENGINE_DATABASE_URL": empty_database_url, "ENGINE_DATA_DIR": str(tmp_path / "data")}

    where = run(
        [python, "-c", "import engine, engine.db; print(engine.__file__); print(engine.db.SQL_DIR)"],
        cwd=workdir,
        env=env,
    )
    package, sql_dir = where.stdout.split()
    assert package.startswith(str(purelib)) and sql_dir == str(purelib / "engine" / "sql"), where.stdout

    migrated = run([venv / "bin" / "engine", "db", "migrate"], cwd=workdir, env=env)
    assert migrated.stdout.startswith("applied: 0001_core.sql, 0002_automations.sql, 0004_sdk.sql"), (
        migrated.stdout
    )
    committed = (ROOT / "engine" / "sql" / "schema.sql").read_text()
    assert schema_text(empty_database_url) == committed, (
        "the wheel's migrations leave another schema than schema.sql"
    )
    with psycopg.connect(empty_database_url) as conn:
        assert conn.execute("SELECT count(*) FROM automation_history").fetchone() == (0,)

    validated = run([venv / "bin" / "engine", "rules", "validate", "rules/"], cwd=workdir, env=env)
    files = len(list((ROOT / "rules").glob("*.yaml")))
    assert validated.stdout.startswith("ok: ") and f" rules in {files} files" in validated.stdout, (
        validated.stdout
    )
