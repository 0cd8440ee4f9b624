"""A training loop in a subprocess for the stop_run tests, over either transport: the SDK
picks the database (ENGINE_DATABASE_URL) or the server (ENGINE_URL + ENGINE_API_KEY) from the
environment the test gives the process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from typing import IO, Any

import psycopg
from psycopg.rows import dict_row

STOP_RULE = """\
name: {name}
scope: {{project: acme/vision}}
event: {{type: run_metric_threshold, metric: loss, window: 1, operator: ">", threshold: 1000000}}
action: {{type: stop_run}}
"""

# A training step per line of stdin (the loss to log); each step is flushed at once, so the
# test knows which flush learns of the stop request.
STEPPED = textwrap.dedent(
    """\
    import sys
    import engine

    try:
        with engine.init(project="acme/vision", id=sys.argv[1], system_metrics_interval=0) as run:
            for line in sys.stdin:
                run.log({"loss": float(line)})
                run.flush()
                print("stored", run.step, run.stop_requested, flush=True)
    except engine.RunStopped as exc:
        print("stopped", exc.automation, run.step, run.stop_requested, run.state, flush=True)
    """
)

# A training loop left to itself: the background thread flushes every ENGINE_FLUSH_INTERVAL.
FREE_RUNNING = textwrap.dedent(
    """\
    import sys
    import time
    import engine

    try:
        with engine.init(project="acme/vision", id=sys.argv[1], system_metrics_interval=0) as run:
            for step in range(100_000):
                run.log({"loss": 2e6 if step == 20 else 0.5})
                time.sleep(0.002)  # the work of a training step
    except engine.RunStopped as exc:
        print("stopped", exc.automation, run.step, run.state, flush=True)
    """
)


def over_http(url: str, key: str, **env: str) -> dict[str, str]:
    """The environment of a training node that reaches the engine through `engine web` only:
    no ENGINE_* setting of the test's (no database URL), the server's address and a key."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}
    return clean | {"ENGINE_URL": url, "ENGINE_API_KEY": key} | env


def start(
    script: str, run_id: str, *, environment: dict[str, str] | None = None, **env: str
) -> subprocess.Popen:
    """`script` in a subprocess for run `run_id`: in `environment` when given (else the
    test's own, the database transport), with `env` added."""
    return subprocess.Popen(
        [sys.executable, "-c", script, run_id],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**(environment if environment is not None else os.environ), **env},
    )


def step(proc: subprocess.Popen, loss: str) -> str:
    """One step of STEPPED: log `loss`, flush; the line it printed."""
    stdin, stdout = proc.stdin, proc.stdout
    assert stdin is not None and stdout is not None
    stdin.write(loss + "\n")
    stdin.flush()
    return _line(stdout, proc)


def _line(stdout: IO[str], proc: subprocess.Popen) -> str:
    line = stdout.readline().strip()
    assert line, proc.stderr.read() if proc.stderr else "no output"
    return line


def run_row(conn: psycopg.Connection, run_id: str) -> dict[str, Any]:
    """A run's state, its number of points and the details of its last event."""
    row = (
        conn.cursor(row_factory=dict_row)
        .execute(
            "SELECT r.id, r.state, (SELECT count(*) FROM metric_points m WHERE m.run_pk = r.id) AS points,"
            " (SELECT e.details FROM events e WHERE e.run_pk = r.id ORDER BY e.id DESC LIMIT 1) AS last_event"
            " FROM runs r WHERE r.run_id = %s",
            (run_id,),
        )
        .fetchone()
    )
    assert row is not None
    return row


def stop_requests(conn: psycopg.Connection) -> list[dict[str, Any]]:
    return (
        conn.cursor(row_factory=dict_row)
        .execute("SELECT * FROM stop_requests ORDER BY trigger_id")
        .fetchall()
    )
