"""`engine db up | down | status | url | migrate | destroy`."""

from __future__ import annotations

import typer

from engine import db as enginedb
from engine.doctor import database_checks, redact_url
from engine.exceptions import LocalDatabaseError
from engine.localdb import LocalDatabase, Status
from engine.settings import get_settings

db_app = typer.Typer(
    help="The embedded TimescaleDB (under ENGINE_DATA_DIR) and migrations.", no_args_is_help=True
)

# `engine db status` exit codes (documented in its --help and the README).
USABLE, NOT_USABLE, NOT_RUNNING = 0, 1, 3


def _local() -> LocalDatabase:
    return LocalDatabase(get_settings().data_dir)


def _say(text: str) -> None:
    # plain echo: paths and URLs stay on one line, whatever the terminal's width (tests and scripts read them)
    typer.echo(text)


def _report(status: Status) -> None:
    _say(f"embedded database {status.describe()}")
    if status.initialised:
        for line in status.where():
            _say(f"  {line}")


@db_app.command()
def up() -> None:
    """Initialise (first time) and start the embedded database. Harmless when it runs.

    As root the server runs as the `postgres` user (PostgreSQL refuses root); when that user
    cannot enter ENGINE_DATA_DIR (a checkout under /root), the files go to /var/lib/engine/
    and `engine db status` says where.
    """
    _report(_local().up())


@db_app.command()
def down() -> None:
    """Stop the embedded database."""
    _say("stopped" if _local().down() else "was not running")


@db_app.command()
def status() -> None:
    """Say which database the engine uses and whether it can: exit code 0 when it can.

    With ENGINE_DATABASE_URL set (its password hidden): whether that server answers, its
    TimescaleDB, and whether the migrations are applied. Without it: whether the embedded
    database runs, where its files are, and the same checks. Exit code 1: the database answers
    but cannot be used yet (the fix is printed); 3: it does not answer, or is not running.
    """
    settings = get_settings()
    local = _local()
    if settings.database_url:
        _say(f"using ENGINE_DATABASE_URL={redact_url(settings.database_url)}")
        checks = database_checks(settings)
        try:
            embedded = local.status()
        except LocalDatabaseError:
            embedded = None  # not the database in use: its own problems are for `engine db up` to report
        if embedded is not None and embedded.initialised:
            state = "runs" if embedded.running else "is stopped"
            _say(
                f"  (the embedded database under {local.data_dir} {state}; it is not used while ENGINE_DATABASE_URL is set)"
            )
    else:
        embedded = local.status()
        _report(embedded)
        if not embedded.running:
            raise typer.Exit(NOT_RUNNING)
        checks = database_checks(settings)
    for check in checks:
        _say(check.render())
    if checks[0].status == "fail":
        raise typer.Exit(NOT_RUNNING)
    if any(check.status == "fail" for check in checks):
        raise typer.Exit(NOT_USABLE)


@db_app.command()
def url(
    show_password: bool = typer.Option(
        False,
        "--show-password",
        help="Print the URL with its password (by default the password is left out).",
    ),
) -> None:
    """Print the database URL the engine uses (for psql: psql "$(engine db url)").

    The password of ENGINE_DATABASE_URL is left out (psql then asks for it, or reads
    PGPASSWORD or ~/.pgpass) unless --show-password is given.
    """
    full = enginedb.database_url(start=False)
    shown = full if show_password else redact_url(full, placeholder=None)
    print(shown)
    if shown != full:
        typer.echo("(password left out: `engine db url --show-password` prints it)", err=True)


@db_app.command()
def migrate() -> None:
    """Apply pending migrations and recreate the views (idempotent)."""
    with enginedb.connection() as conn:
        applied = enginedb.migrate(conn)
    _say("applied: " + ", ".join(applied) if applied else "schema up to date")


@db_app.command()
def destroy(yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation.")) -> None:
    """Stop the embedded database and delete it with all its data, wherever its files are.

    Deletes ENGINE_DATA_DIR and, when the files are kept elsewhere (see `engine db status`),
    that folder too. ENGINE_DATABASE_URL's database is never touched.
    """
    local = _local()
    try:
        folders = list(dict.fromkeys([local.data_dir, local.home]))
    except LocalDatabaseError:
        folders = [local.data_dir]  # a copied marker: only this data dir is ours to delete
    if not any(folder.exists() for folder in folders):
        _say(f"nothing to delete: {local.data_dir} does not exist")
        return
    listed = " and ".join(str(folder) for folder in folders)
    if not yes:
        typer.confirm(f"Delete the embedded database and all its data ({listed})?", abort=True)
    local.destroy()
    _say(f"deleted {listed}")


def register(app: typer.Typer) -> None:
    app.add_typer(db_app, name="db")
