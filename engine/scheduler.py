"""`engine serve`: the APScheduler 3 loop around the evaluator and the delivery dispatcher.

Thin on purpose: the one job's body is `EvaluationLoop.run()` (engine/service_loop.py: one
`Evaluator.tick()`, outage backoff, wake-ups, metrics), which is tested without a scheduler;
the job is added again after each run, at the time the loop asks for. The dispatcher has its
own wake thread (engine/actions/dispatcher.py). Each service keeps its own in-memory
scheduler (APScheduler job stores must never be shared); several services coordinate
through the database only (row locks on automation state and deliveries).

Besides the periodic tick, a LISTEN connection on `engine_ingest` (one NOTIFY per SDK
flush) wakes the evaluation early, so a trigger follows its data within milliseconds.

Its database connections are bounded by the settings (`connection_budget`): one pool
(`engine.db.Database`) shared out among the evaluation (ENGINE_EVALUATION_CONNECTIONS, leased:
they hold session settings and prepared statements), the deliveries (ENGINE_DELIVERY_CONNECTIONS,
borrowed by the workers in turn) and the metrics scrape when --metrics-port is on, plus the
LISTEN connection. Each part has its own share of the pool: a long tick holds its connections
for its whole transaction, and must never starve the deliveries of theirs (nor a burst of
deliveries a tick).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import signal
import threading
from datetime import UTC, datetime, timedelta

from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_EXECUTED,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    JobEvent,
)
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from psycopg import sql

from engine.db import NOTIFY_CHANNEL, Database, connection, database_url
from engine.evaluation import Evaluator
from engine.exceptions import DatabaseError
from engine.prometheus import for_service as metrics_for_service
from engine.service_loop import EvaluationLoop
from engine.settings import Settings, get_settings

log = logging.getLogger(__name__)

EVALUATE_JOB = "evaluate"


def pool_shares(settings: Settings) -> dict[str, int]:
    """The shares of the service's one pool: the most connections each part holds at once."""
    shares = {"evaluation": settings.evaluation_connections, "deliveries": settings.delivery_connections}
    return shares | ({} if settings.metrics_port is None else {"metrics": 1})


def connection_budget(settings: Settings) -> dict[str, int]:
    """The most database connections one `engine serve` opens, by part (docs/production.md):
    the pool's shares and the LISTEN connection."""
    shares = pool_shares(settings)
    return {
        "evaluation": shares["evaluation"],
        "deliveries": shares["deliveries"],
        "listen": 1,
        "metrics": shares.get("metrics", 0),
    }


class Service:
    """One evaluation service: `start()`, then `stop()` (or `run_forever()` for the CLI)."""

    def __init__(
        self, settings: Settings | None = None, *, interval: float | None = None, url: str | None = None
    ):
        from engine.actions.dispatcher import Dispatcher

        self.settings = settings or get_settings()
        self.interval = interval or self.settings.interval
        self.url = url or database_url(self.settings)
        self.database = Database(self.url, settings=self.settings, shares=pool_shares(self.settings))
        self.dispatcher = Dispatcher(self.url, self.settings, database=self.database)
        self.evaluator = Evaluator(
            self.url, self.settings, on_fired=lambda _n: self.dispatcher.wake(), database=self.database
        )
        self.metrics = metrics_for_service(self.database, self.settings.metrics_port)  # nothing when off
        self.scheduler = BackgroundScheduler(
            timezone=UTC, executors={"default": ThreadPoolExecutor(max_workers=1)}
        )
        self.loop = EvaluationLoop(
            self.evaluator.tick,
            interval=self.interval,
            metrics=self.metrics,
            reschedule=self._schedule_evaluation,
            hurry=self._hurry_evaluation,
        )
        self._stopping = threading.Event()
        self._listener: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        # What exists now (modules, models, the pool) lives as long as the service: kept out
        # of the cyclic collector's sight, it is no longer walked by every full collection,
        # which holds every thread (deliveries in flight included) while it runs.
        gc.collect()
        gc.freeze()
        self.scheduler.add_listener(
            self._on_job_event,
            EVENT_JOB_EXECUTED | EVENT_JOB_ERROR | EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES,
        )
        self.metrics.serve(self.settings.metrics_port or 0, self.settings.metrics_address)
        self.dispatcher.start()
        self.scheduler.start()
        self.loop.start()
        self._listener = threading.Thread(target=self._listen, name="engine-listen", daemon=True)
        self._listener.start()
        budget = connection_budget(self.settings)
        log.info(
            "engine serve: evaluating every %.1fs, woken by NOTIFY %s; at most %d database connections (%s)",
            self.interval,
            NOTIFY_CHANNEL,
            sum(budget.values()),
            ", ".join(f"{n} {part}" for part, n in budget.items() if n),
        )

    def stop(self) -> None:
        """Finish the current tick (its transaction either commits or rolls back), then stop."""
        self._stopping.set()
        self.loop.stop()
        # Taken under the scheduler's job-store lock, so a job being handed to the executor
        # right now is through before the scheduler is marked stopped: APScheduler removes a
        # spent date job after submitting it, and raises in its own thread if it finds the
        # scheduler already stopped by then. Nothing schedules a run after `loop.stop()`.
        self.scheduler.remove_all_jobs()
        self.scheduler.shutdown(wait=True)
        self.dispatcher.stop()
        self.evaluator.close()
        if self._listener is not None:
            self._listener.join(timeout=5)
        self.metrics.close()
        self.database.close()
        gc.unfreeze()  # a process that goes on (tests, an embedding program) collects it again
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

    # -- the evaluation job -----------------------------------------------------------
    def wake(self) -> None:
        """Evaluate now instead of at the next interval (new data arrived)."""
        self.loop.wake()

    def _schedule_evaluation(self, delay: float) -> None:
        # One run at a time, each added when the previous one has ended (its job is gone from
        # the store once taken): never due while running, so never skipped nor late.
        self.scheduler.add_job(
            self.loop.run,
            "date",
            run_date=datetime.now(UTC) + timedelta(seconds=delay),
            id=EVALUATE_JOB,
            name="evaluate automations",
            replace_existing=True,
            coalesce=True,
            max_instances=1,  # never two ticks of one service at once
            misfire_grace_time=None,  # a late tick still runs: evaluating late beats not evaluating
        )

    def _hurry_evaluation(self) -> None:
        # JobLookupError: already taken by the executor, and that run reads the new data.
        with contextlib.suppress(JobLookupError):
            self.scheduler.modify_job(EVALUATE_JOB, next_run_time=datetime.now(UTC))

    def _on_job_event(self, event: JobEvent) -> None:
        if event.job_id != EVALUATE_JOB:
            return
        if event.code == EVENT_JOB_ERROR:
            log.error("job %s raised: %r", event.job_id, getattr(event, "exception", None))
        elif event.code == EVENT_JOB_MISSED:
            log.warning("job %s missed its run time", event.job_id)
        elif event.code == EVENT_JOB_MAX_INSTANCES:
            log.warning("job %s skipped: the previous run was still going", event.job_id)
        if event.code != EVENT_JOB_MAX_INSTANCES:
            # The run is over (or was dropped), and these events are dispatched after the
            # executor has let go of it: the next run may be due at once without a clash.
            self.loop.finished()

    # -- LISTEN ------------------------------------------------------------------------
    def _listen(self) -> None:
        backoff = 0.5
        while not self._stopping.is_set():
            try:
                # its own connection, outside the pool: LISTEN is session state
                with connection(self.url, settings=self.settings) as conn:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(NOTIFY_CHANNEL)))
                    backoff = 0.5
                    while not self._stopping.is_set():
                        for _notify in conn.notifies(timeout=1.0, stop_after=1):
                            self.wake()
            except DatabaseError as exc:
                if self._stopping.is_set():
                    return
                log.warning("LISTEN connection lost (%s); reconnecting in %.1fs", exc, backoff)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 30.0)
