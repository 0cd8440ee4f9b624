"""Query shapes for "evaluate a threshold rule at the newest value of every series" (issue 3).

    python bench/query_shapes.py                   # 2,000 runs x 5 metrics x 100 steps, 36 chunks
    python bench/query_shapes.py --runs 500 --steps 60 --repeat 3

On the dataset of bench/evaluate.py (smaller: 1M points in 1-day chunks over 35 days), every
series gets one new point through the SDK's writer, then the same threshold rule (avg of
the last `--window` loss values above a threshold) is evaluated at those new values by:

1. tail: the compiled live query (engine/compiler/metrics.py), reading the per-series tails in
   series_state;
2. index: the same compiled query after the tails were emptied (only the new value left), so
   that it reads every window from the hypertable with one `ORDER BY seq DESC LIMIT n` per
   series through the (run_pk, key_id, seq) index, which TimescaleDB probes in every chunk;
3. window: ROW_NUMBER() and avg() OVER over the hypertable, keeping the new values plus the
   window-1 before them (bench/support/shapes.sql).

All three must return the same rows. Each is run `--repeat` times (JIT off, as the evaluator's
session); the median is reported. The last line is JSON: {"tail_ms", "index_ms", "window_ms", ...}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from support.dataset import PROJECT, Dataset, Logger, all_series, bench_query, fresh_database

from engine.compiler import compile_rule
from engine.rules import Automation


def median_ms(conn: psycopg.Connection, sql: str, params: dict, repeat: int) -> tuple[float, list[tuple]]:
    times, rows = [], []
    for _ in range(repeat):
        start = time.perf_counter()
        rows = conn.execute(sql, params).fetchall()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2_000)
    parser.add_argument("--steps", type=int, default=100, help="points per series")
    parser.add_argument("--window", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    data = Dataset(runs=args.runs, steps=args.steps, total=args.steps)
    with fresh_database("bench_shapes") as url, psycopg.connect(url, autocommit=True) as conn:
        with psycopg.connect(url) as load:
            data.setup(load)
            data.load_initial(load)
            data.store_state(load)
        chunks = conn.execute(
            "SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_name = 'metric_points'"
        ).fetchone()[0]
        print(
            f"{args.runs * args.steps * 5:,} points ({args.runs:,} runs x 5 metrics x {args.steps} steps) "
            f"in {chunks} chunks",
            flush=True,
        )
        # the threshold: the median of the current windows, so that about half the runs pass
        (threshold,) = conn.execute(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY (SELECT avg(v) FROM unnest(s.tail_value[cardinality(s.tail_value) - %s + 1:]) v)) "
            "FROM series_state s JOIN metric_keys k ON k.id = s.key_id WHERE k.key = 'loss'",
            (args.window,),
        ).fetchone()
        rule = Automation.model_validate(
            {
                "name": "shape",
                "scope": {"project": "/".join(PROJECT)},
                "action": {"type": "no_op"},
                "event": {
                    "type": "run_metric_threshold",
                    "metric": "loss",
                    "window": args.window,
                    "operator": ">",
                    "threshold": float(threshold),
                },
            }
        )
        compiled = compile_rule(rule, "live")
        (from_xid,) = conn.execute("SELECT pg_current_xact_id()::text").fetchone()
        logger = Logger(url, data)
        try:
            logger.log(conn, all_series(data))
        finally:
            logger.close()
        (to_xid,) = conn.execute("SELECT pg_snapshot_xmin(pg_current_snapshot())::text").fetchone()
        conn.execute("SET jit = off")
        span = {"from_xid": from_xid, "to_xid": to_xid}
        params = compiled.bind(**span)
        shape3 = span | {
            "metric": "loss",
            "window": args.window,
            "window_preceding": args.window - 1,
            "threshold": float(threshold),
        }

        tail_ms, tail_rows = median_ms(conn, compiled.sql, params, args.repeat)
        window_ms, window_rows = median_ms(
            conn, bench_query("window_functions", "shapes.sql"), shape3, args.repeat
        )
        conn.execute(
            bench_query("empty_tails", "shapes.sql"),
            {"first_pk": data.first_pk, "last_pk": data.run_pk(data.runs - 1)},
        )
        conn.execute("ANALYZE series_state")
        index_ms, index_rows = median_ms(conn, compiled.sql, params, args.repeat)

        def key(rows: list[tuple], agg: int) -> list[tuple]:
            return [(r[0], r[3 if agg == 6 else 1], round(r[agg], 9)) for r in rows]

        same = key(tail_rows, 6) == key(index_rows, 6) == key(window_rows, 2)
        if not same:
            raise SystemExit("the three shapes disagree")
        n = len(tail_rows)
        print(
            f"{args.runs * 5:,} series, one new loss value each; avg over {args.window} > median: {n:,} rows from each shape"
        )
        print(f"(1) tail (series_state, compiled query):           {tail_ms:9.1f} ms")
        print(f"(2) index (ORDER BY seq DESC LIMIT n per series):  {index_ms:9.1f} ms")
        print(f"(3) window functions over the hypertable:          {window_ms:9.1f} ms")
        print(
            json.dumps(
                {
                    "tail_ms": round(tail_ms, 1),
                    "index_ms": round(index_ms, 1),
                    "window_ms": round(window_ms, 1),
                    "runs": args.runs,
                    "chunks": chunks,
                    "rows": n,
                }
            )
        )


if __name__ == "__main__":
    main()
