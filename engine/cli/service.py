"""`engine serve` and `engine history`."""

from __future__ import annotations

import logging
from datetime import datetime

import typer
from rich.console import Console
from rich.table import Table

from engine import db as enginedb
from engine import since as since_
from engine.cli.backend import open_backend
from engine.cli.output import Format, FormatOption, cell, parse_when, print_rows, print_table
from engine.settings import get_settings

console = Console()

# The columns of automation_history (and of `--format json|tsv`), in the view's order.
HISTORY_KEYS = (
    "trigger_id",
    "fired_at",
    "automation",
    "event_type",
    "entity",
    "project",
    "run_id",
    "run_name",
    "metric",
    "value",
    "step",
    "alias",
    "tag",
    "artifact_version",
    "action_type",
    "delivery_status",
    "attempts",
    "last_http_status",
    "last_error",
    "automation_deleted_at",
    "rule_type",
)


def serve(
    interval: float | None = typer.Option(
        None, "--interval", help="Seconds between ticks (env ENGINE_INTERVAL, default 5)."
    ),
    metrics_port: str | None = typer.Option(
        None,
        "--metrics-port",
        metavar="[HOST:]PORT",
        help="Serve Prometheus metrics at /metrics on this port (env ENGINE_METRICS_PORT, default off), on "
        "127.0.0.1 unless a host is given: 0.0.0.0:9108 listens on every interface (env ENGINE_METRICS_ADDRESS).",
    ),
) -> None:
    """Run the evaluation service until SIGINT/SIGTERM."""
    from engine.prometheus import listen_address
    from engine.scheduler import Service

    enginedb.set_application_name("engine-serve")
    settings = get_settings()
    if metrics_port is not None:
        try:
            host, port = listen_address(metrics_port)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--metrics-port") from None
        settings = settings.model_copy(
            update={"metrics_port": port} | ({"metrics_address": host} if host else {})
        )
    logging.getLogger().setLevel(settings.log_level.upper())
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # one INFO line per job run is noise
    with enginedb.connection() as conn:
        enginedb.ensure_schema(conn)
    Service(settings, interval=interval).run_forever()


def history(
    automation: str | None = typer.Option(
        None, "--automation", "-a", help="Only this automation (deleted ones included: history is kept)."
    ),
    since: datetime | None = typer.Option(
        None,
        "--since",
        parser=parse_when,
        metavar="WHEN",
        help="Only triggers fired since then. " + since_.HELP,
    ),
    limit: int = typer.Option(50, "--limit", "-n", min=1, help="At most this many rows."),
    fmt: FormatOption = Format.table,
) -> None:
    """Show the trigger history (the automation_history view), newest first."""
    with open_backend() as backend:
        rows = backend.history(automation, since, limit)
    if fmt is not Format.table:
        print_rows(rows, HISTORY_KEYS, fmt)
        return
    table = Table(
        "id",
        "fired at",
        "automation",
        "event",
        "run",
        "metric",
        "value",
        "step",
        "alias/tag/version",
        "delivery",
    )
    for r in rows:
        artifact = " ".join(str(x) for x in (r["alias"], r["tag"], r["artifact_version"]) if x)
        delivery = f"{r['delivery_status']} ({r['attempts']})" + (
            f" http {r['last_http_status']}" if r["last_http_status"] else ""
        )
        deleted = " [dim](deleted)[/dim]" if r["automation_deleted_at"] else ""
        table.add_row(
            str(r["trigger_id"]),
            r["fired_at"].strftime("%Y-%m-%d %H:%M:%S"),
            cell(r["automation"]) + deleted,
            r["event_type"],
            cell(r["run_name"] or r["run_id"]),
            cell(r["metric"]),
            "" if r["value"] is None else f"{r['value']:.6g}",
            "" if r["step"] is None else str(r["step"]),
            cell(artifact),
            delivery,
        )
    print_table(table)
    if rows:
        console.print(f"[dim]why did it fire? engine explain {rows[0]['trigger_id']}[/dim]")


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.command("history")(history)
