"""`engine silence add|list|end`: mute an automation or a project for a while (engine/actions/silences.py)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from engine import clock
from engine import db as enginedb
from engine.actions import silences
from engine.cli.output import Format, FormatOption, cell, print_rows, print_table
from engine.rules.duration import format_duration, parse_duration
from engine.since import parse_since

console = Console()
silence_app = typer.Typer(
    help="Mute an automation or a project for a while: its triggers are recorded as silenced, never sent.",
    no_args_is_help=True,
)
# The keys of `engine silence list --format json|tsv`.
SILENCE_KEYS = (
    "id",
    "automation",
    "project",
    "starts_at",
    "ends_at",
    "reason",
    "created_by",
    "created_at",
    "ended_at",
    "ended_by",
    "active",
    "silenced",
)


def _duration(text: str) -> timedelta:
    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if value <= timedelta(0):
        raise typer.BadParameter("must be positive")
    return value


def _until(text: str) -> datetime:
    """An absolute time in the future (ISO 8601; UTC when no zone is given)."""
    try:
        value = parse_since(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if value <= clock.now():
        raise typer.BadParameter(
            f"{value:%Y-%m-%d %H:%M:%S %Z} is not in the future (a duration goes in --for, e.g. --for 2h)"
        )
    return value


@silence_app.command("add")
def add(
    reason: Annotated[str, typer.Option("--reason", help="Why: shown with every trigger it silences.")],
    automation: Annotated[
        str | None, typer.Option("--automation", "-a", help="Silence this automation (by name).")
    ] = None,
    project: Annotated[
        str | None,
        typer.Option(
            "--project", "-p", help="Silence every automation's triggers in this project (entity/project)."
        ),
    ] = None,
    for_: Annotated[
        timedelta | None,
        typer.Option("--for", parser=_duration, metavar="DURATION", help="How long, from now: 30m, 2h, 1d."),
    ] = None,
    until: Annotated[
        datetime | None,
        typer.Option(
            "--until",
            parser=_until,
            metavar="TIME",
            help="Until then: 2026-12-03T18:00, 2026-12-03 18:00+01:00 (UTC when no zone is given).",
        ),
    ] = None,
) -> None:
    """Silence an automation or a project from now on: triggers are still recorded (status
    silenced) but never sent, not even once the silence has ended."""
    if (automation is None) == (project is None):
        raise typer.BadParameter("give exactly one of --automation NAME or --project ENTITY/PROJECT")
    if (for_ is None) == (until is None):
        raise typer.BadParameter("give exactly one of --for DURATION or --until TIME")
    with enginedb.connect(autocommit=True) as conn:
        silence_id = silences.add(
            conn, automation=automation, project=project, duration=for_, until=until, reason=reason
        )
    ends = clock.now() + for_ if for_ is not None else until
    assert ends is not None
    what = f"automation {automation}" if automation else f"project {project}"
    console.print(
        f"silence {silence_id}: {escape(what)} until {ends:%Y-%m-%d %H:%M:%S %Z} "
        f"(end it early: engine silence end {silence_id})",
        soft_wrap=True,
    )


@silence_app.command("list")
def list_(
    all_: Annotated[bool, typer.Option("--all", help="Also the silences that have ended.")] = False,
    limit: Annotated[int, typer.Option(min=1, help="At most this many rows.")] = 100,
    fmt: FormatOption = Format.table,
) -> None:
    """The silences that are active (and, with --all, those that have ended), active first."""
    with enginedb.connect(autocommit=True) as conn:
        rows = silences.list_silences(conn, include_ended=all_, limit=limit)
    if fmt is not Format.table:
        print_rows(rows, SILENCE_KEYS, fmt)
        return
    now = clock.now()
    table = Table(title=f"{len(rows)} silences")
    for column in ("id", "silences", "state", "until", "reason", "by", "silenced"):
        table.add_column(column, no_wrap=column not in ("silences", "reason"))
    for r in rows:
        if r["active"]:
            state = f"[yellow]active[/], {format_duration(r['ends_at'] - now)} left"
        elif r["ended_at"] is not None:
            state = "[dim]ended early[/]"
        else:
            state = "[dim]ended[/]"
        target = f"automation {r['automation']}" if r["automation"] else f"project {r['project']}"
        table.add_row(
            str(r["id"]),
            cell(target),
            state,
            f"{r['ends_at']:%Y-%m-%d %H:%M:%S}",
            cell(r["reason"], 60),
            cell(r["created_by"]),
            str(r["silenced"]),
        )
    print_table(table)


@silence_app.command("end")
def end(silence_id: Annotated[int, typer.Argument(help="The silence's id (engine silence list).")]) -> None:
    """End a silence now. What it silenced stays silenced: it is never sent."""
    with enginedb.connect(autocommit=True) as conn:
        ended = silences.end(conn, silence_id)
    console.print(f"silence {silence_id} ended at {ended:%Y-%m-%d %H:%M:%S %Z}")


def register(app: typer.Typer) -> None:
    app.add_typer(silence_app, name="silence")
