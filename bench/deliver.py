"""Delivery benchmark: from `run.log` + flush to the webhook request, and sustained throughput.

    python bench/deliver.py                  # 100 latency samples, 2,000 deliveries
    python bench/deliver.py --samples 30 --deliveries 500

A fresh database, local receivers on 127.0.0.1 in processes of their own (a
ThreadingHTTPServer answering at once), and `engine serve`'s Service in this process with a 5 s interval — so the latency measured is
the NOTIFY-woken path (flush -> evaluate -> trigger -> dispatcher woken -> POST), not polling.

1. Latency (after one warm-up sample, not counted): each sample logs one value that fires a
   window-1 threshold rule on its own run and flushes; the time until the receiver has the
   request is one sample (p50, p99). While it
   runs, a background thread keeps other runs logging. Baseline measured in the same run: a
   direct httpx POST to the same receiver (what the network part alone costs).
2. Throughput: the receiver answers 500 to 10 % of requests (chosen at random: the retries
   land on other draws), a rule fires on every value of `--deliveries` values, and we time
   until every delivery has succeeded (the last success as the dispatcher recorded it, not
   when the polling saw it). Baseline: the same number of direct POSTs through 8
   threads (the dispatcher's default worker count). Also printed: the span of the first
   attempts (every delivery tried once) and the attempts made per second over it, retries
   made meanwhile included (`first_attempts_per_s`): the dispatcher's rate without the waits
   of the retry schedule. Deliveries and direct POSTs take turns `--repeat` times (a rule
   of its own each time); the JSON gives the median of each figure and the ratios of every
   turn (one turn of each swings by a third on two busy cores).

The last line is JSON: {"latency_p50_ms", "latency_p99_ms", "deliveries_per_s", ...}.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import NamedTuple

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.support.dataset import fresh_database
from engine import clock
from engine.automations import apply_rules
from engine.rules import parse_rules_text
from engine.settings import Settings, get_settings


class _Server(ThreadingHTTPServer):
    # socketserver listens with a backlog of 5: with 8 clients connecting at once to a server
    # whose accepting thread waits for the interpreter lock, the kernel drops connection
    # requests and the client's retry comes 1 s later, a stall of this server alone (the
    # servers webhooks reach listen with 128 or more). Both the deliveries and the direct
    # POSTs go to this server.
    request_queue_size = 128
    daemon_threads = True


def serve(fail_ratio: float, report: bool) -> None:
    """The receiver's process: prints its port, then (with `report`) one line per request,
    the run name in the payload and when it arrived (time.monotonic, the same clock in
    every process of the machine)."""
    rng, lock = random.Random(3), threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            now = time.monotonic()
            with lock:
                fail = rng.random() < fail_ratio
                if report:
                    key = json.loads(body).get("run", "") if body else ""
                    print(f"{key} {now!r}", flush=True)
            self.send_response(500 if fail else 200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    server = _Server(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


class Receiver:
    """A local webhook receiver in a process of its own, as every receiver of webhooks is:
    in this one, its threads would take turns on the interpreter with the dispatcher's and
    the direct POSTs' (and take the CPU of the one while it is measured against the other).
    With `report`, `arrived` gets when each run name's first request arrived."""

    def __init__(self, fail_ratio: float = 0.0, *, report: bool = False):
        self.arrived: dict[str, float] = {}
        command = [sys.executable, __file__, "--receiver", str(fail_ratio), *(["--report"] if report else [])]
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.url = f"http://127.0.0.1:{int(self.proc.stdout.readline())}/hook"
        if report:
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            key, at = line.rsplit(" ", 1)
            self.arrived.setdefault(key, float(at))

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def rule(name: str, metric: str, url: str) -> str:
    return (
        f"name: {name}\nscope: {{project: bench/deliver}}\n"
        f'event: {{type: run_metric_threshold, metric: {metric}, window: 1, operator: ">", threshold: 0.5}}\n'
        f"cooldown: 1m\n"
        f'action: {{type: webhook, url: "{url}", payload: {{run: "${{run_name}}", value: "${{metric_value}}"}}, '
        f"max_attempts: 20}}\n"
    )


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def direct_posts(url: str, count: int, workers: int) -> float:
    """Baseline: seconds for `count` POSTs through `workers` threads."""
    with httpx.Client() as client:
        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda i: client.post(url, json={"run": f"direct-{i}"}), range(count)))
        return time.perf_counter() - started


class Turn(NamedTuple):
    rate: float  # deliveries per second, from the first run.log to the last success
    baseline_rate: float  # direct POSTs per second
    first_rate: float  # attempts per second while the first attempts went out


def throughput(url: str, turn: int, deliveries: int, fast_url: str, workers: int) -> Turn:
    """One turn: `deliveries` firings of rule throughput-<turn> delivered, then as many direct POSTs."""
    import engine

    automation = {"automation": f"throughput-{turn}"}
    started = clock.now()  # the clock the dispatcher records `finished_at` with
    per_run = 100
    for r in range(0, deliveries, per_run):
        with engine.init(project="bench/deliver", name=f"load{turn}-{r}", system_metrics_interval=0) as run:
            for s in range(min(per_run, deliveries - r)):
                # hours apart in value time, so the 1 m cooldown never hides one
                run.log({f"load{turn}": 1.0}, step=s, time=clock.now() + s * timedelta(hours=1))
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            done, total = conn.execute(
                "SELECT count(*) FILTER (WHERE d.status = 'succeeded'), count(*) FROM deliveries d "
                "JOIN automations a ON a.id = d.automation_id WHERE a.name = %(automation)s",
                automation,
            ).fetchone()
            if total >= deliveries and done == total:
                break
            if (clock.now() - started).total_seconds() > 600:
                raise SystemExit(f"throughput: only {done}/{total} delivered after 600 s")
            time.sleep(0.05)
        spans = conn.execute(
            "SELECT min(t.fired_at), max(t.fired_at), min(d.finished_at), max(d.finished_at) FROM triggers t "
            "JOIN deliveries d ON d.trigger_id = t.id JOIN automations a ON a.id = t.automation_id "
            "WHERE a.name = %(automation)s",
            automation,
        ).fetchone()
        print(
            f"  triggers fired over {(spans[1] - spans[0]).total_seconds():.2f} s; "
            f"deliveries finished over {(spans[3] - spans[2]).total_seconds():.2f} s, "
            f"the last {(spans[3] - spans[1]).total_seconds():.2f} s after the last trigger"
        )
        failed_attempts = conn.execute(
            "SELECT count(*) FROM delivery_attempts x JOIN deliveries d ON d.id = x.delivery_id "
            "JOIN automations a ON a.id = d.automation_id WHERE a.name = %(automation)s AND x.http_status = 500",
            automation,
        ).fetchone()[0]
        # how long the work took apart from the retry schedule's waits: every first attempt
        # made, and the attempts made per second while the first ones went out (due retries
        # are sent among them, so they are counted too)
        first_s, firsts, attempts = conn.execute(
            "WITH x AS (SELECT x.attempt, x.started_at FROM delivery_attempts x "
            "JOIN deliveries d ON d.id = x.delivery_id JOIN automations a ON a.id = d.automation_id "
            "WHERE a.name = %(automation)s), "
            "s AS (SELECT min(started_at) AS t0, max(started_at) FILTER (WHERE attempt = 1) AS t1 FROM x) "
            "SELECT extract(epoch FROM s.t1 - s.t0), count(*) FILTER (WHERE x.attempt = 1), "
            "count(*) FILTER (WHERE x.started_at <= s.t1) FROM x, s GROUP BY s.t0, s.t1",
            automation,
        ).fetchone()
    # until the last success as the dispatcher recorded it: the polling above sees it up to
    # 50 ms (and the queries after it) later
    elapsed = (spans[3] - started).total_seconds()
    rate = deliveries / elapsed
    baseline_s = direct_posts(fast_url, deliveries, workers)
    baseline_rate = deliveries / baseline_s
    first_rate = attempts / max(float(first_s), 1e-3)
    print(
        f"  first attempts: {firsts} in {float(first_s):.2f} s, with {attempts - firsts} retries "
        f"= {first_rate:.0f} attempts/s "
        f"(ratio {first_rate / baseline_rate:.2f} to the direct POSTs)"
    )
    print(
        f"throughput: {deliveries} deliveries ({failed_attempts} attempts answered 500) in {elapsed:.1f} s "
        f"= {rate:.0f}/s, from run.log to the last success; direct POSTs: {baseline_rate:.0f}/s "
        f"(ratio {rate / baseline_rate:.2f})"
    )
    return Turn(rate, baseline_rate, first_rate)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--deliveries", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3, help="turns of deliveries and direct POSTs")
    args = parser.parse_args()

    os.environ["ENGINE_WEBHOOK_ALLOW_HOSTS"] = "127.0.0.1"
    os.environ["ENGINE_RETRY_BASE_SECONDS"] = "0.05"
    import engine
    from engine.scheduler import Service

    with fresh_database("deliver") as url:
        os.environ["ENGINE_DATABASE_URL"] = url
        get_settings.cache_clear()
        settings = Settings()
        fast, flaky = Receiver(report=True), Receiver(fail_ratio=0.10)
        with psycopg.connect(url) as conn:
            apply_rules(conn, [r.automation for r in parse_rules_text(rule("latency", "hit", fast.url))])
            for turn in range(args.repeat):
                apply_rules(
                    conn,
                    [
                        r.automation
                        for r in parse_rules_text(rule(f"throughput-{turn}", f"load{turn}", flaky.url))
                    ],
                )
            conn.commit()
        service = Service(settings, interval=5.0, url=url)
        service.start()
        stop_noise = threading.Event()

        def noise() -> None:  # other runs keep logging while we measure
            with engine.init(project="bench/deliver", name="noise", system_metrics_interval=0) as run:
                step = 0
                while not stop_noise.is_set():
                    run.log({"other": random.random()}, step=step)
                    step += 1
                    if step % 50 == 0:
                        run.flush()
                    time.sleep(0.002)

        noisy = threading.Thread(target=noise, daemon=True)
        noisy.start()
        try:
            # -- 1. latency ---------------------------------------------------------------
            samples: list[float] = []
            # sample -1 warms up and is not counted: the first firing after the service starts
            # also compiles the rule's statements and opens the first connections (~0.2-0.5 s),
            # and with 100 samples the p99 is the slowest one
            for i in range(-1, args.samples):
                name = f"lat-{i}"
                run = engine.init(project="bench/deliver", name=name, system_metrics_interval=0)
                started = time.monotonic()
                run.log({"hit": 1.0}, step=0)
                run.flush()
                deadline = started + 10
                while name not in fast.arrived and time.monotonic() < deadline:
                    time.sleep(0.0005)
                if name in fast.arrived and i >= 0:
                    samples.append((fast.arrived[name] - started) * 1000)
                elif i >= 0:
                    print(f"latency sample {i}: no request within 10 s")
                run.finish()
            with httpx.Client() as client:
                direct = []
                for i in range(50):
                    t = time.perf_counter()
                    client.post(fast.url, json={"run": f"baseline-{i}"})
                    direct.append((time.perf_counter() - t) * 1000)
            p50, p99 = quantile(samples, 0.5), quantile(samples, 0.99)
            print(
                f"latency run.log+flush -> webhook received: p50 {p50:.1f} ms, p99 {p99:.1f} ms "
                f"({len(samples)}/{args.samples} samples); direct POST p50 {quantile(direct, 0.5):.2f} ms"
            )

            # -- 2. throughput with 10 % failures, in turns with the direct POSTs ----------------
            turns = [
                throughput(url, turn, args.deliveries, fast.url, settings.delivery_workers)
                for turn in range(args.repeat)
            ]
        finally:
            stop_noise.set()
            noisy.join(5)
            service.stop()
            fast.close()
            flaky.close()
    print(
        json.dumps(
            {
                "latency_p50_ms": round(p50, 2),
                "latency_p99_ms": round(p99, 2),
                "deliveries_per_s": round(statistics.median(t.rate for t in turns), 1),
                "direct_post_p50_ms": round(quantile(direct, 0.5), 3),
                "direct_posts_per_s": round(statistics.median(t.baseline_rate for t in turns), 1),
                "ratio_vs_direct": round(statistics.median(t.rate / t.baseline_rate for t in turns), 3),
                "ratios": [round(t.rate / t.baseline_rate, 3) for t in turns],
                "first_attempts_per_s": round(statistics.median(t.first_rate for t in turns), 1),
                "first_attempts_ratio_vs_direct": round(
                    statistics.median(t.first_rate / t.baseline_rate for t in turns), 3
                ),
            }
        )
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--receiver"]:
        serve(float(sys.argv[2]), "--report" in sys.argv[3:])
    else:
        main()
