"""A digest across SIGKILLs of `engine serve`: services killed while its window is open lose
none of its triggers, and the services left close it into exactly one delivery (the window,
its members and its closing are rows; closing is claimed like a delivery)."""

from __future__ import annotations

from collections import Counter

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


LIMITED = (
    "name: {name}\nscope: {{project: acme/digest}}\n"
    'event: {{type: run_metric_threshold, metric: loss, window: 1, operator: ">", threshold: 1}}\n'
    'action: {{type: webhook, url: "{url}", rate_limit: {{count: {count}, per: {per}}}}}\n'
)


def final_statuses(conn, automation: str) -> list[str] | None:
    """The delivery status of each trigger of `automation`, once none is pending or sending."""
    rows = [
        s
        for (s,) in conn.execute(
            "SELECT delivery_status FROM automation_history WHERE automation = %s", (automation,)
        )
    ]
    return None if any(s not in ("succeeded", "suppressed") for s in rows) else rows


@pytest.mark.slow
def test_three_services_share_one_rate_limit(conn, database_url, tmp_path):
    """`limited`: 3 per hour, 10 crossings: exactly 3 sent and 7 suppressed. `rolling`: 2 per
    3 s over two waves of crossings, the second once the period has rolled: never more than 2
    let through in any 3 s (by the deliveries' creation times, when the limit admitted them),
    each trigger either sent once or suppressed and never sent, and the second wave sends again."""
    log = tmp_path / "serve.log"
    with Receiver(Reply(200)) as rx:
        apply_yaml(
            conn,
            LIMITED.format(name="limited", url=rx.url("/limited"), count=3, per="1h")
            + "---\n"
            + LIMITED.format(name="rolling", url=rx.url("/rolling"), count=2, per="3s"),
        )
        env = {"ENGINE_WEBHOOK_ALLOW_HOSTS": "127.0.0.1"}
        services = [ServeProcess(database_url, log, interval=0.2, extra_env=env).start() for _ in range(3)]
        try:
            crossing([f"r{i}" for i in range(10)])
            assert wait_until(
                lambda: (
                    sorted(final_statuses(conn, "limited") or []) == ["succeeded"] * 3 + ["suppressed"] * 7
                    and len(final_statuses(conn, "rolling") or []) == 10
                ),
                timeout=60,
            ), log.read_text()[-2000:]
            # the second wave once the last delivery let through is older than the period
            assert wait_until(
                lambda: conn.execute(
                    "SELECT max(d.created_at) < now() - interval '3 s' FROM deliveries d"
                    " JOIN automations a ON a.id = d.automation_id"
                    " WHERE a.name = 'rolling' AND d.status <> 'suppressed'"
                ).fetchone()[0],
                timeout=30,
            )
            crossing([f"w{i}" for i in range(5)])
            assert wait_until(lambda: len(final_statuses(conn, "rolling") or []) == 15, timeout=60), (
                log.read_text()[-2000:]
            )
        finally:
            for service in services:
                service.stop_quietly()
    assert len([r for r in rx.requests if r.path == "/limited"]) == 3
    rows = conn.execute(
        "SELECT d.id::text, d.status, d.created_at, r.name FROM deliveries d"
        " JOIN automations a ON a.id = d.automation_id JOIN triggers t ON t.id = d.trigger_id"
        " JOIN runs r ON r.id = t.run_pk WHERE a.name = 'rolling' ORDER BY d.created_at"
    ).fetchall()
    assert len(rows) == 15  # one delivery per trigger
    sent = Counter(r.headers["X-Automation-Delivery"] for r in rx.requests if r.path == "/rolling")
    admitted = [row for row in rows if row[1] == "succeeded"]
    assert all(sent[i] == 1 for i, *_ in admitted)  # sent once each
    assert not any(sent[i] for i, status, *_ in rows if status == "suppressed")  # never both
    assert set(sent) == {i for i, *_ in admitted}
    times = [created for _, _, created, _ in admitted]
    assert all((later - first).total_seconds() >= 3 for first, later in zip(times, times[2:], strict=False))
    assert len(admitted) >= 2 and any(name.startswith("w") for *_, name in admitted)
