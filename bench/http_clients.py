"""Many training processes logging over HTTP, and log -> trigger latency through HTTP.

    python bench/http_clients.py                       # 200 processes x 60 steps x 5 metrics
    python bench/http_clients.py --clients 50 --steps 30 --probes 30

A fresh database (bench/support/dataset.py) behind `engine web --workers 2` (a subprocess on
127.0.0.1, ENGINE_WEB_POOL_SIZE connections per worker at most):

1. `--clients` training processes (separate processes, forked from this one, all at once)
   each log one run over HTTP with ENGINE_URL + ENGINE_API_KEY and no database credentials:
   `--steps` steps of 5 metrics, one step every `--period` seconds, then finish. Meanwhile
   pg_stat_activity is sampled every 50 ms: `db_connections_max` is the most connections of
   the server at once (bound: workers x pool size), `sdk_connections_max` those of training
   processes (0). `http_clients_lost`: points not stored, or runs not finished.
2. Log -> trigger latency through HTTP (bench/evaluate.py's measurement, the SDK pointed at
   the server): `engine serve`'s Service runs in this process on the database; background
   runs log over HTTP; probe runs log a value that fires a window-1 threshold rule and flush;
   the time until the trigger row exists is `http_trigger_p50_ms` / `http_trigger_p99_ms`.

The last line is JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from evaluate import latency, pct
from support.dataset import PROBE_METRIC, PROBE_RULE, PROBE_VALUE, PROJECT, fresh_database

WORKERS = 2
CLIENT_PROJECT = "bench/clients"


def client(index: int, steps: int, period: float) -> None:
    """One training process: a run over HTTP (forked: the parent's SDK state is not used)."""
    import engine

    run = engine.init(project=CLIENT_PROJECT, id=f"client-{index}", system_metrics_interval=0)
    next_at = time.monotonic()
    for step in range(steps):
        run.log(
            {
                "loss": 1 / (step + 1),
                "accuracy": step / steps,
                "lr": 3e-4,
                "grad_norm": 1.0,
                "throughput": 1e3,
            }
        )
        next_at += period
        time.sleep(max(0.0, next_at - time.monotonic()))
    run.finish(timeout=300)


@contextlib.contextmanager
def stopped_at_the_end(web: Any) -> Iterator[Any]:
    """A server web_process() has started already, stopped at the end (a `with` on it would
    start a second one and leave the first running)."""
    try:
        yield web
    finally:
        web.__exit__(None, None, None)


def sample_connections(url: str, stop: threading.Event, seen: dict[str, int]) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        while not stop.wait(0.05):
            web, sdk = conn.execute(
                "SELECT count(*) FILTER (WHERE application_name = 'engine-web'),"
                " count(*) FILTER (WHERE application_name LIKE 'engine-sdk%%')"
                " FROM pg_stat_activity WHERE datname = current_database()"
            ).fetchone()
            seen["web"], seen["sdk"] = max(seen["web"], web), max(seen["sdk"], sdk)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--period", type=float, default=0.25, help="seconds between a client's steps")
    parser.add_argument("--probes", type=int, default=100)
    parser.add_argument("--background-runs", type=int, default=20)
    parser.add_argument("--background-hz", type=float, default=2.0)
    args, _ = parser.parse_known_args()

    from support.http_soak import web_process

    from engine import keys
    from engine.automations import apply_rules
    from engine.rules import Automation
    from engine.settings import get_settings

    logs = Path(tempfile.mkdtemp(prefix="engine-http-clients-"))
    out: dict[str, object] = {"clients": args.clients, "steps": args.steps, "workers": WORKERS}
    with fresh_database("http_clients") as url:
        with psycopg.connect(url, autocommit=True) as conn:
            key, _ = keys.create(conn, "bench", role="ingest", scopes=["bench/*"])
            probe = {
                "name": PROBE_RULE,
                "scope": {"project": "/".join(PROJECT)},
                "event": {
                    "type": "run_metric_threshold",
                    "metric": PROBE_METRIC,
                    "window": 1,
                    "aggregation": "max",
                    "operator": ">",
                    "threshold": PROBE_VALUE / 10,
                },
                "action": {"type": "no_op"},
            }
            apply_rules(conn, [Automation.model_validate(probe)])
        pool_size = get_settings().web_pool_size
        with stopped_at_the_end(
            web_process(url, logs / "web.log", workers=WORKERS, ENGINE_LOG_LEVEL="WARNING")
        ) as web:
            os.environ.pop("ENGINE_DATABASE_URL", None)
            os.environ.update(ENGINE_URL=web.url, ENGINE_API_KEY=key)
            get_settings.cache_clear()

            # 1. many training processes at once
            fork = multiprocessing.get_context("fork")
            procs = [
                fork.Process(target=client, args=(i, args.steps, args.period)) for i in range(args.clients)
            ]
            started = time.monotonic()
            for p in procs:
                p.start()
            seen = {"web": 0, "sdk": 0}
            stop = threading.Event()
            sampler = threading.Thread(target=sample_connections, args=(url, stop, seen), daemon=True)
            sampler.start()
            failed = 0
            for p in procs:
                p.join(900)
                failed += p.exitcode != 0
            stop.set()
            sampler.join(5)
            wall = time.monotonic() - started
            with psycopg.connect(url) as conn:
                (stored,) = conn.execute(
                    "SELECT count(*) FROM metric_points p JOIN runs r ON r.id = p.run_pk"
                    " JOIN projects j ON j.id = r.project_id WHERE j.entity || '/' || j.name = %s",
                    (CLIENT_PROJECT,),
                ).fetchone()
                (finished,) = conn.execute("SELECT count(*) FROM runs WHERE state = 'finished'").fetchone()
            expected = args.clients * args.steps * 5
            out |= {
                "http_clients_points": expected,
                "http_clients_lost": expected - stored,
                "http_clients_unfinished": args.clients - finished,
                "http_clients_failed_processes": failed,
                "db_connections_max": seen["web"],
                "db_connections_bound": WORKERS * pool_size,
                "sdk_connections_max": seen["sdk"],
                "http_clients_wall_s": round(wall, 1),
            }
            print(
                f"1. {args.clients} processes x {args.steps} steps: {stored:,}/{expected:,} points stored, "
                f"{finished} runs finished, in {wall:.1f} s; database connections at most {seen['web']} "
                f"(bound {WORKERS} x {pool_size}), of training processes {seen['sdk']}",
                flush=True,
            )

            # 2. log -> trigger through HTTP
            times = latency(url, None, args.probes, args.background_runs, args.background_hz)  # type: ignore[arg-type]
            out |= {
                "http_trigger_p50_ms": round(pct(times, 0.5), 1),
                "http_trigger_p99_ms": round(pct(times, 0.99), 1),
            }
            print(
                f"2. run.log + flush over HTTP -> trigger row, {len(times)} probes: "
                f"p50 {out['http_trigger_p50_ms']} ms, p99 {out['http_trigger_p99_ms']} ms",
                flush=True,
            )
    print(json.dumps(out), flush=True)
    bad = out["http_clients_lost"] or out["http_clients_unfinished"] or seen["web"] > WORKERS * pool_size
    return 1 if bad or seen["sdk"] else 0


if __name__ == "__main__":
    sys.exit(main())
