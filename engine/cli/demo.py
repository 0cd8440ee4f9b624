"""`engine demo`: start the embedded database, migrate, log a sample run, show what was stored.

A temporary demo. The full one (example rules, a webhook receiver, the evaluation service and
several simulated runs) replaces it in a later issue.
"""

from __future__ import annotations

import math
import uuid
from datetime import timedelta

import psycopg
import typer
from psycopg.types.json import Jsonb
from rich.console import Console
from rich.table import Table

from engine import clock
from engine import db as enginedb
from engine.settings import get_settings

console = Console()

PROJECT = ("demo", "mnist")
METRICS = ("loss", "accuracy")


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

    with enginedb.connect(url) as conn, enginedb.boundary():
        run_pk, run_id = _log_sample_run(conn, steps, settings.series_tail)
    console.print(f"[bold]3.[/] logged run {run_id} of {'/'.join(PROJECT)}: {steps} steps of {', '.join(METRICS)}")

    with enginedb.connect(url) as conn, enginedb.boundary():
        _show(conn, run_pk)

    console.print("\nLook for yourself:")
    # soft_wrap: a command split over two lines could not be pasted
    console.print(f'  psql "$(.venv/bin/engine db url)" -c "SELECT * FROM runs WHERE run_id = \'{run_id}\'"', soft_wrap=True)
    if not settings.database_url:
        console.print("The embedded database keeps running; stop it with `.venv/bin/engine db down`.", soft_wrap=True)


# TODO(lead): log through the SDK (engine.init / run.log / run.finish) once it exists; these
# raw writes stand in for it, keep its rules (each change with its event, in one transaction;
# series_state maintained with the points) and go away then.
def _log_sample_run(conn: psycopg.Connection, steps: int, tail: int) -> tuple[int, str]:
    run_id = uuid.uuid4().hex[:8]  # a new run every time: running the demo twice works
    author = "demo"
    with conn.transaction():
        project_id = conn.execute(
            enginedb.query("demo_upsert_project"), {"entity": PROJECT[0], "project": PROJECT[1]}
        ).fetchone()[0]
        run_pk = conn.execute(
            enginedb.query("demo_insert_run"),
            {"project_id": project_id, "run_id": run_id, "name": f"demo-{run_id}", "user": author,
             "config": Jsonb({"lr": 3e-4, "batch_size": 64, "epochs": steps})},
        ).fetchone()[0]
        transition = {"project_id": project_id, "run_pk": run_pk, "author": author}
        conn.execute(enginedb.query("demo_insert_transition"),
                     transition | {"from_state": None, "to_state": "running", "exit_code": None})

    # All points in one transaction, as one SDK flush would write them.
    start = clock.now()
    with conn.transaction():
        key_ids = {key: conn.execute(enginedb.query("demo_metric_key"), {"key": key}).fetchone()[0] for key in METRICS}
        series: dict[str, list[tuple[int, object, float]]] = {key: [] for key in METRICS}
        # The SDK numbers points by flush batch; for one fresh run the ordinal alone keeps logging order.
        seq = 0
        for step in range(steps):
            at = start + timedelta(seconds=step)
            for key, value in _sample(step).items():
                conn.execute(
                    enginedb.query("demo_insert_point"),
                    {"time": at, "run_pk": run_pk, "key_id": key_ids[key], "step": step, "seq": seq, "value": value},
                )
                series[key].append((step, at, value))
                seq += 1
        for key, points in series.items():
            last = points[-tail:]
            conn.execute(
                enginedb.query("upsert_series"),
                {"key_id": key_ids[key], "run_pk": run_pk, "n_new": len(points), "tail": tail,
                 "steps": [p[0] for p in last], "times": [p[1] for p in last], "values": [p[2] for p in last]},
            )

    with conn.transaction():
        conn.execute(enginedb.query("demo_finish_run"), {"run_pk": run_pk})
        conn.execute(enginedb.query("demo_insert_transition"),
                     transition | {"from_state": "running", "to_state": "finished", "exit_code": 0})
    return run_pk, run_id


def _show(conn: psycopg.Connection, run_pk: int) -> None:
    """Print what the database holds for the run: its row, its metric points, its events."""
    cur = conn.execute(enginedb.query("demo_show_run"), {"run_pk": run_pk})
    row = cur.fetchone()
    table = Table("column", "value", title="runs", title_justify="left")
    for col, value in zip((d.name for d in cur.description), row):
        table.add_row(col, "" if value is None else str(value))
    console.print(table)

    table = Table("metric", "points", "first step", "last step", "last value", title="metric_points", title_justify="left")
    for key, points, first, last, value in conn.execute(enginedb.query("demo_show_points"), {"run_pk": run_pk}):
        table.add_row(key, str(points), str(first), str(last), f"{value:.4f}")
    console.print(table)

    table = Table("id", "time", "type", "author", "details", title="events", title_justify="left")
    for event_id, at, kind, author, details in conn.execute(enginedb.query("demo_show_events"), {"run_pk": run_pk}):
        table.add_row(str(event_id), at.strftime("%Y-%m-%d %H:%M:%S"), kind, author or "", details)
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command()(demo)
