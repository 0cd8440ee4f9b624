"""Digest benchmark: how long after its window closes a digest of many triggers is sent.

    python bench/digest.py                   # a digest of 1,000 triggers, 3 repetitions
    python bench/digest.py --triggers 5000 --repeat 1

A fresh database, a receiver on 127.0.0.1, and `engine serve`'s dispatcher in this process
(its wake thread, as in the service). Each repetition: one run logs `--triggers` values of a
window-1 threshold rule with `digest: 1m`, each value a cooldown apart on its own time, and
one evaluation records them all in one window. So as not to wait a minute, that evaluation
runs with the engine's clock set back so the window closes 2 s later in real time; then the
dispatcher runs on the real clock. The figure is the time from the window's end
(`digests.closes_at`) to the receiver having the whole request: the closing claim, the
delivery's claim, the members' variables read and rendered, the POST.

The last line is JSON: {"digest_close_to_sent_ms": median, "max_ms", "triggers", "body_bytes"}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.support.dataset import fresh_database
from engine import clock
from engine.automations import apply_rules
from engine.rules import parse_rules_text
from engine.settings import Settings, get_settings

WINDOW = timedelta(minutes=1)
LEAD = timedelta(seconds=2)  # the window closes this long after the evaluation, in real time


class Receiver:
    """Records when each request had fully arrived, and its size and item count."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[datetime, int, int]] = []
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                at = datetime.now(UTC)
                self.send_response(200)
                self.end_headers()
                with receiver.arrived:
                    receiver.arrivals.append((at, len(body), json.loads(body)["digest_count"]))
                    receiver.arrived.notify_all()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/digest"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout: float) -> None:
        with self.arrived:
            if not self.arrived.wait_for(lambda: len(self.arrivals) >= count, timeout):
                raise SystemExit(f"the digest did not arrive within {timeout:g} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--triggers", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    os.environ["ENGINE_WEBHOOK_ALLOW_HOSTS"] = "127.0.0.1"
    import engine
    from engine.actions.dispatcher import Dispatcher
    from engine.evaluation import Evaluator

    receiver = Receiver()
    with fresh_database("digest") as url:
        os.environ["ENGINE_DATABASE_URL"] = url
        get_settings.cache_clear()
        settings = Settings()
        text = (
            "name: digest\nscope: {project: bench/digest}\ncooldown: 1m\n"
            'event: {type: run_metric_threshold, metric: loss, window: 1, operator: ">", threshold: 1}\n'
            f"action: {{type: webhook, url: {receiver.url}, digest: 1m}}\n"
        )
        with psycopg.connect(url) as conn:
            apply_rules(conn, [r.automation for r in parse_rules_text(text)])
            conn.commit()
        evaluator = Evaluator(url, settings)
        delays: list[float] = []
        for repetition in range(args.repeat):
            start = datetime.now(UTC) - timedelta(days=30)
            with engine.init(
                project="bench/digest", name=f"sweep-{repetition}", system_metrics_interval=0
            ) as run:
                for i in range(args.triggers):
                    run.log({"loss": 2.0}, step=i, time=start + i * timedelta(seconds=61))
            with clock.frozen(datetime.now(UTC) - WINDOW + LEAD):
                result = evaluator.tick()
            assert result.fired == args.triggers, result
            with psycopg.connect(url) as conn:
                (closes_at,) = conn.execute("SELECT max(closes_at) FROM digests").fetchone()
            dispatcher = Dispatcher(url, settings)
            dispatcher.start()
            try:
                receiver.wait_for(repetition + 1, timeout=LEAD.total_seconds() + 30)
            finally:
                dispatcher.stop()
            at, size, count = receiver.arrivals[-1]
            assert count == args.triggers, count
            delays.append((at - closes_at).total_seconds() * 1000)
            print(
                f"repetition {repetition + 1}: {count} triggers, {size:,} bytes, sent {delays[-1]:.0f} ms after closing"
            )
        evaluator.close()
    print(
        json.dumps(
            {
                "digest_close_to_sent_ms": round(statistics.median(delays), 1),
                "max_ms": round(max(delays), 1),
                "triggers": args.triggers,
                "body_bytes": receiver.arrivals[-1][1],
            }
        )
    )


if __name__ == "__main__":
    main()
