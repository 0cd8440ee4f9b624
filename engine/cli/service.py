"""`engine serve`, `engine history`, and the rule commands that need the compiler:
`engine rules compile` and `engine rules test` (the backtest)."""

from __future__ import annotations

import logging
import sys
from datetime import datetime
from pathlib import Path
from typing import Optional

import typer
from psycopg.rows import dict_row
from rich.console import Console
from rich.syntax import Syntax
from rich.table import Table

from engine import db as enginedb
from engine import since as since_
from engine.cli.output import Format, FormatOption, cell, print_rows, print_table
from engine.cli.rules import rule_paths, rules_app
from engine.compiler import compile_rule
from engine.evaluator import backtest
from engine.rules import load_rules
from engine.settings import get_settings

# Piped output of `rules compile` (scripts, tests) gets 200 columns instead of rich's 80.
console = Console(width=None if sys.stdout.isatty() else 200)

# The columns of automation_history (and of `--format json|tsv`), in the view's order.
HISTORY_KEYS = (
    "trigger_id", "fired_at", "automation", "event_type", "entity", "project", "run_id", "run_name", "metric",
    "value", "step", "alias", "tag", "artifact_version", "action_type", "delivery_status", "attempts",
    "last_http_status", "last_error", "automation_deleted_at",
)


def _since(text: str) -> datetime:
    """--since as a usage error (not a traceback) when it cannot be read."""
    try:
        return since_.parse_since(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def serve(
    interval: Optional[float] = typer.Option(
        None, "--interval", help="Seconds between ticks (env ENGINE_INTERVAL, default 5)."
    ),
    metrics_port: Optional[str] = typer.Option(
        None, "--metrics-port", metavar="[HOST:]PORT",
        help="Serve Prometheus metrics at /metrics on this port (env ENGINE_METRICS_PORT, default off), on "
        "127.0.0.1 unless a host is given: 0.0.0.0:9108 listens on every interface (env ENGINE_METRICS_ADDRESS).",
    ),
) -> None:
    """Run the evaluation service until SIGINT/SIGTERM."""
    from engine.metrics import listen_address
    from engine.scheduler import Service

    enginedb.set_application_name("engine-serve")
    settings = get_settings()
    if metrics_port is not None:
        try:
            host, port = listen_address(metrics_port)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--metrics-port") from None
        settings = settings.model_copy(update={"metrics_port": port} | ({"metrics_address": host} if host else {}))
    logging.getLogger().setLevel(settings.log_level.upper())
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # one INFO line per job run is noise
    with enginedb.connect() as conn:
        enginedb.ensure_schema(conn)
    Service(settings, interval=interval).run_forever()


def history(
    automation: Optional[str] = typer.Option(
        None, "--automation", "-a", help="Only this automation (deleted ones included: history is kept)."
    ),
    since: Optional[datetime] = typer.Option(
        None, "--since", parser=_since, metavar="WHEN", help="Only triggers fired since then. " + since_.HELP
    ),
    limit: int = typer.Option(50, "--limit", "-n", min=1, help="At most this many rows."),
    fmt: FormatOption = Format.table,
) -> None:
    """Show the trigger history (the automation_history view), newest first."""
    with enginedb.connect() as conn, enginedb.boundary(), conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(enginedb.query("history"), {"automation": automation, "since": since, "limit": limit}).fetchall()
    if fmt is not Format.table:
        print_rows(rows, HISTORY_KEYS, fmt)
        return
    table = Table("id", "fired at", "automation", "event", "run", "metric", "value", "step", "alias/tag/version", "delivery")
    for r in rows:
        artifact = " ".join(str(x) for x in (r["alias"], r["tag"], r["artifact_version"]) if x)
        delivery = f"{r['delivery_status']} ({r['attempts']})" + (f" http {r['last_http_status']}" if r["last_http_status"] else "")
        deleted = " [dim](deleted)[/dim]" if r["automation_deleted_at"] else ""
        table.add_row(
            str(r["trigger_id"]), r["fired_at"].strftime("%Y-%m-%d %H:%M:%S"), cell(r["automation"]) + deleted,
            r["event_type"], cell(r["run_name"] or r["run_id"]), cell(r["metric"]),
            "" if r["value"] is None else f"{r['value']:.6g}", "" if r["step"] is None else str(r["step"]),
            cell(artifact), delivery,
        )
    print_table(table)
    if rows:
        console.print(f"[dim]why did it fire? engine explain {rows[0]['trigger_id']}[/dim]")


@rules_app.command("compile")
def compile_command(
    paths: list[Path] = typer.Argument(None, help="Rule files or folders (default: ENGINE_RULES_PATH)."),
    mode: str = typer.Option("live", "--mode", help="live (incremental) or history (backtest)."),
) -> None:
    """Print the SQL each rule compiles to, with its bound parameters."""
    for loaded in load_rules(rule_paths(paths)):
        compiled = compile_rule(loaded.automation, "history" if mode == "history" else "live")
        console.rule(f"{compiled.automation} ({compiled.kind}, {compiled.mode})")
        console.print(Syntax(compiled.pretty(), "sql", word_wrap=True))
        console.print({k: v for k, v in compiled.params.items()})


@rules_app.command("test")
def test_command(
    paths: list[Path] = typer.Argument(None, help="Rule files or folders (default: ENGINE_RULES_PATH)."),
    start: datetime = typer.Option("7d", "--since", parser=_since, metavar="WHEN", help=since_.HELP),
) -> None:
    """Backtest: what the rules would have fired over stored history. Sends and writes nothing."""
    with enginedb.connect() as conn:
        enginedb.ensure_schema(conn)
        loaded = load_rules(rule_paths(paths), conn=conn)
        for item in loaded:
            firings = backtest(conn, item.automation, start)
            labels = {}
            run_pks = [f.run_pk for f in firings if f.run_pk is not None]
            if run_pks:
                labels = {r[0]: r[2] or r[1] for r in conn.execute(enginedb.query("run_labels"), {"run_pks": run_pks})}
            table = Table("time", "run", "step", "value", "alias/tag", title=f"{item.automation.name}: {len(firings)} would fire")
            for f in firings:
                table.add_row(
                    f.time.strftime("%Y-%m-%d %H:%M:%S"),
                    labels.get(f.run_pk, "") if f.run_pk else "",
                    "" if f.step is None else str(f.step),
                    "" if f.value is None else f"{f.value:.6g}",
                    f.alias or f.tag or "",
                )
            print_table(table)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.command("history")(history)
