"""The trigger history: rows of the automation_history view, newest first, through the one
`history` query. Every filter is optional; the keyset `before` (fired_at, trigger_id) pages
it, and `scopes` (an API key's patterns) keeps only the rows of automations they cover.
`after` reads the page just newer than a row instead (`history_newer`, the same filters)."""

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
    after: tuple[datetime, int] | None = None,
) -> list[dict[str, Any]]:
    """Up to `limit` rows, newest first: the newest ones (older than `before` when given), or
    with `after` the `limit` rows just newer than that row."""
    before_at, before_id = before if before is not None else (None, None)
    after_at, after_id = after if after is not None else (None, None)
    automation_ids = run_pks = None
    if automation is not None:
        automation_ids = db.value(conn, "history_automation_ids", {"automation": automation})
    if run_id is not None:
        run_pks = db.value(conn, "history_run_pks", {"run_id": run_id, "project": project})
    if automation_ids == [] or run_pks == []:
        return []  # no such automation or run: nothing to read
    params = {
        "automation_ids": automation_ids,
        "since": since,
        "limit": limit,
        "project": project,
        "run_pks": run_pks,
        "status": status,
        "scopes": None if scopes is None else list(scopes),
        "before_at": before_at,
        "before_id": before_id,
        "after_at": after_at,
        "after_id": after_id,
    }
    return db.rows(conn, "history_newer" if after is not None else "history", params)
