"""`engine demo` as `make demo` runs it, in a subprocess, twice, against a fresh test database
(ENGINE_DATABASE_URL): every example rule fires, every delivery arrives, the story ends in
under a minute, and the second run tells the same story in a project of its own."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from engine.demo.rules import EXPECTED, PREFIX
from engine.rules import load_rules

ENGINE = Path(sys.executable).parent / "engine"
ROOT = Path(__file__).resolve().parents[2]


def _demo(database_url: str) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {**os.environ, "ENGINE_DATABASE_URL": database_url, "COLUMNS": "160"}
    started = time.monotonic()
    done = subprocess.run(
        [str(ENGINE), "demo"], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    return done, time.monotonic() - started


def _fired(conn: psycopg.Connection, project: str) -> dict[str, int]:
    rows = conn.execute(
        "SELECT automation, count(*) FROM automation_history WHERE entity = 'acme' AND project = %s GROUP BY automation",
        (project,),
    ).fetchall()
    return dict(rows)


@pytest.mark.slow
def test_demo_tells_the_whole_story_twice(database_url: str, conn: psycopg.Connection) -> None:
    examples = {loaded.automation.name for loaded in load_rules([ROOT / "rules"])}
    assert examples == set(EXPECTED)  # the demo knows what each example rule should do

    projects = []
    for attempt in (1, 2):
        done, seconds = _demo(database_url)
        assert done.returncode == 0, f"demo {attempt} failed:\n{done.stdout}\n{done.stderr}"
        assert seconds < 60, f"demo {attempt} took {seconds:.1f} s"
        assert "Traceback" not in done.stderr
        assert "apscheduler" not in done.stderr  # its job is never skipped nor late, so it has nothing to say
        project = re.search(r"scoped to project acme/(vision-demo-[0-9-]+)", done.stdout).group(1)
        projects.append(project)
        for section in (
            "trigger history (automation_history)",
            "deliveries received by the local receiver",
            "Look for yourself",
            "FROM automation_history",
        ):
            assert section in done.stdout
        assert "✓ valid" in done.stdout  # the signed accuracy webhooks were verified by the receiver
        assert "✗ invalid" not in done.stdout

        fired = _fired(conn, project)
        for name, expected in EXPECTED.items():
            assert fired.get(PREFIX + name, 0) >= expected.at_least, (name, fired, done.stdout)
        # the SQL the demo prints runs as printed (with psql's quoting left to the shell)
        sql = re.search(r'-c "(SELECT .*? ORDER BY trigger_id)"', done.stdout).group(1)
        assert len(conn.execute(sql).fetchall()) == sum(fired.values())
    assert projects[0] != projects[1]

    # every delivery of both demos arrived (the no_op one is recorded as skipped, never sent)
    statuses = conn.execute(
        "SELECT a.name, d.status, count(*) FROM deliveries d JOIN automations a ON a.id = d.automation_id"
        " GROUP BY a.name, d.status ORDER BY 1, 2"
    ).fetchall()
    seen = {(name, status) for name, status, _ in statuses}
    assert {
        (PREFIX + name, "skipped" if name == "europe-tag" else "succeeded")
        for name, expected in EXPECTED.items()
        if expected.at_least
    } <= seen
    assert {status for _, status in seen} <= {"skipped", "succeeded"}

    # the story itself: states of the runs, and what never fires
    states = dict(
        conn.execute(
            "SELECT r.name, r.state FROM runs r JOIN projects p ON p.id = r.project_id WHERE p.name = %s",
            (projects[1],),
        ).fetchall()
    )
    assert states["resnet-bad-aug"] == "failed" and states["resnet-long"] == "killed"
    assert states["resnet-hang"] == "killed"  # killed once its stall had fired
    assert sum(1 for s in states.values() if s == "finished") == 7
    # the z-score fires at the corrupt batch; the stall once, for the run that hung, found by the
    # service from its real ingestion stamp (its deadline: the last value + the rule's 30m)
    spikes = conn.execute(
        "SELECT h.run_name, h.step FROM automation_history h"
        " WHERE h.automation = 'demo.loss-spike-zscore' AND h.project = %s",
        (projects[1],),
    ).fetchall()
    assert spikes == [("resnet-spike", 36)]
    stalls = conn.execute(
        "SELECT r.name, t.value_time - r.last_metric_at FROM triggers t JOIN automations a ON a.id = t.automation_id"
        " JOIN runs r ON r.id = t.run_pk JOIN projects p ON p.id = r.project_id"
        " WHERE a.name = 'demo.run-stalled' AND p.name = %s",
        (projects[1],),
    ).fetchall()
    assert stalls == [("resnet-hang", timedelta(minutes=30))]
    killed_triggers = conn.execute(
        "SELECT count(*) FROM triggers t JOIN runs r ON r.id = t.run_pk WHERE r.name = 'resnet-long'"
        " AND t.event_type = 'run_state'"
    ).fetchone()[0]
    assert killed_triggers == 0
    change = conn.execute(
        "SELECT h.run_name, h.value, t.prior_aggregate, t.current_aggregate FROM automation_history h"
        " JOIN triggers t ON t.id = h.trigger_id WHERE h.automation = 'demo.loss-down-25pct' AND h.project = %s",
        (projects[1],),
    ).fetchone()
    assert change[0] == "finetune-plateau" and change[1] <= -0.25 and change[3] < change[2]
    # the demo's automations are left disabled, so they never react to the user's own runs
    enabled = conn.execute("SELECT count(*) FROM automations WHERE enabled").fetchone()[0]
    assert enabled == 0
