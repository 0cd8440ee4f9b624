"""The evaluation service's APScheduler job under a storm of wakes (one per SDK flush in real
life): one job, never skipped nor late, so APScheduler has nothing to warn about."""

from __future__ import annotations

import gc
import logging
import threading

from engine.scheduler import EVALUATE_JOB, Service
from engine.settings import Settings
from tests.integration.test_metrics import scrape, value, wait_for_scrape
from tests.receiver import free_port


def test_wakes_from_many_threads_never_make_apscheduler_skip_or_miss_a_run(database_url, caplog):
    caplog.set_level(logging.DEBUG, logger="apscheduler")
    port = free_port()
    settings = Settings(
        database_url=database_url, metrics_port=port, metrics_address="127.0.0.1", interval=0.2
    )
    service = Service(settings)
    service.start()
    try:
        wait_for_scrape(port, lambda s: (value(s, "engine_ticks_total", outcome="ok") or 0) >= 1)
        [job] = service.scheduler.get_jobs()  # the dispatcher has no job of its own
        assert (job.id, job.max_instances, job.misfire_grace_time) == (EVALUATE_JOB, 1, None)
        before = value(scrape(port), "engine_ticks_total", outcome="ok")
        storm = threading.Event()

        def wake_repeatedly() -> None:
            for _ in range(400):
                service.wake()
                if storm.wait(0.002):
                    return

        wakers = [threading.Thread(target=wake_repeatedly) for _ in range(3)]
        for t in wakers:
            t.start()
        for t in wakers:
            t.join()
        samples = wait_for_scrape(port, lambda s: value(s, "engine_ticks_total", outcome="ok") >= before + 3)
    finally:
        service.stop()
    assert value(samples, "engine_ticks_total", outcome="ok") >= before + 3
    said = [(r.name, r.levelname, r.getMessage()) for r in caplog.records if r.name.startswith("apscheduler")]
    assert [s for s in said if s[1] != "DEBUG" and s[1] != "INFO"] == []
    assert not any("skipped" in m or "missed" in m for _, _, m in said)


def test_the_service_stops_cleanly_right_after_it_starts(database_url):
    """Stopping while the scheduler hands the first run to its executor: APScheduler removes
    a spent one-off job after submitting it and raised in its own thread when it found the
    scheduler already stopped (twenty quick cycles hit that window every time)."""
    for _ in range(20):
        service = Service(Settings(database_url=database_url, interval=5.0))
        service.start()
        service.stop()
        assert not service.scheduler.running
        assert service.scheduler.get_jobs() == []


def test_the_service_keeps_its_startup_objects_out_of_full_collections_while_it_runs(database_url):
    """A full collection holds every thread (deliveries in flight included) while it walks the
    heap: what exists when the service starts is frozen (never walked again), and given back
    to the collector when it stops, for a process that goes on."""
    gc.unfreeze()
    service = Service(Settings(database_url=database_url, interval=5.0))
    service.start()
    try:
        frozen = gc.get_freeze_count()
    finally:
        service.stop()
    assert frozen > 0
    assert gc.get_freeze_count() == 0
