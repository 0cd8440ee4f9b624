"""A digest across SIGKILLs of `engine serve`: services killed while its window is open lose
none of its triggers, and the services left close it into exactly one delivery (the window,
its members and its closing are rows; closing is claimed like a delivery)."""

from __future__ import annotations

import pytest

import engine
from tests.acceptance.service_helpers import ServeProcess, wait_until
from tests.integration.evaluation_helpers import apply_yaml
from tests.receiver import Receiver, Reply


def members(conn) -> int:
    return conn.execute("SELECT count(*) FROM digest_members").fetchone()[0]


def crossing(names: list[str]) -> None:
    for name in names:
        run = engine.init(project="acme/digest", name=name, system_metrics_interval=0)
        run.log({"loss": 3.0}, step=0)
        run.finish()


@pytest.mark.slow
def test_services_killed_inside_the_window_still_send_one_digest_with_every_trigger(
    conn, database_url, tmp_path
):
    log = tmp_path / "serve.log"
    with Receiver(Reply(200)) as rx:
        apply_yaml(
            conn,
            "name: digest-kill\nscope: {project: acme/digest}\n"
            'event: {type: run_metric_threshold, metric: loss, window: 1, operator: ">", threshold: 1}\n'
            f'action: {{type: webhook, url: "{rx.url()}", digest: 1m}}\n',
        )
        env = {"ENGINE_WEBHOOK_ALLOW_HOSTS": "127.0.0.1"}
        first, second = (
            ServeProcess(database_url, log, interval=0.3, extra_env=env).start() for _ in range(2)
        )
        third = None
        try:
            crossing([f"a{i}" for i in range(5)])
            assert wait_until(lambda: members(conn) == 5, timeout=60), log.read_text()[-2000:]
            first.kill()
            crossing([f"b{i}" for i in range(3)])
            assert wait_until(lambda: members(conn) == 8, timeout=60), log.read_text()[-2000:]
            second.kill()
            assert conn.execute("SELECT count(*) FROM deliveries").fetchone()[0] == 0  # still open
            third = ServeProcess(database_url, log, interval=0.3, extra_env=env).start()
            assert wait_until(
                lambda: (
                    conn.execute("SELECT count(*) FROM deliveries WHERE status = 'succeeded'").fetchone()[0]
                    == 1
                ),
                timeout=120,
            ), log.read_text()[-2000:]
        finally:
            for service in (first, second, third):
                if service is not None:
                    service.stop_quietly()
    (request,) = rx.requests
    body = request.json()
    assert body["digest_count"] == 8
    assert sorted(item["run_name"] for item in body["digest"]) == sorted(
        [f"a{i}" for i in range(5)] + [f"b{i}" for i in range(3)]
    )
    assert conn.execute("SELECT count(*), count(closed_at) FROM digests").fetchone() == (1, 1)
    statuses = conn.execute("SELECT DISTINCT delivery_status FROM automation_history").fetchall()
    assert statuses == [("succeeded",)]


@pytest.mark.slow
def test_three_services_share_one_rate_limit(conn, database_url, tmp_path):
    log = tmp_path / "serve.log"
    with Receiver(Reply(200)) as rx:
        apply_yaml(
            conn,
            "name: limited\nscope: {project: acme/digest}\n"
            'event: {type: run_metric_threshold, metric: loss, window: 1, operator: ">", threshold: 1}\n'
            f'action: {{type: webhook, url: "{rx.url()}", rate_limit: {{count: 3, per: 1h}}}}\n',
        )
        env = {"ENGINE_WEBHOOK_ALLOW_HOSTS": "127.0.0.1"}
        services = [ServeProcess(database_url, log, interval=0.2, extra_env=env).start() for _ in range(3)]
        try:
            crossing([f"r{i}" for i in range(10)])
            assert wait_until(
                lambda: (
                    conn.execute(
                        "SELECT count(*) FILTER (WHERE delivery_status = 'succeeded'), "
                        "count(*) FILTER (WHERE delivery_status = 'suppressed') FROM automation_history"
                    ).fetchone()
                    == (3, 7)
                ),
                timeout=60,
            ), log.read_text()[-2000:]
        finally:
            for service in services:
                service.stop_quietly()
    assert len(rx.requests) == 3
