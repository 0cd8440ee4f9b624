"""Web console benchmark: its history and trigger pages with a million triggers stored.

    python bench/web.py                         # 1,000,000 triggers, 50 requests per page
    python bench/web.py --triggers 100000 --requests 20

A fresh database (bench/support/dataset.py): one run whose threshold rule the evaluator
fires for real (the trigger page draws it), then `--triggers` more triggers of 10
automations over a year, copied from it in SQL, each with a delivery (as the evaluator writes
them), vacuumed as a database that grew to that size is. `engine web` in a subprocess; an
admin key signs in as a browser does. Timed from this process on 127.0.0.1 (the server's time
plus a loopback round trip):

* the history's first page (`/history`, 50 rows, newest first);
* a page deep in the keyset (its cursor at the 900,000th newest trigger);
* the trigger page (the "why it fired" chart, the rule as it was, the deliveries).

The last line is JSON: {"history_p95_ms", "history_deep_p95_ms", "trigger_p95_ms", ...}.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.support.dataset import fresh_database
from engine.settings import get_settings

RULES = "\n---\n".join(
    f"name: bench-{i}\nscope: {{project: acme/bench}}\n"
    'event: {type: run_metric_threshold, metric: loss, window: 5, operator: "<", threshold: 0.5}\n'
    "action: {type: webhook, url: 'https://hooks.example.com/bench'}\n"
    for i in range(10)
)
# Copies of the real trigger: other automations, times and causes; the same cause columns.
COPY = """
INSERT INTO triggers (fired_at, automation_id, automation_version, event_type, cause, run_pk, metric, step,
                      value_time, value, window_values, details, key_id, pos, window_size, aggregation,
                      operator, threshold)
SELECT %(start)s + g * %(gap)s, a.ids[1 + g %% 10], 1, t.event_type, 'bench:' || g, t.run_pk, t.metric, t.step,
       t.value_time, t.value, t.window_values, t.details, t.key_id, t.pos, t.window_size, t.aggregation,
       t.operator, t.threshold
FROM generate_series(1, %(n)s) AS g,
     (SELECT array_agg(id ORDER BY id) AS ids FROM automations) AS a,
     (SELECT * FROM triggers WHERE id = %(id)s) AS t
"""
DELIVERIES = """
INSERT INTO deliveries (trigger_id, automation_id, action_index, action_type, action, status, attempts,
                        created_at, updated_at, finished_at)
SELECT t.id, t.automation_id, 0, 'webhook', '{"type": "webhook"}', 'succeeded', 1, t.fired_at, t.fired_at, t.fired_at
FROM triggers t WHERE t.cause LIKE 'bench:%%'
"""


def p95(samples: list[float]) -> float:
    return round(statistics.quantiles(samples, n=20)[-1], 1) if len(samples) > 1 else round(samples[0], 1)


def one(conn: psycopg.Connection, statement: str, *params: object) -> tuple:
    row = conn.execute(statement, params or None).fetchone()
    assert row is not None, statement
    return row


def timed(http, path: str, requests: int) -> list[float]:
    times = []
    for _ in range(requests):
        began = time.perf_counter()
        answer = http.get(path)
        times.append((time.perf_counter() - began) * 1000)
        assert answer.status_code == 200, (path, answer.status_code, answer.text[:300])
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--triggers", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--steps", type=int, default=300, help="values of the fired run's metric")
    args, _ = parser.parse_known_args()

    import engine
    from engine.automations import apply_rules
    from engine.evaluation import Evaluator
    from engine.rules import parse_rules_text
    from tests.acceptance.console_helpers import sign_in
    from tests.acceptance.web_helpers import WebProcess, make_key

    with fresh_database("web") as url:
        os.environ["ENGINE_DATABASE_URL"] = url
        get_settings.cache_clear()
        with psycopg.connect(url, autocommit=True) as conn:
            apply_rules(conn, [r.automation for r in parse_rules_text(RULES)])
            start = datetime.now(UTC) - timedelta(days=365)
            with engine.init(project="acme/bench", name="fired", system_metrics_interval=0) as run:
                for i in range(args.steps):
                    run.log({"loss": 1.0 - i / args.steps}, step=i, time=start + timedelta(seconds=i))
            evaluator = Evaluator(url)
            evaluator.tick()
            evaluator.close()
            (real,) = one(conn, "SELECT min(id) FROM triggers")
            began = time.perf_counter()
            gap = timedelta(days=365) / args.triggers
            conn.execute(COPY, {"start": start, "gap": gap, "n": args.triggers, "id": real})
            conn.execute(DELIVERIES)
            # A history that grew over a year has been vacuumed as it grew: without this, the
            # autovacuum that a million fresh rows start would run during the timing, and the
            # first reads would set every row's hint bits (the bulk load's cost, not a page's).
            conn.execute("VACUUM ANALYZE")
            print(
                f"stored {args.triggers:,} triggers and their deliveries in {time.perf_counter() - began:.0f} s"
            )
            deep_at = min(900_000, args.triggers * 9 // 10)
            at, trigger_id = one(
                conn,
                "SELECT fired_at, id FROM triggers ORDER BY fired_at DESC, id DESC OFFSET %s LIMIT 1",
                deep_at,
            )
            cursor = base64.urlsafe_b64encode(f"{at.isoformat()}|{trigger_id}".encode()).decode()
            key = make_key(conn, "bench-admin", "admin", "*")
        with tempfile.TemporaryDirectory() as folder:
            with WebProcess(url, Path(folder) / "web.log") as web, web.client() as http:
                assert sign_in(http, key).status_code == 303
                timed(http, "/history", 3)  # warm the pool and the caches
                history = timed(http, "/history", args.requests)
                deep = timed(http, f"/history?cursor={cursor}", args.requests)
                trigger = timed(http, f"/triggers/{real}", args.requests)
    print(
        json.dumps(
            {
                "history_p95_ms": p95(history),
                "history_deep_p95_ms": p95(deep),
                "trigger_p95_ms": p95(trigger),
                "triggers": args.triggers,
                "requests": args.requests,
            }
        )
    )


if __name__ == "__main__":
    main()
