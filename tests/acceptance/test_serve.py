"""`engine serve` as a user runs it: clean stop, SIGKILL in a busy period, two services at once.
After every fault the triggers equal the reference set (the backtest over the same history),
with no duplicate, and every delivery ends succeeded."""

from __future__ import annotations

import random
import threading
from datetime import UTC, datetime, timedelta

import pytest

import engine
from engine.automations import apply_rules
from engine.evaluation import backtest
from engine.rules import parse_rules_text
from tests.acceptance.service_helpers import ServeProcess, wait_until

RULES = """
name: acc-high
scope: {project: acme/serve}
event: {type: run_metric_threshold, metric: acc, window: 3, operator: ">", threshold: 0.7}
cooldown: 1m
action: {type: no_op}
---
name: loss-drop
scope: {project: acme/serve}
event: {type: run_metric_change, metric: loss, current_window: 3, prior_window: 5, direction: decrease, amount: 0.2}
cooldown: 1m
action: {type: no_op}
---
name: finished
scope: {project: acme/serve}
event: {type: run_state, states: [finished]}
action: {type: no_op}
"""
T0 = datetime(2026, 5, 1, tzinfo=UTC)


def _apply(conn, text: str) -> list:
    rules = [r.automation for r in parse_rules_text(text)]
    apply_rules(conn, rules)
    return rules


def _workload(runs: int, seed: int) -> None:
    rng = random.Random(seed)
    for r in range(runs):
        with engine.init(project="acme/serve", name=f"w{seed}-{r}", system_metrics_interval=0) as run:
            for step in range(30):
                run.log(
                    {"acc": rng.random(), "loss": rng.random() * 2},
                    step=step,
                    time=T0 + timedelta(minutes=3 * step),
                )
                if step % 7 == 0:
                    run.flush()


def _expected(conn, rules) -> set[tuple[str, str]]:
    return {(a.name, f.cause) for a in rules for f in backtest(conn, a, T0 - timedelta(days=3650))}


def _actual(conn) -> list[tuple[str, str]]:
    return list(
        conn.execute("SELECT a.name, t.cause FROM triggers t JOIN automations a ON a.id = t.automation_id")
    )


def _settled(conn, expected: set) -> bool:
    return (
        set(_actual(conn)) == expected
        and conn.execute(
            "SELECT count(*) FROM deliveries WHERE status NOT IN ('succeeded', 'skipped')"
        ).fetchone()[0]
        == 0
    )


def test_serve_fires_and_stops_cleanly_on_sigterm(conn, database_url, tmp_path):
    rules = _apply(conn, RULES)
    service = ServeProcess(database_url, tmp_path / "serve.log").start()
    try:
        _workload(3, seed=1)
        expected = _expected(conn, rules)
        assert expected, "the workload should fire something"
        assert wait_until(lambda: _settled(conn, expected), timeout=30), (tmp_path / "serve.log").read_text()[
            -3000:
        ]
        assert service.terminate() == 0
    finally:
        service.stop_quietly()
    assert "stopped" in (tmp_path / "serve.log").read_text()


@pytest.mark.slow
def test_sigkill_during_a_busy_period_loses_nothing_and_duplicates_nothing(conn, database_url, tmp_path):
    rules = _apply(conn, RULES)
    log = tmp_path / "serve.log"
    service = ServeProcess(database_url, log, interval=0.3).start()
    writer = threading.Thread(target=_workload, args=(12, 2))
    writer.start()
    rng = random.Random(7)
    try:
        for _ in range(4):  # kill at random moments while the runs log, then restart
            threading.Event().wait(rng.uniform(0.3, 1.5))
            service.kill()
            service = ServeProcess(database_url, log, interval=0.3).start()
        writer.join()
        expected = _expected(conn, rules)
        assert wait_until(lambda: _settled(conn, expected), timeout=60), log.read_text()[-3000:]
    finally:
        writer.join()
        service.stop_quietly()
    actual = _actual(conn)
    assert len(actual) == len(set(actual)) == len(expected)


@pytest.mark.slow
def test_two_services_share_the_work_without_duplicates(conn, database_url, tmp_path):
    rules = _apply(conn, RULES)
    services = [
        ServeProcess(database_url, tmp_path / f"serve{i}.log", interval=0.3).start() for i in range(2)
    ]
    try:
        _workload(10, seed=3)
        expected = _expected(conn, rules)
        assert wait_until(lambda: _settled(conn, expected), timeout=60)
    finally:
        for s in services:
            s.stop_quietly()
    actual = _actual(conn)
    assert len(actual) == len(set(actual)) == len(expected)
