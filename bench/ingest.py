"""Ingest benchmark: the SDK against a hand-written binary COPY of the same points.

    python bench/ingest.py                     # 200 runs x 5 metrics x 1,000 steps
    python bench/ingest.py --runs 20 --steps 500

Both paths write the same points into `metric_points` of a fresh, migrated database each
(an embedded cluster in a temporary folder with fast=True, or databases created next to
ENGINE_DATABASE_URL when it is set):

- SDK: for each run, `with engine.init(...) as run: run.log({5 metrics}, step=s)` for every
  step — run creation, buffering, flushes (keys, COPY, series_state, NOTIFY) and finish.
- COPY: for each run, one transaction that takes a batch id from `ingest_batch_seq` and
  COPYs the run's rows (time, run_pk, key_id, step, seq, value) with psycopg's binary
  `write_row` — no runs, no events, no series_state.

- HTTP: the SDK path with ENGINE_URL set: the same calls through the SDK's HTTP transport
  into `engine web --workers 2` (a subprocess on 127.0.0.1, its own database), which stores
  the batches with the same writer.

All three are timed run by run, alternating, from the first point to the commit (for the SDK: from
`init` to the end of `finish`), and log the same precomputed values. What a training process has
once is made before the timing: the settings are read before each SDK run (the HTTP path switches
ENGINE_URL in this process), and the objects of the set-up are frozen out of the cyclic collector,
so that no path pays for walking them in a full collection another path's garbage set off. The whole measurement is
repeated (`--repetitions`, 3) in the same databases, so that one burst of load from other
processes does not decide the figure: the last line is JSON with the median repetition's
figures {"sdk_rows_per_s", "copy_rows_per_s", "ratio", "http_rows_per_s", "http_copy_rows_per_s",
"http_ratio"} (each ratio's median repetition's rows/s) and every
repetition's "ratios" (sdk/copy) and "http_ratios" (http/copy); "http_p99_ms" is the p99 of
`--requests` log requests of 1,000 points (200 rows x 5 metrics, as the SDK encodes them)
sent one after another to the same server (`--no-http` leaves the HTTP path out);
"mlflow_ratio": the MLflow client's batch logging into `engine web` against the COPY (its
median; bench/support/mlflow_path.py; `--no-mlflow` leaves it out).

Reduced sizes keep each run's size (1,000 steps x 5 metrics), since the SDK's overhead is
per run and per flush: `--runs 40 --no-mlflow --requests 100` shows the same ratios in a
fraction of the time (for A/B comparisons on a shared machine).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.support.mlflow_path import MlflowPath
from engine import clock, db
from engine.localdb import LocalDatabase
from engine.sdk.copy_binary import COPY_TYPES
from engine.sdk.flush import ORDINAL_BITS
from engine.settings import get_settings

METRICS = ("loss", "accuracy", "lr", "grad_norm", "throughput")


def payloads(steps: int) -> list[dict[str, float]]:
    """The logged values of one run, step by step (the same for every run)."""
    return [
        {
            "loss": 1.0 / (s + 1),
            "accuracy": s / steps,
            "lr": 3e-4 * math.cos(s / steps),
            "grad_norm": 1.0 + (s % 17) / 17,
            "throughput": 1000.0 + s % 101,
        }
        for s in range(steps)
    ]


@contextlib.contextmanager
def fresh_databases(names: list[str]) -> Iterator[dict[str, str]]:
    """Migrated, empty databases: on ENGINE_DATABASE_URL's server, or an embedded cluster."""
    base = os.environ.get("ENGINE_DATABASE_URL")
    cluster = None
    if base:
        admin_url = make_conninfo(base, dbname=conninfo_to_dict(base).get("dbname", "postgres"))
        url_of = lambda n: make_conninfo(base, dbname=n)  # noqa: E731
    else:
        folder = Path(tempfile.mkdtemp(prefix="engine-bench-"))
        folder.chmod(0o755)
        cluster = LocalDatabase(folder, fast=True, extra_conf={"timescaledb.max_background_workers": "0"})
        cluster.up()
        admin_url = cluster.url("postgres")
        url_of = cluster.url
    suffix = uuid.uuid4().hex[:8]
    urls = {n: url_of(f"bench_{n}_{suffix}") for n in names}
    try:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            for n in names:
                admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(f"bench_{n}_{suffix}")))
        for url in urls.values():
            with psycopg.connect(url) as conn:
                db.migrate(conn)
        yield urls
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            for n in names:
                name = sql.Identifier(f"bench_{n}_{suffix}")
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
        if cluster is not None:
            cluster.destroy()


class SdkPath:
    """Each `run(r)` logs one run through the SDK and returns the seconds it took."""

    def __init__(self, url: str, data: list[dict[str, float]]):
        os.environ["ENGINE_DATABASE_URL"] = url
        get_settings.cache_clear()
        import engine

        self.engine = engine
        self.data = data

    def run(self, r: int) -> float:
        # The settings as a training process has them, read once: this process switches
        # ENGINE_URL on and off for the HTTP path, which clears their cache, and reading them
        # again is no part of logging a run.
        get_settings()
        start = time.perf_counter()
        with self.engine.init(
            project="bench/ingest", id=f"run-{r}", user="bench", system_metrics_interval=0
        ) as run:
            log = run.log
            for step, values in enumerate(self.data):
                log(values, step=step)
        return time.perf_counter() - start

    def close(self) -> None:
        from engine.sdk import session

        session.close_all()


class HttpPath(SdkPath):
    """The SDK over HTTP: `engine web --workers 2` in front of its own database."""

    def __init__(self, url: str, data: list[dict[str, float]], logs: Path):
        from bench.support.http_soak import web_process
        from engine import keys

        self.web = web_process(url, logs / "web.log", workers=2, ENGINE_LOG_LEVEL="WARNING")
        with psycopg.connect(url, autocommit=True) as conn:
            self.key, _ = keys.create(conn, "bench", role="ingest", scopes=["bench/*"])
        import engine

        self.engine = engine
        self.data = data

    def run(self, r: int) -> float:
        from engine.settings import get_settings

        os.environ.update(ENGINE_URL=self.web.url, ENGINE_API_KEY=self.key)
        get_settings.cache_clear()
        try:
            return super().run(r)
        finally:
            del os.environ["ENGINE_URL"], os.environ["ENGINE_API_KEY"]
            get_settings.cache_clear()

    def request_p99_ms(self, requests: int) -> float:
        """p99 of `requests` log requests of 1,000 points each, one after another."""
        import httpx

        from engine.sdk.buffer import Part, Stream
        from engine.sdk.http_transport import encode, log_bodies

        http = httpx.Client(
            base_url=self.web.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=30
        )
        made = http.post("/api/v1/runs", json={"project": "bench/ingest", "id": "p99", "user": "bench"})
        made.raise_for_status()
        keys = tuple(METRICS)
        times = []
        for i in range(requests):
            records = [
                (clock.now_micros(), i * 200 + s, keys, tuple(self.data[s % len(self.data)].values()))
                for s in range(200)
            ]
            (body,) = log_bodies(Part(Stream(0, "p99"), records, [], 1000), 1000)
            body["batch_id"] = f"p99-{i}"
            content = encode(body)
            start = time.perf_counter()
            answer = http.post(
                "/api/v1/runs/bench/ingest/p99/log",
                content=content,
                headers={"Content-Type": "application/json"},
            )
            times.append((time.perf_counter() - start) * 1000)
            answer.raise_for_status()
        http.close()
        times.sort()
        print(f"log request of 1,000 points over HTTP: median {times[len(times) // 2]:.1f} ms")
        return times[min(len(times) - 1, int(0.99 * len(times)))]

    def close(self) -> None:
        super().close()
        self.web.__exit__(None, None, None)


class CopyPath:
    """Each `run(r)` COPYs one run's points in one transaction and returns the seconds it took."""

    def __init__(self, url: str, data: list[dict[str, float]]):
        self.conn = psycopg.connect(url)
        self.data = data
        self.conn.execute(db.query("intern_keys"), {"keys": list(METRICS)})
        self.key_ids = dict(self.conn.execute(db.query("key_ids"), {"keys": list(METRICS)}).fetchall())
        self.conn.commit()

    def run(self, r: int) -> float:
        conn, key_ids, run_pk = self.conn, self.key_ids, r + 1
        start = time.perf_counter()
        with conn.transaction():
            (batch,) = conn.execute(db.query("next_ingest_batch")).fetchone()
            seq = batch << ORDINAL_BITS
            with conn.cursor().copy(db.query("copy_metric_points")) as copy:
                copy.set_types(COPY_TYPES)
                write = copy.write_row
                for step, values in enumerate(self.data):
                    t = clock.now()
                    for key, value in values.items():
                        write((t, run_pk, key_ids[key], step, seq, value))
                        seq += 1
        return time.perf_counter() - start

    def close(self) -> None:
        self.conn.close()


def count_points(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM metric_points").fetchone()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument(
        "--points", type=int, default=None, help="total points (overrides --steps: points / runs / 5)"
    )
    parser.add_argument("--repetitions", type=int, default=3, help="the figures are the median repetition's")
    parser.add_argument("--no-http", action="store_true", help="leave out the SDK over HTTP")
    parser.add_argument(
        "--no-mlflow",
        action="store_true",
        help="leave out the MLflow client (the slowest path, without a target: quicker A/B runs)",
    )
    parser.add_argument(
        "--requests", type=int, default=300, help="1,000-point log requests timed for http_p99_ms"
    )
    args = parser.parse_args()
    steps = args.points // (args.runs * len(METRICS)) if args.points else args.steps
    data = payloads(steps)
    total = args.runs * steps * len(METRICS)
    print(f"{total:,} points: {args.runs} runs x {len(METRICS)} metrics x {steps} steps", flush=True)
    print("load average before: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()), flush=True)

    reps: list[dict[str, float]] = []
    names = ["sdk", "copy"] + ([] if args.no_http else ["http"]) + ([] if args.no_mlflow else ["mlflow"])
    http_p99 = None
    with fresh_databases(names) as urls:
        paths: dict[str, SdkPath | CopyPath | MlflowPath] = {
            "sdk": SdkPath(urls["sdk"], data),
            "copy": CopyPath(urls["copy"], data),
        }
        if not args.no_mlflow:
            paths["mlflow"] = MlflowPath(urls["mlflow"], data)  # the MLflow client into engine web
        if not args.no_http:
            paths["http"] = HttpPath(urls["http"], data, Path(tempfile.mkdtemp(prefix="engine-bench-web-")))
        # What exists now lives to the end (the MLflow client's and engine web's client modules,
        # the precomputed values): out of the cyclic collector, as `engine serve` does. Else
        # each full collection walks all of it on the time of whichever path's turn it falls
        # in, most of them set off by the MLflow path's garbage.
        gc.collect()
        gc.freeze()
        for rep in range(args.repetitions):
            timings = dict.fromkeys(names, 0.0)
            cpu = dict.fromkeys(names, 0.0)  # this process's CPU: where the SDK's own cost shows
            # Run by run, alternating the paths (and who goes first), so that all see the
            # same machine: other load, cache and chunk state drift over a minute-long run.
            for r in range(rep * args.runs, (rep + 1) * args.runs):
                for which in names if r % 2 else names[::-1]:
                    before = time.process_time()
                    timings[which] += paths[which].run(r)
                    cpu[which] += time.process_time() - before
            figures = {which: total / timings[which] for which in timings}
            reps.append({**figures, "ratio": figures["sdk"] / figures["copy"]})
            if "http" in figures:
                reps[-1]["http_ratio"] = figures["http"] / figures["copy"]
            if "mlflow" in figures:
                reps[-1]["mlflow_ratio"] = figures["mlflow"] / figures["copy"]
            print(
                f"repetition {rep + 1}: "
                + "; ".join(
                    f"{which} {timings[which]:6.2f} s {figures[which]:10,.0f} rows/s (client CPU {cpu[which]:.2f} s)"
                    for which in names
                )
                + f"; ratio {reps[-1]['ratio']:.3f}"
                + (f"; http ratio {reps[-1]['http_ratio']:.3f}" if "http" in figures else ""),
                flush=True,
            )
        if not args.no_http:
            http_p99 = cast(HttpPath, paths["http"]).request_p99_ms(args.requests)
            print(f"log request of 1,000 points over HTTP: p99 {http_p99:.1f} ms ({args.requests} requests)")
        for which, path in paths.items():
            path.close()
            stored = count_points(urls[which])
            if which == "http":  # the timed 1,000-point requests went into the same database
                stored -= args.requests * 1000
            if stored != total * args.repetitions:
                raise SystemExit(f"{which}: {stored} points stored, expected {total * args.repetitions}")

    print(
        "load average after:  {:.2f} {:.2f} {:.2f} (other processes slow both paths)".format(*os.getloadavg())
    )
    median = sorted(reps, key=lambda f: f["ratio"])[len(reps) // 2]
    print(f"ratio sdk/copy, median of {len(reps)} repetitions: {median['ratio']:.3f} (target >= 0.85)")
    out = {
        "sdk_rows_per_s": round(median["sdk"]),
        "copy_rows_per_s": round(median["copy"]),
        "ratio": round(median["ratio"], 3),
        "ratios": [round(f["ratio"], 3) for f in reps],
    }
    if not args.no_mlflow:  # the MLflow client into engine web (no target yet), its median repetition's
        out["mlflow_ratio"] = round(sorted(f["mlflow_ratio"] for f in reps)[len(reps) // 2], 3)
    if not args.no_http:
        http_median = sorted(reps, key=lambda f: f["http_ratio"])[len(reps) // 2]
        print(
            f"ratio http/copy, median of {len(reps)} repetitions: {http_median['http_ratio']:.3f} (target >= 0.6)"
        )
        out |= {
            "http_rows_per_s": round(http_median["http"]),
            # the COPY of that same repetition (copy_rows_per_s above is the SDK's median one's)
            "http_copy_rows_per_s": round(http_median["copy"]),
            "http_ratio": round(http_median["http_ratio"], 3),
            "http_ratios": [round(f["http_ratio"], 3) for f in reps],
            "http_p99_ms": round(cast(float, http_p99), 1),
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
