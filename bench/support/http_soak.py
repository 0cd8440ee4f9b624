"""The HTTP kill soak (bench/soak.py --http): `engine web` SIGKILLed again and again while
training processes log over HTTP through the SDK, which retries.

Each training process (a separate Python process, `child` below) logs one run with
ENGINE_URL + ENGINE_API_KEY and no database credentials: at every step three values derived
from the step (`a` = step, `b` = -step, `c` = step / 2), ten steps every half second (a training loop
that logs often, without outrunning a server on a small machine),
until told to stop; then it finishes the run and prints how many steps it logged. Meanwhile
the server is killed with SIGKILL at random moments and restarted on the same port.

Checked at the end, in the database: every run has exactly `steps x 3` points, each (step,
key) once, their values the ones logged, stored in logging order (`seq` follows the steps),
and every run is `finished`.
"""

from __future__ import annotations

import itertools
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

PROJECT = "soak/http"
KEYS = ("a", "b", "c")


def web_process(
    database_url: str, log_path: Path, *, workers: int = 1, port: int | None = None, **env: str
) -> Any:
    """`engine web` started (tests/acceptance/web_helpers.py), waited for patiently: on a loaded
    machine its start alone can take most of a minute."""
    import httpx

    from tests.acceptance.service_helpers import wait_until
    from tests.acceptance.web_helpers import WebProcess

    class Patient(WebProcess):
        def _healthy(self) -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log()
            try:
                return httpx.get(self.url + "/healthz", timeout=15).status_code == 200
            except httpx.HTTPError:
                return False

        def __enter__(self) -> Patient:
            try:
                super().__enter__()
            except AssertionError:
                assert wait_until(self._healthy, timeout=300), self.log()
            return self

    web = Patient(database_url, log_path, workers=workers, **env)
    if port is not None:
        web.port, web.url = port, f"http://127.0.0.1:{port}"
    return web.__enter__()


def child(run_id: str, stop_file: str) -> None:
    """One training process (ENGINE_URL and ENGINE_API_KEY in its environment)."""
    import engine

    run = engine.init(project=PROJECT, id=run_id, system_metrics_interval=0)
    stop = Path(stop_file)
    step = 0
    while not stop.exists():
        for _ in range(10):
            run.log({"a": float(step), "b": -float(step), "c": step / 2})
            step += 1
        time.sleep(0.5)
    run.finish(timeout=900)
    print(step, flush=True)


def soak_http(database_url: str, logs: Path, *, kills: int, runs: int, seed: int, say: Any = print) -> dict:
    from engine import keys

    rng = random.Random(seed)
    with psycopg.connect(database_url, autocommit=True) as conn:
        key, _ = keys.create(conn, "soak-trainer", role="ingest", scopes=[PROJECT])
    web = web_process(database_url, logs / "web.log")
    port = web.port
    stop_file = logs / "stop"
    stop_file.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}
    env.update(ENGINE_URL=web.url, ENGINE_API_KEY=key, ENGINE_LOG_LEVEL="WARNING")
    children = [
        subprocess.Popen(
            [sys.executable, __file__, "child", f"run-{i}", str(stop_file)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=(logs / f"child-{i}.log").open("wb"),
            text=True,
        )
        for i in range(runs)
    ]
    restarts: list[float] = []
    started = time.monotonic()
    try:
        for k in range(kills):
            time.sleep(rng.uniform(0.3, 2.0))
            assert web.proc is not None
            web.proc.kill()
            web.proc.wait(10)
            down_at = time.monotonic()
            time.sleep(rng.uniform(0.0, 1.0))  # down for a moment: clients retry against nothing
            web = web_process(database_url, logs / "web.log", port=port)
            restarts.append(time.monotonic() - down_at)
            say(f"kill {k + 1}: engine web back after {restarts[-1]:.1f} s")
        time.sleep(1.0)
        stop_file.touch()
        steps = {}
        for i, proc in enumerate(children):
            out, _ = proc.communicate(timeout=600)
            if proc.returncode != 0:
                raise SystemExit(f"training process {i} failed: see {logs}/child-{i}.log")
            steps[f"run-{i}"] = int(out.strip())
        drained = time.monotonic() - started
    finally:
        stop_file.touch()
        for proc in children:
            if proc.poll() is None:
                proc.kill()
        web.__exit__(None, None, None)
    return check(database_url, steps) | {
        "kills": kills,
        "runs": runs,
        "restart_median_s": round(statistics.median(restarts), 2) if restarts else None,
        "wall_s": round(drained, 1),
    }


def check(database_url: str, steps: dict[str, int]) -> dict:
    """Exactly once, in order, with the logged values, every run finished."""
    lost = duplicates = wrong = out_of_order = unfinished = 0
    with psycopg.connect(database_url) as conn:
        for run_id, n in steps.items():
            rows = conn.execute(
                "SELECT p.step, k.key, p.value FROM metric_points p JOIN metric_keys k ON k.id = p.key_id"
                " JOIN runs r ON r.id = p.run_pk WHERE r.run_id = %s ORDER BY p.seq",
                (run_id,),
            ).fetchall()
            seen = {(s, k) for s, k, _ in rows}
            duplicates += len(rows) - len(seen)
            lost += n * len(KEYS) - len(seen & {(s, k) for s in range(n) for k in KEYS})
            expected = {"a": lambda s: float(s), "b": lambda s: -float(s), "c": lambda s: s / 2}
            wrong += sum(1 for s, k, v in rows if k not in expected or expected[k](s) != v)
            order = [s for s, _, _ in rows]
            out_of_order += sum(1 for x, y in itertools.pairwise(order) if y < x)
            (state,) = conn.execute("SELECT state FROM runs WHERE run_id = %s", (run_id,)).fetchone()
            unfinished += state != "finished"
        (batches,) = conn.execute("SELECT count(*) FROM ingest_batches").fetchone()
    return {
        "points": sum(steps.values()) * len(KEYS),
        "lost": lost,
        "duplicates": duplicates,
        "wrong_values": wrong,
        "out_of_order": out_of_order,
        "unfinished_runs": unfinished,
        "log_requests_stored": batches,
    }


if __name__ == "__main__" and sys.argv[1:2] == ["child"]:
    child(sys.argv[2], sys.argv[3])
