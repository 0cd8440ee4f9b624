"""The evaluation loop of `engine serve` without a scheduler: when the next tick is due after
a tick, a wake, an outage; what is logged and recorded around a tick."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from engine.evaluation import TickResult
from engine.exceptions import DatabaseUnavailable, EngineError
from engine.service_loop import EvaluationLoop

INTERVAL = 5.0


class Harness:
    """A loop over a tick the test scripts, a clock it moves, and the scheduler's side recorded."""

    def __init__(self) -> None:
        self.now = 100.0
        self.ticks: list[Callable[[], TickResult]] = []
        self.scheduled: list[float] = []  # reschedule(delay) calls
        self.hurried = 0
        self.recorded: list[tuple[TickResult | None, str | None]] = []
        self.loop = EvaluationLoop(
            self._tick,
            interval=INTERVAL,
            metrics=self,
            reschedule=self.scheduled.append,
            hurry=self._hurry,
            monotonic=lambda: self.now,
        )

    def _tick(self) -> TickResult:
        return self.ticks.pop(0)()

    def _hurry(self) -> None:
        self.hurried += 1

    def record_tick(self, result: TickResult | None, seconds: float, *, outcome: str | None = None) -> None:
        self.recorded.append((result, outcome))

    def job(self, tick: Callable[[], TickResult]) -> None:
        """What the scheduler does with one run: the job body, then the end-of-job event."""
        self.ticks.append(tick)
        self.loop.run()
        self.loop.finished()


def ok(seconds: float = 0.0, harness: Harness | None = None, **fields) -> Callable[[], TickResult]:
    def tick() -> TickResult:
        if harness is not None:
            harness.now += seconds
        return TickResult(**fields)

    return tick


def down() -> TickResult:
    raise DatabaseUnavailable("connection refused")


def test_the_first_run_is_now_and_the_next_keeps_the_interval_from_its_start():
    h = Harness()
    h.loop.start()
    h.job(ok(1.5, h))  # a tick of 1.5 s: the next starts 5 s after this one started
    h.job(ok(7.0, h))  # longer than the interval: the next starts at once, not twice
    assert h.scheduled == [0.0, 3.5, 0.0]
    assert [outcome for _, outcome in h.recorded] == ["ok", "ok"]


def test_a_wake_between_ticks_hurries_the_pending_run():
    h = Harness()
    h.loop.start()
    h.job(ok())
    h.loop.wake()
    h.loop.wake()
    assert h.hurried == 2  # moving the pending run to now twice is still one run
    h.job(ok())
    assert h.scheduled == [0.0, INTERVAL, INTERVAL]  # that run consumed the wake


def test_data_arriving_during_a_tick_runs_it_again_as_soon_as_it_ends():
    h = Harness()

    def tick_during_which_data_arrives() -> TickResult:
        h.loop.wake()  # the LISTEN thread, while this tick may already have read
        return TickResult()

    h.job(tick_during_which_data_arrives)
    assert h.hurried == 0  # never a second run while one is running
    assert h.scheduled == [0.0]  # ...but the next one is due at once
    h.job(ok())
    assert h.scheduled == [0.0, INTERVAL]


def test_an_outage_backs_off_doubling_then_catches_up(caplog):
    caplog.set_level(logging.INFO, logger="engine.scheduler")
    h = Harness()
    for _ in range(8):
        h.job(down)
        h.now += h.scheduled[-1]  # the retry runs when it was asked for
    assert h.scheduled == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert [outcome for _, outcome in h.recorded] == ["database_unavailable"] * 8
    h.loop.wake()  # data arrives during the pause: the retry keeps its time
    assert h.hurried == 0
    h.job(ok(fired=1))
    assert h.scheduled[-1] == INTERVAL
    messages = [r.getMessage() for r in caplog.records]
    assert messages[:3] == [
        "database unavailable, retrying in 0.5s: connection refused",
        "database unavailable, retrying in 1.0s: connection refused",
        "database unavailable, retrying in 2.0s: connection refused",
    ]
    assert "database reachable again: catching up" in messages
    assert any(m.startswith("tick: 0 evaluated, 1 fired, 0 failed") for m in messages)
    h.job(down)  # a new outage starts over at the shortest pause
    assert h.scheduled[-1] == 0.5


def test_a_failed_tick_is_logged_and_recorded_and_the_loop_goes_on(caplog):
    h = Harness()

    def engine_error() -> TickResult:
        raise EngineError("the evaluator's connection broke")

    def bug() -> TickResult:
        raise ZeroDivisionError("division by zero")

    h.job(engine_error)
    h.job(bug)
    h.job(ok(failed=["broken"]))
    assert h.scheduled == [INTERVAL, INTERVAL, INTERVAL]
    assert [outcome for _, outcome in h.recorded] == ["error", "error", "ok"]
    assert h.recorded[-1][0] == TickResult(failed=["broken"])
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        "tick failed: the evaluator's connection broke",
        "tick failed",
    ]
    assert errors[1].exc_info is not None and errors[1].exc_info[0] is ZeroDivisionError


def test_after_stop_nothing_runs_and_nothing_is_scheduled():
    h = Harness()
    h.loop.start()
    h.loop.stop()
    h.loop.wake()
    h.loop.run()  # a run already queued when the service stopped
    h.loop.finished()
    assert (h.scheduled, h.hurried, h.recorded) == ([0.0], 0, [])


@pytest.mark.parametrize("outage", [False, True])
def test_a_wake_while_the_run_is_queued_is_not_lost(outage):
    # The scheduler took the run (hurry finds nothing to move) but the body has not begun:
    # the wake is remembered and that run, which starts after it, clears it by reading.
    h = Harness()
    if outage:
        h.job(down)
        h.now += 0.5
    h.loop.wake()
    h.job(ok())
    assert h.scheduled[-1] == INTERVAL
