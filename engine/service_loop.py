"""When `engine serve` evaluates, and what happens around one tick: the loop without a scheduler.

`EvaluationLoop.run()` is the whole body of the service's APScheduler job: one
`Evaluator.tick()` with its outcome logged and recorded in the metrics. Around it the loop
decides when the next run is due:

* the interval after the previous run started (ticks keep their pace, a slow one is not
  followed by a burst);
* at once when `wake()` was called (new data arrived): while a tick is running, the wake is
  remembered and the tick runs again as soon as it ends, since it may have read before the
  new rows were committed;
* after a growing pause (0.5 s doubling to 30 s) while the database is unreachable; a wake
  does not cut the pause short, the retry sees the new data anyway.

The loop never asks for a second run while one is queued or running: `reschedule` is called
only by `finished()` (after the job has ended) and `hurry` only while the next run is still
waiting for its time. So the scheduler never has to skip or drop a run, and has nothing to
warn about.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from engine.evaluation import TickResult
from engine.exceptions import DatabaseUnavailable, EngineError

log = logging.getLogger("engine.scheduler")  # what an operator filters on for `engine serve`

FIRST_RETRY_SECONDS = 0.5
MAX_RETRY_SECONDS = 30.0


class TickRecorder(Protocol):
    def record_tick(
        self, result: TickResult | None, seconds: float, *, outcome: str | None = None
    ) -> None: ...


class EvaluationLoop:
    """One service's evaluation cadence around `tick` (thread-safe; see the module docstring).

    `reschedule(delay)` must (re)create the one pending run `delay` seconds from now;
    `hurry()` must move the pending run to now, and do nothing when there is none (the run
    was already taken). Both are called with the loop's lock held, so a wake and the end of a
    tick cannot interleave.
    """

    def __init__(
        self,
        tick: Callable[[], TickResult],
        *,
        interval: float,
        metrics: TickRecorder,
        reschedule: Callable[[float], None],
        hurry: Callable[[], None],
        monotonic: Callable[[], float] = time.monotonic,
    ):
        self._tick = tick
        self.interval = interval
        self._metrics = metrics
        self._reschedule = reschedule
        self._hurry = hurry
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._running = False
        self._dirty = False  # woken since the last tick began
        self._stopping = False
        self._started_at = 0.0
        self._retry_at: float | None = None  # set while the database is unreachable
        self._outage_backoff = FIRST_RETRY_SECONDS

    def run(self) -> None:
        """One tick, its outcome logged and recorded (the scheduler's job body)."""
        with self._lock:
            if self._stopping:
                return
            self._running, self._dirty = True, False
            self._started_at = self._monotonic()
        started, result, outcome = time.perf_counter(), None, "error"
        try:
            result = self._tick()
            outcome = "ok"
            if self._retry_at is not None:
                log.warning("database reachable again: catching up")
            self._retry_at, self._outage_backoff = None, FIRST_RETRY_SECONDS
            if result.fired or result.failed:
                log.info(
                    "tick: %d evaluated, %d fired, %d failed (%s) in %.1f ms",
                    result.evaluated,
                    result.fired,
                    len(result.failed),
                    ", ".join(result.failed),
                    result.duration_ms,
                )
        except DatabaseUnavailable as exc:
            outcome = "database_unavailable"
            log.warning("database unavailable, retrying in %.1fs: %s", self._outage_backoff, exc)
            self._retry_at = self._monotonic() + self._outage_backoff
            self._outage_backoff = min(self._outage_backoff * 2, MAX_RETRY_SECONDS)
        except EngineError as exc:
            log.error("tick failed: %s", exc)
        except Exception:  # a bug must not stop the service's evaluation for good
            log.exception("tick failed")
        finally:
            self._metrics.record_tick(result, time.perf_counter() - started, outcome=outcome)

    def finished(self) -> None:
        """The job has ended (whatever its outcome): schedule the next run."""
        with self._lock:
            self._running = False
            if not self._stopping:
                self._reschedule(self._next_delay())

    def start(self) -> None:
        """Schedule the first run, now."""
        with self._lock:
            self._reschedule(0.0)

    def wake(self) -> None:
        """Evaluate now instead of at the next interval (new data arrived)."""
        with self._lock:
            self._dirty = True
            if self._running or self._stopping or self._retry_at is not None:
                return  # the tick re-runs when it ends; a retry after an outage keeps its pause
            self._hurry()

    def stop(self) -> None:
        """No run is scheduled any more (the one running finishes)."""
        with self._lock:
            self._stopping = True

    def _next_delay(self) -> float:
        now = self._monotonic()
        if self._retry_at is not None:
            return max(0.0, self._retry_at - now)
        if self._dirty:
            return 0.0
        return max(0.0, self._started_at + self.interval - now)
