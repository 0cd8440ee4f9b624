"""Stall-rule benchmark: the cost of checking `run_stalled` rules each tick.

    python bench/stalled.py                  # 10,000 running runs, 100,000 ended ones
    python bench/stalled.py --running 2000 --ended 20000

A fresh database gets one project with `--running` running runs (their last metric value
0-40 minutes ago) and `--ended` finished runs (history a check must not read), and two stall
rules (`after: 30m`, which fires for about a quarter of the runs once, and `after: 1h`, which
never does). Ticks are `Evaluator.tick()` with no other automation: the first one fires, the
next ones find every stall already fired. Printed: `stalled_tick_ms` (median of the steady
ticks; target < 20 with 10,000 running runs) and the first tick's time, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from support.dataset import fresh_database, settings_for

from engine.automations import apply_rules
from engine.evaluation import Evaluator
from engine.rules import parse_rules_text

RULES = """
name: stalled-30m
scope: {project: acme/bench}
event: {type: run_stalled, after: 30m}
action: {type: no_op}
---
name: stalled-1h
scope: {project: acme/bench}
event: {type: run_stalled, after: 1h}
action: {type: no_op}
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--running", type=int, default=10_000)
    parser.add_argument("--ended", type=int, default=100_000)
    parser.add_argument("--ticks", type=int, default=25)
    args = parser.parse_args()
    with fresh_database("stalled") as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("INSERT INTO projects (entity, name) VALUES ('acme', 'bench')")
            (project,) = conn.execute("SELECT id FROM projects").fetchone()  # type: ignore[misc]
            conn.execute(
                "INSERT INTO runs (project_id, run_id, name, state, created_at, last_metric_at, finished_at) "
                "SELECT %(p)s, 'e' || i, 'e' || i, 'finished', now() - interval '2 days', now() - interval '1 day', "
                "now() - interval '1 day' FROM generate_series(1, %(n)s) AS i",
                {"p": project, "n": args.ended},
            )
            conn.execute(
                "INSERT INTO runs (project_id, run_id, name, state, created_at, last_metric_at) "
                "SELECT %(p)s, 'r' || i, 'r' || i, 'running', now() - interval '1 day', "
                "now() - (i %% 40) * interval '1 minute' FROM generate_series(1, %(n)s) AS i",
                {"p": project, "n": args.running},
            )
            conn.execute("ANALYZE runs")
            # enabled a day ago: every deadline of the last day counts
            with conn.transaction():
                apply_rules(conn, [r.automation for r in parse_rules_text(RULES)])
                conn.execute("UPDATE automations SET evaluate_from = now() - interval '1 day'")
        evaluator = Evaluator(url, settings_for(url))
        try:
            first = evaluator.tick()
            steady = [evaluator.tick() for _ in range(args.ticks)]
        finally:
            evaluator.close()
    assert not first.failed and all(not t.failed for t in steady)
    figures = {
        "running_runs": args.running,
        "ended_runs": args.ended,
        "first_tick_ms": round(first.duration_ms, 2),
        "first_tick_fired": first.fired,
        "stalled_tick_ms": round(statistics.median(t.duration_ms for t in steady), 2),
        "stalled_tick_p99_ms": round(max(t.duration_ms for t in steady), 2),
        "steady_fired": sum(t.fired for t in steady),
    }
    for key, value in figures.items():
        print(f"{key:>22}: {value}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
