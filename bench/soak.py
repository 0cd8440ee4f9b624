"""Kill soak: SIGKILL `engine serve` at random moments while 100 runs log and 24 automations fire.

    python bench/soak.py                     # 20 rounds, stops starting new ones after 10 min
    python bench/soak.py --rounds 40 --max-minutes 30

Each round: a burst of fresh runs (metrics, state changes, artifacts) from 4 threads; one
SIGKILL of the service at a random moment of the burst, inside an open digest window; a
restart; then a wait until the triggers equal the backtest over the same history and every
webhook delivery has reached its end. Two automations are digested (1m windows, which span
rounds: after the last round the soak waits for them to close) and two are rate-limited (see
bench/support/soak.py for what lost and duplicated mean for each, and how it is checked). A
fresh database: in ENGINE_DATABASE_URL's server when set, else an embedded cluster in a
temporary folder.

    python bench/soak.py --http              # engine web killed 20 times while 20 runs log over HTTP
    python bench/soak.py --http --rounds 5 --runs 4

`--http` (bench/support/http_soak.py): `engine web` SIGKILLed `--rounds` times (restarted on
the same port) while `--runs` training processes log over HTTP through the SDK, which
retries; then every point must be stored exactly once, in order. Its JSON line: {"kills",
"runs", "points", "lost", "duplicates", "wrong_values", "out_of_order", "unfinished_runs", ...}.

One line per round, then one JSON line: {"rounds", "kills", "triggers", "duplicates", "lost",
"deliveries", "redelivered_same_id", "max_settle_s", ..., "digest_triggers", "digests",
"kills_inside_digest_window", "suppressed", "over_limit"}. Exit status 1 when anything was
lost, duplicated, extra or wrong, a rate limit was passed, a digest window stayed open, or a
round did not settle.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.support.dataset import fresh_database
from bench.support.soak import Soak
from engine.sdk import session as sdk_session
from engine.settings import get_settings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20, help="rounds (one kill each); default 20")
    parser.add_argument(
        "--max-minutes", type=float, default=10.0, help="start no new round after this; default 10"
    )
    parser.add_argument("--runs", type=int, default=None, help="runs per burst; default 100 (--http: 20)")
    parser.add_argument(
        "--http", action="store_true", help="kill `engine web` while runs log over HTTP instead"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--logs", type=Path, default=None, help="folder for the services' logs (default: a temp dir)"
    )
    # accepted so that `make bench BENCH_ARGS=...` (passed to every script) does not break this one
    parser.add_argument("--steps", type=int, default=None, help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args()

    logging.basicConfig(level=logging.WARNING)
    logs = args.logs or Path(tempfile.mkdtemp(prefix="engine-soak-logs-"))
    logs.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    if args.http:
        return http_mode(args, logs)
    args.runs = args.runs or 100
    with fresh_database("soak") as url:
        os.environ["ENGINE_DATABASE_URL"] = url  # the runs of the burst log through the SDK
        get_settings.cache_clear()
        with Soak(url, logs, seed=args.seed, runs=args.runs) as soak:
            print(
                f"soak: {len(soak.rules)} automations, {args.runs} runs per round, services' logs in {logs}",
                flush=True,
            )
            for _ in range(args.rounds):
                if time.monotonic() - started > args.max_minutes * 60:
                    print(f"soak: time limit of {args.max_minutes:g} min reached", flush=True)
                    break
                soak.round(on_progress=lambda line: print(line, flush=True))
            soak.drain(on_progress=lambda line: print(line, flush=True))  # the last digest windows
            summary = soak.summary()
            print(soak.summary_line(), flush=True)
        sdk_session.close_all()
    bad = ("lost", "duplicates", "extra_triggers", "unsettled_rounds", "unknown_delivery_ids", "digest_wrong")
    return 1 if any(summary[k] for k in bad) or summary["over_limit"] or summary["digests_open"] else 0


def http_mode(args: argparse.Namespace, logs: Path) -> int:
    import json

    from bench.support.http_soak import soak_http

    runs = args.runs or 20
    with fresh_database("soak_http") as url:
        print(
            f"soak --http: {args.rounds} kills of engine web, {runs} training processes, logs in {logs}",
            flush=True,
        )
        summary = soak_http(url, logs, kills=args.rounds, runs=runs, seed=args.seed)
    print(json.dumps(summary), flush=True)
    bad = ("lost", "duplicates", "wrong_values", "out_of_order", "unfinished_runs")
    return 1 if any(summary[k] for k in bad) else 0


if __name__ == "__main__":
    sys.exit(main())
