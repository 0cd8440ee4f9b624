"""Helpers for evaluator tests: apply rules from YAML text, tick, read triggers."""

from __future__ import annotations

import dataclasses
from typing import Any

import psycopg

from engine.automations import apply_rules
from engine.evaluation import Evaluator
from engine.rules import parse_rules_text


def break_automation(evaluator: Evaluator, name: str, sql: str) -> None:
    """Make every query that evaluates automation `name` (its metric group's, or its own, or
    the statement that fires a group's triggers) run `sql` instead: a test seam standing in
    for a query that fails."""
    original, original_firing = evaluator.compiled, evaluator.firing

    def compiled(members, tails_only=False):
        compiled_query = original(members, tails_only)
        if any(s.name == name for s in members):
            return dataclasses.replace(compiled_query, sql=sql)
        return compiled_query

    def firing(members):
        compiled_query = original_firing(members)
        if any(s.name == name for s in members):
            return dataclasses.replace(compiled_query, sql=sql)
        return compiled_query

    evaluator.compiled = compiled  # type: ignore[method-assign]
    evaluator.firing = firing  # type: ignore[method-assign]


def apply_yaml(conn: psycopg.Connection, text: str) -> None:
    apply_rules(conn, [r.automation for r in parse_rules_text(text)])


def triggers(conn: psycopg.Connection, automation: str | None = None) -> list[dict[str, Any]]:
    cur = conn.cursor(row_factory=psycopg.rows.dict_row)
    return cur.execute(
        "SELECT t.*, a.name AS automation, r.run_id FROM triggers t JOIN automations a ON a.id = t.automation_id "
        "LEFT JOIN runs r ON r.id = t.run_pk WHERE %(name)s::text IS NULL OR a.name = %(name)s ORDER BY t.id",
        {"name": automation},
    ).fetchall()


def tick(url: str) -> None:
    evaluator = Evaluator(url)
    try:
        result = evaluator.tick()
        assert not result.failed, result.failed
    finally:
        evaluator.close()


def rule(name: str, event: str, *, scope: str = "{project: acme/vision}", extra: str = "") -> str:
    return f"name: {name}\nscope: {scope}\nevent: {event}\n{extra}action: {{type: no_op}}\n"
