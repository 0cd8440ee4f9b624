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

Both are timed run by run, alternating, from the first point to the commit (for the SDK: from
`init` to the end of `finish`), and log the same precomputed values. The whole measurement is
repeated (`--repetitions`, 3) in the same databases, so that one burst of load from other
processes does not decide the figure: the last line is JSON with the median repetition's
figures {"sdk_rows_per_s", "copy_rows_per_s", "ratio"}, every repetition's "ratios", and
"mlflow_ratio": the MLflow client's batch logging into `engine web` against the COPY (its
median; bench/support/mlflow_path.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.support.mlflow_path import MlflowPath
from engine import clock, db
from engine.localdb import LocalDatabase
from engine.sdk.copy_binary import COPY_TYPES
from engine.sdk.flush import ORDINAL_BITS

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
        from engine.settings import get_settings

        get_settings.cache_clear()
        import engine

        self.engine = engine
        self.data = data

    def run(self, r: int) -> float:
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
    args = parser.parse_args()
    steps = args.points // (args.runs * len(METRICS)) if args.points else args.steps
    data = payloads(steps)
    total = args.runs * steps * len(METRICS)
    print(f"{total:,} points: {args.runs} runs x {len(METRICS)} metrics x {steps} steps", flush=True)
    print("load average before: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()), flush=True)

    reps: list[dict[str, float]] = []
    with fresh_databases(["sdk", "copy", "mlflow"]) as urls:
        paths = {"sdk": SdkPath(urls["sdk"], data), "copy": CopyPath(urls["copy"], data)}
        paths["mlflow"] = MlflowPath(urls["mlflow"], data)  # the MLflow client into engine web
        for rep in range(args.repetitions):
            timings = dict.fromkeys(paths, 0.0)
            cpu = dict.fromkeys(paths, 0.0)  # this process's CPU: where the SDK's own cost shows
            # Run by run, alternating the two paths (and who goes first), so that both see the
            # same machine: other load, cache and chunk state drift over a minute-long run.
            for r in range(rep * args.runs, (rep + 1) * args.runs):
                for which in list(paths) if r % 2 else list(paths)[::-1]:
                    before = time.process_time()
                    timings[which] += paths[which].run(r)
                    cpu[which] += time.process_time() - before
            figures = {which: total / timings[which] for which in timings}
            reps.append(
                {"sdk": figures["sdk"], "copy": figures["copy"], "ratio": figures["sdk"] / figures["copy"]}
            )
            reps[-1] |= {"mlflow": figures["mlflow"], "mlflow_ratio": figures["mlflow"] / figures["copy"]}
            print(
                f"repetition {rep + 1}: "
                + "; ".join(
                    f"{which} {timings[which]:6.2f} s {figures[which]:10,.0f} rows/s (client CPU {cpu[which]:.2f} s)"
                    for which in paths
                )
                + f"; ratio {reps[-1]['ratio']:.3f}",
                flush=True,
            )
        for which, path in paths.items():
            path.close()
            stored = count_points(urls[which])
            if stored != total * args.repetitions:
                raise SystemExit(f"{which}: {stored} points stored, expected {total * args.repetitions}")

    print(
        "load average after:  {:.2f} {:.2f} {:.2f} (other processes slow both paths)".format(*os.getloadavg())
    )
    median = sorted(reps, key=lambda f: f["ratio"])[len(reps) // 2]
    print(f"ratio sdk/copy, median of {len(reps)} repetitions: {median['ratio']:.3f} (target >= 0.85)")
    print(
        json.dumps(
            {
                "sdk_rows_per_s": round(median["sdk"]),
                "copy_rows_per_s": round(median["copy"]),
                "ratio": round(median["ratio"], 3),
                "ratios": [round(f["ratio"], 3) for f in reps],
                # the MLflow client into engine web (no target yet), its median repetition's
                "mlflow_ratio": round(sorted(f["mlflow_ratio"] for f in reps)[len(reps) // 2], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
