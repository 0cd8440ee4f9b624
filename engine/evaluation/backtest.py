"""The backtest: what an automation would have fired over stored history. It runs the same
compiled query as live evaluation (in history mode) and the same cooldown code, and writes
nothing."""

from __future__ import annotations

from datetime import datetime

import psycopg
from psycopg.rows import dict_row

from engine.compiler import compile_rule
from engine.db import boundary
from engine.evaluation.firing import Firing, apply_cooldown, cooldown_of, firings_from_rows
from engine.rules import Automation


def backtest(conn: psycopg.Connection, automation: Automation, since: datetime) -> list[Firing]:
    """What `automation` would have fired over stored history since `since` (nothing is written)."""
    compiled = compile_rule(automation, "history")
    with boundary():
        cur = conn.cursor(row_factory=dict_row)
        rows = cur.execute(compiled.sql, compiled.bind(since=since)).fetchall()
    return list(apply_cooldown(firings_from_rows(automation, rows), {}, cooldown_of(automation)))
