"""`engine db up | down | status | url | migrate`."""

from __future__ import annotations

import typer
from rich.console import Console

from engine import db as enginedb
from engine.localdb import LocalDatabase
from engine.settings import get_settings

console = Console()
db_app = typer.Typer(help="The embedded TimescaleDB (under ENGINE_DATA_DIR) and migrations.", no_args_is_help=True)


def _local() -> LocalDatabase:
    return LocalDatabase(get_settings().data_dir)


@db_app.command()
def up() -> None:
    """Initialise (first time) and start the embedded database. Harmless when it runs."""
    status = _local().up()
    console.print(f"embedded database {status.describe()}")


@db_app.command()
def down() -> None:
    """Stop the embedded database."""
    console.print("stopped" if _local().down() else "was not running")


@db_app.command()
def status() -> None:
    """Say whether the embedded database runs and where (or which URL is configured)."""
    settings = get_settings()
    if settings.database_url:
        console.print(f"using ENGINE_DATABASE_URL={settings.database_url}")
    st = _local().status()
    console.print(f"embedded database {st.describe()}")
    if not st.running and not settings.database_url:
        raise typer.Exit(3)


@db_app.command()
def url() -> None:
    """Print the database URL the engine uses (for psql: psql "$(engine db url)")."""
    print(enginedb.database_url(start=False))


@db_app.command()
def migrate() -> None:
    """Apply pending migrations and recreate the views (idempotent)."""
    with enginedb.connect() as conn:
        applied = enginedb.migrate(conn)
    console.print("applied: " + ", ".join(applied) if applied else "schema up to date")


def register(app: typer.Typer) -> None:
    app.add_typer(db_app, name="db")
