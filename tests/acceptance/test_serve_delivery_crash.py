"""SIGKILL of `engine serve` between claiming a delivery and recording its outcome: after a
restart the receiver sees the delivery at least once and at most twice, always with the same
X-Automation-Delivery id, and the delivery ends succeeded (never lost)."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import engine
from engine.rules import parse_rules_text
from engine.automations import apply_rules
from tests.acceptance.service_helpers import ServeProcess, wait_until


class SlowFirstReceiver:
    """Holds the first request for a long time (the service is killed meanwhile); answers
    every later one at once."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.first_arrived = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.ids.append(self.headers["X-Automation-Delivery"])
                if len(receiver.ids) == 1:
                    receiver.first_arrived.set()
                    time.sleep(5)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.slow
def test_kill_between_claim_and_record_repeats_with_the_same_id(conn, database_url, tmp_path):
    receiver = SlowFirstReceiver()
    text = (
        "name: hook\nscope: {project: acme/crash}\n"
        'event: {type: run_metric_threshold, metric: m, window: 1, operator: ">", threshold: 0}\n'
        f'action: {{type: webhook, url: "{receiver.url}", timeout: 2}}\n'
    )
    apply_rules(conn, [r.automation for r in parse_rules_text(text)])
    log = tmp_path / "serve.log"
    service = ServeProcess(database_url, log, interval=0.3).start()
    try:
        with engine.init(project="acme/crash", name="r", system_metrics_interval=0) as run:
            run.log({"m": 1.0})
        assert receiver.first_arrived.wait(30), log.read_text()[-2000:]
        service.kill()  # the request is in flight: claimed, sent, not recorded
        assert conn.execute("SELECT status FROM deliveries").fetchone()[0] == "sending"
        service = ServeProcess(database_url, log, interval=0.3).start()
        # the lease (30 s + 6 x timeout) expires, then the new service sends it again
        assert wait_until(
            lambda: conn.execute("SELECT status FROM deliveries").fetchone()[0] == "succeeded", timeout=90
        ), log.read_text()[-2000:]
    finally:
        service.stop_quietly()
        receiver.close()
    assert 1 <= len(receiver.ids) <= 2 and len(set(receiver.ids)) == 1
    assert conn.execute("SELECT count(*) FROM triggers").fetchone()[0] == 1
