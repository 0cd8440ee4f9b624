"""`engine serve` as deployed, in a subprocess: its database connections stay within the
budget its settings give (whatever the number of delivery workers), and its metrics
endpoint listens on 127.0.0.1 unless a host is given."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import psycopg

import engine
from engine.scheduler import connection_budget
from engine.settings import Settings
from tests.acceptance.service_helpers import ServeProcess, wait_until
from tests.integration.evaluation_helpers import apply_yaml, rule
from tests.receiver import Receiver, Reply, free_port

ENGINE = Path(sys.executable).parent / "engine"


def serve_connections(conn: psycopg.Connection) -> int:
    return conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'engine-serve' AND datname = current_database()"
    ).fetchone()[0]


def test_serve_holds_no_more_connections_than_its_budget_under_load(conn, database_url, tmp_path):
    runs = 32
    with Receiver(Reply(hang=0.3)) as receiver:  # slow answers: every delivery worker is busy at once
        apply_yaml(
            conn,
            "---\n".join(
                [
                    rule(
                        "acc",
                        '{type: run_metric_threshold, metric: acc, window: 1, operator: ">", threshold: 0.5}',
                    ).replace("action: {type: no_op}", f"action: {{type: webhook, url: '{receiver.url()}'}}"),
                    *(
                        rule(
                            f"m{i}",
                            f'{{type: run_metric_threshold, metric: m{i}, window: 2, operator: ">", threshold: 0.5}}',
                        )
                        for i in range(6)
                    ),  # several metrics: a tick shares them out among its connections
                ]
            ),
        )
        env = {
            "ENGINE_DELIVERY_WORKERS": "16",
            "ENGINE_DELIVERY_CONNECTIONS": "2",
            "ENGINE_EVALUATION_CONNECTIONS": "2",
            "ENGINE_METRICS_PORT": str(free_port()),
        }
        budget = connection_budget(Settings(delivery_connections=2, evaluation_connections=2, metrics_port=1))
        peak, done = 0, threading.Event()

        def watch() -> None:
            nonlocal peak
            with psycopg.connect(database_url, autocommit=True) as watcher:
                while not done.wait(0.02):
                    peak = max(peak, serve_connections(watcher))

        serve = ServeProcess(database_url, tmp_path / "serve.log", interval=0.5, extra_env=env).start()
        monitor = threading.Thread(target=watch)
        monitor.start()
        try:
            assert wait_until(lambda: "evaluating every" in (tmp_path / "serve.log").read_text())
            httpx.get(
                f"http://127.0.0.1:{env['ENGINE_METRICS_PORT']}/metrics", timeout=5
            )  # opens its connection
            for r in range(runs):  # each rule fires once per run (its cooldown)
                with engine.init(project="acme/vision", name=f"busy-{r}", system_metrics_interval=0) as run:
                    for step in range(3):
                        run.log({"acc": 0.9, **{f"m{i}": 0.9 for i in range(6)}}, step=step)
            receiver.wait_for(runs, timeout=60)
            assert wait_until(
                lambda: (
                    conn.execute("SELECT count(*) FROM deliveries WHERE status = 'succeeded'").fetchone()[0]
                    == runs
                ),
                timeout=30,
            )
            assert serve.terminate() == 0
        finally:
            done.set()
            monitor.join()
            serve.stop_quietly()

    log = (tmp_path / "serve.log").read_text()
    assert "at most 6 database connections (2 evaluation, 2 deliveries, 1 listen, 1 metrics)" in log, log[
        -3000:
    ]
    assert sum(budget.values()) == 6
    # 16 workers busy at once, yet no more connections than the budget (the pool grew to
    # delivery_workers + 2 = 18 before it was bounded)
    assert 0 < peak <= 6, peak
    assert (
        conn.execute(
            "SELECT count(*) FROM triggers t JOIN automations a ON a.id = t.automation_id "
            "WHERE a.name LIKE 'm%'"
        ).fetchone()[0]
        == 6 * runs
    )


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def test_the_metrics_endpoint_listens_on_localhost_unless_a_host_is_given(database_url, tmp_path):
    # 127.0.0.2 is this machine too (all of 127/8 is loopback), but a socket bound to
    # 127.0.0.1 does not accept it, while one bound to 0.0.0.0 does.
    for given, address in (("{port}", "127.0.0.1"), ("0.0.0.0:{port}", "0.0.0.0")):
        port = free_port()
        log = tmp_path / f"serve-{address}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [str(ENGINE), "serve", "--interval", "1", "--metrics-port", given.format(port=port)],
                env={**os.environ, "ENGINE_DATABASE_URL": database_url},
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        try:
            assert wait_until(lambda log=log: "serving Prometheus metrics" in log.read_text()), (
                log.read_text()
            )
            assert f"serving Prometheus metrics on http://{address}:{port}/metrics" in log.read_text()
            assert httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).status_code == 200
            assert reachable("127.0.0.2", port) is (address == "0.0.0.0")
        finally:
            proc.terminate()
            proc.wait(20)


def test_a_metrics_port_that_is_not_one_is_a_usage_error(database_url):
    result = subprocess.run(
        [str(ENGINE), "serve", "--metrics-port", "::1:9108"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "ENGINE_DATABASE_URL": database_url},
    )
    assert result.returncode == 2
    assert "'::1:9108' is not a port or HOST:PORT" in result.stderr
    assert "[::]:9108" in result.stderr
