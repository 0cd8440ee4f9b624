"""The trigger history: rows of the automation_history view, newest first, through the one
`history` query. Every filter is optional; the keyset `before` (fired_at, trigger_id) pages
it, and `scopes` (an API key's patterns) keeps only the rows of automations they cover."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg

from engine import db


def history_rows(
    conn: psycopg.Connection,
    *,
    limit: int,
    automation: str | None = None,
    since: datetime | None = None,
    project: str | None = None,
    run_id: str | None = None,
    status: str | None = None,
    scopes: Sequence[str] | None = None,
    before: tuple[datetime, int] | None = None,
) -> list[dict[str, Any]]:
    before_at, before_id = before if before is not None else (None, None)
    params = {
        "automation": automation,
        "since": since,
        "limit": limit,
        "project": project,
        "run_id": run_id,
        "status": status,
        "scopes": None if scopes is None else list(scopes),
        "before_at": before_at,
        "before_id": before_id,
    }
    return db.rows(conn, "history", params)
