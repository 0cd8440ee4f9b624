"""Prometheus metrics of the evaluation service: a Service started in this process with a
metrics port, a rule that fires and one that fails, then /metrics scraped over HTTP."""

from __future__ import annotations

import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import engine
from engine.prometheus import NO_METRICS, DatabaseCollector, for_service
from engine.scheduler import Service
from engine.settings import Settings
from tests.integration.actions_helpers import fire, make_automation
from tests.integration.evaluation_helpers import apply_yaml, break_automation, rule
from tests.receiver import Receiver, free_port


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of one scrape."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).raise_for_status().text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def wait_for_scrape(port: int, check, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(port)
        if check(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.1)


def test_ticks_triggers_failures_deliveries_and_queue_are_exported(conn, database_url):
    port = free_port()
    with Receiver() as rx:
        apply_yaml(
            conn,
            rule("fires", "{type: run_state, states: [running]}").replace(
                "action: {type: no_op}", f"action: {{type: webhook, url: '{rx.url()}'}}"
            ),
        )
        apply_yaml(conn, rule("broken", "{type: run_state, states: [running]}"))
        settings = Settings(
            database_url=database_url,
            webhook_allow_hosts="127.0.0.1",
            metrics_port=port,
            metrics_address="127.0.0.1",
            interval=3600,  # ticks come from the start and from NOTIFY only: the test decides when
        )
        service = Service(settings)
        break_automation(service.evaluator, "broken", "SELECT 1 / 0")
        service.start()
        try:
            first = wait_for_scrape(port, lambda s: (value(s, "engine_ticks_total", outcome="ok") or 0) >= 1)
            assert value(first, "engine_tick_triggers_fired_total") == 0.0
            with engine.init(
                project="acme/vision", name="r", system_metrics_interval=0
            ):  # creation fires both
                pass
            service.wake()  # a run's creation sends no NOTIFY (only logged points do)
            samples = wait_for_scrape(
                port,
                lambda s: (
                    value(s, "engine_deliveries", status="succeeded") == 1
                    and value(s, "engine_tick_triggers_fired_total") == 1
                ),
            )
            # A delivery stuck for an hour (not due for a day): the queue and its age show it.
            stale = make_automation(conn, "stale", [{"type": "webhook", "url": rx.url()}])
            _, ids = fire(conn, stale, [{"type": "webhook", "url": rx.url()}])
            conn.execute(
                "UPDATE deliveries SET created_at = now() - interval '1 hour', next_attempt_at = now() + interval '1 day' WHERE id = %s",
                (ids[0],),
            )
            samples = scrape(port)
        finally:
            service.stop()

    assert len(rx.requests) == 1
    ok = value(samples, "engine_ticks_total", outcome="ok")
    assert ok >= 2 and value(samples, "engine_ticks_total", outcome="error") == 0
    assert value(samples, "engine_tick_duration_seconds_count") == ok
    assert value(samples, "engine_tick_duration_seconds_sum") > 0
    assert value(samples, "engine_tick_triggers_fired_total") == 1
    assert value(samples, "engine_automation_evaluation_failures_total", automation="broken") >= 1
    assert value(samples, "engine_triggers_total", automation="fires") == 1
    assert value(samples, "engine_triggers_total", automation="broken") == 0
    assert value(samples, "engine_triggers_total", automation="stale") == 1
    assert value(samples, "engine_automations_enabled") == 3
    assert value(samples, "engine_automations_failing") == 1
    assert value(samples, "engine_deliveries", status="succeeded") == 1
    assert value(samples, "engine_deliveries", status="pending") == 1
    assert value(samples, "engine_deliveries", status="failed") == 0
    assert value(samples, "engine_delivery_queue_depth") == 1
    assert 3600 <= value(samples, "engine_delivery_oldest_pending_age_seconds") < 3700
    assert value(samples, "engine_database_up") == 1
    # stop() freed the port
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_a_scrape_without_the_database_says_so_instead_of_failing():
    collector = DatabaseCollector(f"postgresql://engine@127.0.0.1:{free_port()}/engine")
    families = list(collector.collect())
    assert [(f.name, [s.value for s in f.samples]) for f in families] == [("engine_database_up", [0.0])]


def test_metrics_are_off_by_default(database_url):
    assert for_service(database_url, None) is NO_METRICS
    assert Service(Settings(database_url=database_url)).metrics is NO_METRICS
