"""A failing automation is logged with its name, marked failing, and skipped for that tick;
the others keep running. A query that runs too long is cut by the statement timeout."""

from __future__ import annotations

import logging
import time

import engine
from engine.automations import list_automations
from engine.evaluation import Evaluator
from engine.settings import get_settings
from tests.integration.evaluation_helpers import apply_yaml, break_automation, rule, triggers

GOOD = rule("good", '{type: run_metric_threshold, metric: m, window: 1, operator: ">", threshold: 0}')
BAD = rule("bad", '{type: run_metric_threshold, metric: m, window: 1, operator: "<", threshold: 0}')


def _log_one(value: float) -> None:
    with engine.init(project="acme/vision", name="r", system_metrics_interval=0) as run:
        run.log({"m": value})


def test_a_failing_automation_is_isolated_and_visible(conn, database_url, caplog):
    apply_yaml(conn, GOOD)
    apply_yaml(conn, BAD)
    _log_one(1.0)
    evaluator = Evaluator(database_url)
    try:
        break_automation(evaluator, "bad", "SELECT 1 / 0")
        with caplog.at_level(logging.ERROR, logger="engine.evaluation"):
            result = evaluator.tick()
    finally:
        evaluator.close()
    assert result.failed == ["bad"]
    assert len(triggers(conn, "good")) == 1
    assert any("'bad'" in r.getMessage() and "division by zero" in r.getMessage() for r in caplog.records)
    rows = {r.name: r for r in list_automations(conn)}
    assert "division by zero" in rows["bad"].last_error and rows["good"].last_error is None
    # the failed automation's frontier did not move: fixed, it catches up on the same values
    fixed = Evaluator(database_url)
    try:
        assert fixed.tick().failed == []
    finally:
        fixed.close()
    assert {r.name: r for r in list_automations(conn)}["bad"].last_error is None


def test_a_slow_query_is_cut_by_the_statement_timeout(conn, database_url, monkeypatch):
    monkeypatch.setenv("ENGINE_STATEMENT_TIMEOUT_MS", "200")
    get_settings.cache_clear()
    apply_yaml(conn, GOOD)
    apply_yaml(conn, BAD)
    _log_one(1.0)
    evaluator = Evaluator(database_url)
    try:
        break_automation(evaluator, "bad", "SELECT pg_sleep(30)")
        started = time.monotonic()
        result = evaluator.tick()
        assert time.monotonic() - started < 10
    finally:
        evaluator.close()
    assert result.failed == ["bad"] and len(triggers(conn, "good")) == 1
    assert "statement_timeout" in {r.name: r for r in list_automations(conn)}["bad"].last_error


def test_a_failing_metric_group_does_not_hold_back_the_other_metrics(conn, database_url, caplog):
    """On one connection a tick evaluates every metric in one transaction; when one metric's
    query fails, the others are evaluated again without it and commit."""
    apply_yaml(conn, GOOD)
    apply_yaml(
        conn, rule("other", '{type: run_metric_threshold, metric: n, window: 1, operator: ">", threshold: 0}')
    )
    with engine.init(project="acme/vision", name="r", system_metrics_interval=0) as run:
        run.log({"m": 1.0, "n": 1.0})
    evaluator = Evaluator(database_url, get_settings().model_copy(update={"evaluation_connections": 1}))
    try:
        break_automation(evaluator, "other", "SELECT 1 / 0")
        with caplog.at_level(logging.ERROR, logger="engine.evaluation"):
            result = evaluator.tick()
    finally:
        evaluator.close()
    assert result.failed == ["other"] and result.evaluated == 1
    assert len(triggers(conn, "good")) == 1 and triggers(conn, "other") == []
    assert "division by zero" in {r.name: r for r in list_automations(conn)}["other"].last_error
