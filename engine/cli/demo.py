"""`engine demo`: start the embedded database, migrate, log a sample run through the SDK,
and show what was stored.

A temporary demo. The full one (example rules, a webhook receiver, the evaluation service and
several simulated runs) replaces it in a later issue.
"""

from __future__ import annotations

import math
import time

import psycopg
import typer
from rich.console import Console
from rich.table import Table

import engine
from engine import db as enginedb
from engine.settings import get_settings

console = Console()

PROJECT = "demo/mnist"


def _sample(step: int) -> dict[str, float]:
    """A plausible training curve: the loss falls towards 0.05 and the accuracy climbs towards 0.98."""
    return {"loss": 0.05 + 2.25 * math.exp(-step / 3), "accuracy": 0.98 - 0.88 * math.exp(-step / 4)}


def demo(
    steps: int = typer.Option(10, "--steps", min=1, max=10_000, help="Steps of the sample run."),
) -> None:
    """Start the embedded database (unless ENGINE_DATABASE_URL is set), migrate, log a sample run, and show it."""
    settings = get_settings()
    where = "ENGINE_DATABASE_URL" if settings.database_url else f"the embedded database under {settings.data_dir}"
    console.print(f"[bold]1.[/] database: {where}")
    url = enginedb.database_url(settings)

    with enginedb.connect(url) as conn:
        applied = enginedb.migrate(conn)
    console.print(f"[bold]2.[/] migrations: {', '.join(applied) if applied else 'schema up to date'}")

    # A short sampling interval, so that the few seconds of the demo have system metrics too.
    with engine.init(project=PROJECT, user="demo", config={"lr": 3e-4, "batch_size": 64, "epochs": steps},
                     system_metrics_interval=0.2) as run:
        for step in range(steps):
            run.log(_sample(step), step=step)
            time.sleep(0.05)  # "training"
    console.print(f"[bold]3.[/] logged run {run.id} of {PROJECT}: {steps} steps of loss and accuracy")

    with enginedb.connect(url) as conn, enginedb.boundary():
        _show(conn, run.pk)

    console.print("\nLook for yourself:")
    # soft_wrap: a command split over two lines could not be pasted
    console.print(f'  psql "$(.venv/bin/engine db url)" -c "SELECT * FROM runs WHERE run_id = \'{run.id}\'"', soft_wrap=True)
    if not settings.database_url:
        console.print("The embedded database keeps running; stop it with `.venv/bin/engine db down`.", soft_wrap=True)


def _show(conn: psycopg.Connection, run_pk: int) -> None:
    """Print what the database holds for the run: its row, its metric points, its events."""
    cur = conn.execute(enginedb.query("demo_show_run"), {"run_pk": run_pk})
    row = cur.fetchone()
    table = Table("column", "value", title="runs", title_justify="left")
    for col, value in zip((d.name for d in cur.description), row):
        table.add_row(col, "" if value is None else str(value))
    console.print(table)

    table = Table("key", "points", "steps", "last value", title="metric_points and system_metrics", title_justify="left")
    table.columns[0].no_wrap = True
    for _, key, points, first, last, value in conn.execute(enginedb.query("demo_show_points"), {"run_pk": run_pk}):
        table.add_row(key, str(points), f"{first}-{last}", f"{value:.4g}")
    console.print(table)

    table = Table("id", "time", "type", "author", "details", title="events", title_justify="left")
    for event_id, at, kind, author, details in conn.execute(enginedb.query("demo_show_events"), {"run_pk": run_pk}):
        table.add_row(str(event_id), at.strftime("%Y-%m-%d %H:%M:%S"), kind, author or "", details)
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command()(demo)
