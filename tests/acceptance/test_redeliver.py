"""`engine redeliver` as an operator runs it: from a shell that has neither the action's secret
nor ENGINE_WEBHOOK_ALLOW_HOSTS, the delivery is handed to the running `engine serve`, which
sends it with its own; `--here` sends it from the shell instead."""

from __future__ import annotations

import os
import subprocess

from tests.acceptance.service_helpers import ENGINE, ServeProcess, wait_until
from tests.integration.actions_helpers import delivery, fire, make_automation
from tests.receiver import Receiver, Reply

SERVICE_ENV = {"ENGINE_WEBHOOK_ALLOW_HOSTS": "127.0.0.1", "REDELIVER_TOKEN": "tok-of-the-service"}


def webhook(url: str) -> dict:
    return {"type": "webhook", "url": url, "headers": {}, "access_token": {"env": "REDELIVER_TOKEN"}, "secret": None,
            "payload": None, "timeout": 5.0, "max_attempts": 1}  # fmt: skip


def operator(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`engine …` from a shell with only the database URL (and `env`)."""
    clean = {k: v for k, v in os.environ.items() if k not in SERVICE_ENV} | env
    return subprocess.run(
        [ENGINE, *args], env=clean, capture_output=True, text=True, timeout=120, check=False
    )


def failed_delivery(conn, rx: Receiver, name: str):
    action = webhook(rx.url())
    automation = make_automation(conn, name, [action])
    _, (delivery_id,) = fire(conn, automation, [action])
    return delivery_id


def test_redeliver_hands_the_delivery_to_the_service(conn, database_url, tmp_path):
    # The receiver was down (503) when the service first sent it; it is back (200) for the redelivery.
    with Receiver(Reply(503), Reply(200)) as rx:
        service = ServeProcess(database_url, tmp_path / "serve.log", extra_env=SERVICE_ENV).start()
        try:
            delivery_id = failed_delivery(conn, rx, "redo-by-service")
            assert wait_until(lambda: delivery(conn, delivery_id)["status"] == "failed"), (
                tmp_path / "serve.log"
            ).read_text()
            result = operator("redeliver", str(delivery_id)[:8])
            assert result.returncode == 0, result.stderr
            assert "queued: a running `engine serve` sends it within about 1 s" in result.stdout
            assert wait_until(lambda: delivery(conn, delivery_id)["status"] == "succeeded"), (
                tmp_path / "serve.log"
            ).read_text()
        finally:
            service.stop_quietly()
    assert [r.headers["X-Automation-Delivery"] for r in rx.requests] == [str(delivery_id)] * 2
    assert rx.requests[1].headers["Authorization"] == "Bearer tok-of-the-service"  # the service's secret


def test_redeliver_here_sends_from_the_shell_with_its_environment(conn, database_url):
    with Receiver(Reply(200)) as rx:
        delivery_id = failed_delivery(conn, rx, "redo-here")  # never sent: no service runs
        # Without the allow-list and the secret, the shell cannot send it: it says why.
        bare = operator("redeliver", str(delivery_id), "--here")
        assert bare.returncode == 1 and rx.requests == []
        assert "environment variable REDELIVER_TOKEN is not set" in bare.stdout, bare.stdout + bare.stderr
        sent = operator("redeliver", str(delivery_id), "--here", **SERVICE_ENV)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert "sending it from this shell" in sent.stdout and "succeeded (HTTP 200)" in sent.stdout
    assert [r.headers["Authorization"] for r in rx.requests] == ["Bearer tok-of-the-service"]
    assert delivery(conn, delivery_id)["status"] == "succeeded"
