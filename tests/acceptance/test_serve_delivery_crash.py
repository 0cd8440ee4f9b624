"""SIGKILL of `engine serve` between claiming a delivery and recording its outcome: after a
restart the receiver sees the delivery at least once and at most twice, always with the same
X-Automation-Delivery id, and the delivery ends succeeded (never lost)."""

from __future__ import annotations

import pytest

import engine
from engine.automations import apply_rules
from engine.rules import parse_rules_text
from tests.acceptance.service_helpers import ServeProcess, wait_until
from tests.receiver import Receiver, Reply


@pytest.mark.slow
def test_kill_between_claim_and_record_repeats_with_the_same_id(conn, database_url, tmp_path):
    # holds the first request (the service is killed meanwhile), answers later ones at once
    receiver = Receiver(Reply(200, b"", hang=5), Reply(200, b"")).start()
    text = (
        "name: hook\nscope: {project: acme/crash}\n"
        'event: {type: run_metric_threshold, metric: m, window: 1, operator: ">", threshold: 0}\n'
        f'action: {{type: webhook, url: "{receiver.url()}", timeout: 2}}\n'
    )
    apply_rules(conn, [r.automation for r in parse_rules_text(text)])
    log = tmp_path / "serve.log"
    service = ServeProcess(database_url, log, interval=0.3).start()
    try:
        with engine.init(project="acme/crash", name="r", system_metrics_interval=0) as run:
            run.log({"m": 1.0})
        assert receiver.received(1, timeout=30), log.read_text()[-2000:]
        service.kill()  # the request is in flight: claimed, sent, not recorded
        assert conn.execute("SELECT status FROM deliveries").fetchone()[0] == "sending"
        service = ServeProcess(database_url, log, interval=0.3).start()
        # the lease (30 s + 6 x timeout) expires, then the new service sends it again
        assert wait_until(
            lambda: conn.execute("SELECT status FROM deliveries").fetchone()[0] == "succeeded", timeout=90
        ), log.read_text()[-2000:]
    finally:
        service.stop_quietly()
        receiver.stop()
    ids = [r.headers["X-Automation-Delivery"] for r in receiver.requests]
    assert 1 <= len(ids) <= 2 and len(set(ids)) == 1
    assert conn.execute("SELECT count(*) FROM triggers").fetchone()[0] == 1
