"""`engine serve`: the APScheduler 3 loop around the evaluator and the delivery dispatcher.

Thin on purpose: the job bodies are one-line calls into `Evaluator.tick()` and the
dispatcher, which are tested without a scheduler. Each service keeps its own in-memory
scheduler (APScheduler job stores must never be shared); several services coordinate
through the database only (row locks on automation state and deliveries).

Besides the periodic tick, a LISTEN connection on `engine_ingest` (one NOTIFY per SDK
flush) wakes the evaluation early, so a trigger follows its data within milliseconds.

Its database connections are bounded by the settings (`connection_budget`): the evaluator's
own (ENGINE_EVALUATION_CONNECTIONS, kept open: they hold session settings and prepared
statements), the dispatcher's pool (ENGINE_DELIVERY_CONNECTIONS, shared by its workers), the
LISTEN connection, and the metrics scrape's when --metrics-port is on. Two pools, not one: a
long tick holds its connections for its whole transaction, and must never starve the
deliveries of theirs (nor a burst of deliveries a tick).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from datetime import datetime, timezone

import psycopg
from psycopg import sql
from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from engine.db import NOTIFY_CHANNEL, connect, database_url
from engine.evaluator import Evaluator
from engine.exceptions import DatabaseUnavailable, EngineError
from engine.prometheus import for_service as metrics_for_service
from engine.settings import Settings, get_settings

log = logging.getLogger(__name__)

EVALUATE_JOB = "evaluate"


def connection_budget(settings: Settings) -> dict[str, int]:
    """The most database connections one `engine serve` opens, by part (docs/production.md)."""
    return {
        "evaluation": settings.evaluation_connections,
        "deliveries": settings.delivery_connections,
        "listen": 1,
        "metrics": 0 if settings.metrics_port is None else 1,
    }


class _SkippedWakeFilter(logging.Filter):
    """A wake that lands while a tick is queued or running makes APScheduler warn that the
    job was skipped (max_instances=1). That tick sees the new data anyway (and a wake during
    a tick re-runs it), so the warning is noise for our job; other jobs' warnings stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (EVALUATE_JOB in str(record.args) and "maximum number of running instances" in record.getMessage())


logging.getLogger("apscheduler.scheduler").addFilter(_SkippedWakeFilter())


class Service:
    """One evaluation service: `start()`, then `stop()` (or `run_forever()` for the CLI)."""

    def __init__(self, settings: Settings | None = None, *, interval: float | None = None, url: str | None = None):
        from engine.actions.dispatcher import Dispatcher

        self.settings = settings or get_settings()
        self.interval = interval or self.settings.interval
        self.url = url or database_url(self.settings)
        self.dispatcher = Dispatcher(self.url, self.settings)
        self.evaluator = Evaluator(self.url, self.settings, on_fired=lambda _n: self.dispatcher.wake())
        self.metrics = metrics_for_service(self.url, self.settings.metrics_port)  # does nothing when off
        self.scheduler = BackgroundScheduler(
            timezone=timezone.utc, executors={"default": ThreadPoolExecutor(max_workers=4)}
        )
        self._stopping = threading.Event()
        self._dirty = threading.Event()
        self._running = threading.Event()
        self._retry_at = 0.0
        self._outage_backoff = 0.5
        self._listener: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        self.scheduler.add_job(
            self.evaluate,
            "interval",
            seconds=self.interval,
            id=EVALUATE_JOB,
            name="evaluate automations",
            replace_existing=True,
            coalesce=True,  # ticks missed while one was slow run once, not N times
            max_instances=1,  # never two ticks of one service at once
            misfire_grace_time=max(1, int(self.interval * 2)),
            next_run_time=datetime.now(timezone.utc),
        )
        self.scheduler.add_listener(self._on_job_event, EVENT_JOB_ERROR | EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)
        self.metrics.serve(self.settings.metrics_port or 0, self.settings.metrics_address)
        self.dispatcher.start(self.scheduler)
        self.scheduler.start()
        self._listener = threading.Thread(target=self._listen, name="engine-listen", daemon=True)
        self._listener.start()
        budget = connection_budget(self.settings)
        log.info(
            "engine serve: evaluating every %.1fs, woken by NOTIFY %s; at most %d database connections (%s)",
            self.interval, NOTIFY_CHANNEL, sum(budget.values()),
            ", ".join(f"{n} {part}" for part, n in budget.items() if n),
        )

    def stop(self) -> None:
        """Finish the current tick (its transaction either commits or rolls back), then stop."""
        self._stopping.set()
        self.scheduler.shutdown(wait=True)
        self.dispatcher.stop()
        self.evaluator.close()
        if self._listener is not None:
            self._listener.join(timeout=5)
        self.metrics.close()
        log.info("engine serve: stopped")

    def run_forever(self) -> None:
        """Run until SIGINT or SIGTERM."""
        stop = threading.Event()

        def on_signal(signum: int, _frame: object) -> None:
            log.info("engine serve: received %s, stopping", signal.Signals(signum).name)
            stop.set()

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        self.start()
        try:
            while not stop.wait(1.0):
                pass
        finally:
            self.stop()

    # -- jobs --------------------------------------------------------------------------
    def evaluate(self) -> None:
        """The evaluation job: one tick, with outage handling."""
        if self._stopping.is_set() or time.monotonic() < self._retry_at:
            return
        self._running.set()
        self._dirty.clear()
        started, result, outcome = time.perf_counter(), None, "error"
        try:
            result = self.evaluator.tick()
            outcome = "ok"
            if self._outage_backoff > 0.5:
                log.warning("database reachable again: catching up")
            self._outage_backoff = 0.5
            if result.fired or result.failed:
                log.info(
                    "tick: %d evaluated, %d fired, %d failed (%s) in %.1f ms",
                    result.evaluated, result.fired, len(result.failed), ", ".join(result.failed), result.duration_ms,
                )
        except DatabaseUnavailable as exc:
            outcome = "database_unavailable"
            log.warning("database unavailable, retrying in %.1fs: %s", self._outage_backoff, exc)
            self._retry_at = time.monotonic() + self._outage_backoff
            self._outage_backoff = min(self._outage_backoff * 2, 30.0)
        except EngineError as exc:
            log.error("tick failed: %s", exc)
        finally:
            self._running.clear()
            self.metrics.record_tick(result, time.perf_counter() - started, outcome=outcome)
        if self._dirty.is_set() and not self._stopping.is_set():
            self.wake()

    def wake(self) -> None:
        """Evaluate now instead of at the next interval (new data arrived)."""
        self._dirty.set()
        if self._running.is_set() or self._stopping.is_set():
            return  # the running tick re-wakes itself when it ends
        try:
            self.scheduler.modify_job(EVALUATE_JOB, next_run_time=datetime.now(timezone.utc))
        except Exception:  # scheduler shutting down
            log.debug("could not wake the evaluation job", exc_info=True)

    def _on_job_event(self, event: JobExecutionEvent) -> None:
        if event.code == EVENT_JOB_ERROR:
            log.error("job %s raised: %r", event.job_id, event.exception)
        elif event.code == EVENT_JOB_MISSED:
            log.warning("job %s missed its run time (the previous run was too slow)", event.job_id)

    # -- LISTEN ------------------------------------------------------------------------
    def _listen(self) -> None:
        backoff = 0.5
        while not self._stopping.is_set():
            try:
                with connect(self.url, autocommit=True) as conn:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(NOTIFY_CHANNEL)))
                    backoff = 0.5
                    while not self._stopping.is_set():
                        for _notify in conn.notifies(timeout=1.0, stop_after=1):
                            self.wake()
            except (psycopg.Error, DatabaseUnavailable) as exc:
                if self._stopping.is_set():
                    return
                log.warning("LISTEN connection lost (%s); reconnecting in %.1fs", exc, backoff)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 30.0)
