"""Connection budget: how many training jobs fit a server with max_connections = 100, directly
and through PgBouncer (transaction pooling), next to a running `engine serve`.

    python bench/connections.py                      # 120 jobs x 300 steps (2 metrics)
    python bench/connections.py --runs 200 --steps 100

A cluster of its own (TCP on 127.0.0.1, SCRAM passwords, the roles of engine/sql/grants.sql, the
same harness as tests/acceptance/test_pgbouncer.py), `engine serve` logged in as a member of
engine_service (directly: it LISTENs), and the jobs as a member of engine_ingest:

1. one job alone: the most server connections it holds at once (sampled every 0.1 s);
2. `engine serve` idle, then while it evaluates and delivers: its server connections;
3. `--runs` jobs at once, directly: how many failed, how many had to wait for a connection
   (the SDK retries while the server is full), how many points were stored, the peaks;
4. the same through PgBouncer (pool of 20 server connections).

"Fit" is computed as (max_connections - superuser_reserved_connections - serve) / per job.
The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.scheduler import connection_budget
from engine.settings import Settings
from tests.team_deployment import PgBouncer, TeamDatabase, run_fleet, stored_series

ENGINE = str(Path(sys.executable).with_name("engine"))
RULE = """\
name: bench-loss
scope: {project: acme/bench}
event: {type: run_metric_threshold, metric: loss, window: 1, aggregation: avg, operator: "<", threshold: 0.01}
cooldown: 24h
action: {type: webhook, url: "http://127.0.0.1:9/never"}
"""


def start_serve(database: TeamDatabase, url: str, folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Start `engine serve` as `url` with one rule; its server connections once it is up and
    has ticked for a while (the most seen over 2 s)."""
    rules = folder / "rules.yaml"
    rules.write_text(RULE)
    env = {**os.environ, "ENGINE_DATABASE_URL": url, "ENGINE_WEBHOOK_ALLOW_HOSTS": "127.0.0.1"}
    subprocess.run([ENGINE, "rules", "apply", str(rules)], env=env, check=True, capture_output=True)
    log_path = folder / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [ENGINE, "serve", "--interval", "0.5"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    pause = threading.Event()
    for _ in range(300):  # up to 30 s for it to start
        if "evaluating every" in log_path.read_text(errors="replace") or proc.poll() is not None:
            break
        pause.wait(0.1)
    if proc.poll() is not None:
        raise RuntimeError("engine serve did not start:\n" + log_path.read_text(errors="replace"))
    peak = 0
    for _ in range(20):
        peak = max(peak, database.backends().get("service", 0))
        pause.wait(0.1)
    return proc, peak


def points(database: TeamDatabase, project: str) -> int:
    with database.admin() as conn:
        return sum(
            len(steps) for metrics in stored_series(conn, project).values() for steps in metrics.values()
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=120, help="concurrent training jobs")
    parser.add_argument("--steps", type=int, default=300, help="steps per job (2 metrics each, 10 ms apart)")
    parser.add_argument("--pool", type=int, default=20, help="PgBouncer's server connections")
    parser.add_argument("--max-connections", type=int, default=100)
    args, _ = parser.parse_known_args()

    folder = Path(tempfile.mkdtemp(prefix="bench-connections-"))
    figures: dict[str, object] = {"max_connections": args.max_connections, "jobs": args.runs}
    with TeamDatabase(max_connections=args.max_connections) as database:
        with database.admin() as conn:
            reserved = int(conn.execute("SHOW superuser_reserved_connections").fetchone()[0])
        figures["superuser_reserved_connections"] = reserved
        trainer = database.login("trainer", "trainer-secret", member_of="engine_ingest")
        service = database.login("service", "service-secret", member_of="engine_service")

        def trainer_backends() -> dict[str, int]:
            return {"server connections (trainer)": database.backends().get("trainer", 0)}

        one = run_fleet(
            trainer, jobs=1, steps=args.steps, step_seconds=0.01, project="acme/one", monitor=trainer_backends
        )
        per_job = one.peaks.get("server connections (trainer)", 0)
        figures["connections_per_job"] = per_job
        print(f"1 job alone: at most {per_job} server connection(s)")

        serve, idle = start_serve(database, service, folder)
        serve_figures = {"idle": idle}
        try:

            def all_backends() -> dict[str, int]:
                now = database.backends()
                return {
                    "server connections (trainer)": now.get("trainer", 0),
                    "engine serve": now.get("service", 0),
                }

            direct = run_fleet(
                trainer,
                jobs=args.runs,
                steps=args.steps,
                step_seconds=0.01,
                project="acme/bench",
                monitor=all_backends,
            )
            serve_figures["busy"] = direct.peaks.get("engine serve", 0)
            expected_points = args.runs * args.steps * 2
            print(
                f"engine serve: {serve_figures['idle']} connections idle, at most {serve_figures['busy']} while busy"
            )
            stored = points(database, "acme/bench")
            print(
                f"{args.runs} jobs directly: {len(direct.failed)} failed, {direct.waited} waited for the database; "
                f"{stored} of {expected_points} points stored; peaks {direct.peaks} ({direct.seconds:.1f} s)"
            )
            figures["serve_connections"] = serve_figures
            figures["direct"] = {
                "failed": len(direct.failed),
                "waited": direct.waited,
                "points": stored,
                "expected_points": expected_points,
                "peaks": direct.peaks,
                "seconds": round(direct.seconds, 1),
            }
            # what serve may hold (its budget), or what it was seen holding when that is more
            serve_most = max(sum(connection_budget(Settings()).values()), serve_figures["busy"])
            fit = (args.max_connections - reserved - serve_most) // max(per_job, 1)
            figures["direct_fit"] = fit
            print(
                f"jobs that fit directly: ({args.max_connections} - {reserved} reserved - {serve_most} "
                f"serve) / {per_job} per job = {fit}"
            )
            for reason, count in direct.reasons().items():
                print(f"  {count} x {reason}")

            with PgBouncer(
                database, {"trainer": "trainer-secret"}, pool_size=args.pool, max_client_conn=args.runs + 30
            ) as bouncer:

                def through_bouncer() -> dict[str, int]:
                    pools = [p for p in bouncer.pools() if p["database"] == "engine"]
                    return {
                        **all_backends(),
                        "clients at PgBouncer": sum(p["cl_active"] + p["cl_waiting"] for p in pools),
                    }

                pooled = run_fleet(
                    bouncer.url("trainer"),
                    jobs=args.runs,
                    steps=args.steps,
                    step_seconds=0.01,
                    project="acme/bench-pooled",
                    monitor=through_bouncer,
                )
            stored = points(database, "acme/bench-pooled")
            print(
                f"{args.runs} jobs through PgBouncer (pool {args.pool}): {len(pooled.failed)} failed, "
                f"{pooled.waited} waited; {stored} of {expected_points} points stored; peaks {pooled.peaks} "
                f"({pooled.seconds:.1f} s)"
            )
            figures["pgbouncer"] = {
                "pool": args.pool,
                "failed": len(pooled.failed),
                "waited": pooled.waited,
                "points": stored,
                "peaks": pooled.peaks,
                "seconds": round(pooled.seconds, 1),
            }
            for reason, count in pooled.reasons().items():
                print(f"  {count} x {reason}")
        finally:
            serve.send_signal(signal.SIGTERM)
            serve.wait(30)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
