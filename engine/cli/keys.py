"""`engine keys create | list | revoke`: the API keys of `engine web`.

Keys are managed here, with database access, never over HTTP. A key is printed once, alone
on the last line of `create`'s output; the database keeps only its hash, so nothing here
(nor `list`) can show it again.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from engine import db as enginedb
from engine import keys
from engine.cli.output import Format, FormatOption, print_rows, print_table
from engine.rules.duration import parse_duration

console = Console()
err_console = Console(stderr=True)
keys_app = typer.Typer(
    help="API keys of `engine web`: create (printed once), list, revoke.", no_args_is_help=True
)
# The keys of `engine keys list --format json|tsv` (ApiKey.as_row).
LIST_KEYS = ("name", "role", "scopes", "created_at", "last_used_at", "expires_at", "revoked_at")


@keys_app.command()
def create(
    name: Annotated[str, typer.Argument(help="A name for the key (letters, digits, . _ -), unique.")],
    role: Annotated[
        str,
        typer.Option(
            "--role",
            help="ingest (training nodes: runs, points, artifacts), read (analysts: read everything) or admin "
            "(CI: also apply, enable, disable and delete automations, redeliver, kill runs).",
        ),
    ],
    scope: Annotated[
        list[str],
        typer.Option(
            "--scope",
            help="Where the key acts (repeat for several): entity/project, entity/*, registry:NAME, registry:*, or *.",
        ),
    ],
    expires: Annotated[
        str | None,
        typer.Option(
            "--expires", metavar="DURATION", help="Valid this long, e.g. 90d or 12h (default: no expiry)."
        ),
    ] = None,
) -> None:
    """Create a key; it is printed once, alone on the last line (only its hash is stored)."""
    try:
        expires_in = None if expires is None else parse_duration(expires)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--expires") from None
    with enginedb.connect(autocommit=True) as conn:
        enginedb.ensure_schema(conn)
        try:
            key, stored = keys.create(conn, name, role=role, scopes=scope, expires_in=expires_in)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    until = f"until {stored.expires_at:%Y-%m-%d %H:%M %Z}" if stored.expires_at else "without expiry"
    err = err_console.print
    err(
        f"created API key {escape(stored.name)}: role {stored.role}, scopes {escape(' '.join(stored.scopes))}, {until}.",
        soft_wrap=True,
    )
    err("It is shown only this once (the database keeps its hash): store it now.", soft_wrap=True)
    # On stdout, alone: `KEY=$(engine keys create …)` captures exactly the key.
    print(key, flush=True)


@keys_app.command("list")
def list_(fmt: FormatOption = Format.table) -> None:
    """Every key: name, role, scopes, created, last used, expires, revoked (never the key)."""
    with enginedb.connect(autocommit=True) as conn:
        enginedb.ensure_schema(conn)
        rows = [k.as_row() for k in keys.list_keys(conn)]
    if fmt is not Format.table:
        print_rows(rows, LIST_KEYS, fmt)
        return
    if not rows:
        console.print("no API keys (create one with `engine keys create NAME --role ROLE --scope PATTERN`)")
        return
    table = Table("name", "role", "scopes", "created", "last used", "expires", "revoked")

    def when(value) -> str:
        return value.strftime("%Y-%m-%d %H:%M") if value else ""

    for r in rows:
        table.add_row(
            escape(r["name"]),
            r["role"],
            escape(" ".join(r["scopes"])),
            when(r["created_at"]),
            when(r["last_used_at"]),
            when(r["expires_at"]),
            when(r["revoked_at"]),
        )
    print_table(table)


@keys_app.command()
def revoke(name: Annotated[str, typer.Argument(help="The key's name (see `engine keys list`).")]) -> None:
    """Revoke a key: every request with it is refused (401) within ENGINE_WEB_KEY_CACHE seconds
    (1 s by default: each engine web process takes a key it checked that recently)."""
    with enginedb.connect(autocommit=True) as conn:
        enginedb.ensure_schema(conn)
        changed = keys.revoke(conn, name)
    console.print(
        f"revoked {name}" if changed else f"{name} was already revoked", markup=False, highlight=False
    )


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")
