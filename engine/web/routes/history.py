"""The trigger history (the automation_history view, its column names), deliveries,
redelivery and explanations."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Annotated, Any, Literal

import psycopg
from fastapi import APIRouter, Query

from engine.actions import outbox
from engine.explain import explain_data
from engine.history import history_rows
from engine.since import parse_since
from engine.web.auth import Invalid, Principal, access, delivery_in_path, trigger_in_path
from engine.web.deps import Conn
from engine.web.models import Page

router = APIRouter(tags=["history"])


def _cursor(row: dict[str, Any]) -> str:
    text = f"{row['fired_at'].isoformat()}|{row['trigger_id']}"
    return base64.urlsafe_b64encode(text.encode()).decode()


def _after(cursor: str) -> tuple[datetime, int]:
    try:
        at, _, trigger_id = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        found = datetime.fromisoformat(at), int(trigger_id)
    except (ValueError, binascii.Error, UnicodeError):
        raise Invalid(
            ("query", "cursor"), "not a cursor this API returned (pass next_cursor as it is)"
        ) from None
    if found[0].tzinfo is None:
        raise Invalid(("query", "cursor"), "not a cursor this API returned (pass next_cursor as it is)")
    return found


@router.get("/history")
def history(
    principal: Annotated[Principal, access("read")],
    conn: Conn,
    automation: Annotated[
        str | None, Query(max_length=128, description="Only this automation (deleted ones too).")
    ] = None,
    project: Annotated[
        str | None, Query(max_length=257, description="Only this project (`entity/project`).")
    ] = None,
    since: Annotated[
        str | None, Query(max_length=64, description="Only triggers fired since: 7d, 24h, ISO 8601.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Rows per page.")] = 50,
    cursor: Annotated[
        str | None, Query(max_length=200, description="next_cursor of the previous page.")
    ] = None,
) -> Page:
    """Rows of automation_history (same column names), newest first, of the automations your key covers."""
    start = None
    if since is not None:
        try:
            start = parse_since(since)
        except ValueError as exc:
            raise Invalid(("query", "since"), str(exc)) from None
    rows = history_rows(
        conn,
        automation=automation,
        since=start,
        limit=limit + 1,  # one more: is there a next page?
        project=project,
        scopes=principal.scopes,
        before=_after(cursor) if cursor else None,
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(rows=rows, next_cursor=_cursor(rows[-1]) if more else None)


@router.get("/deliveries")
def deliveries(
    principal: Annotated[Principal, access("read")],
    conn: Conn,
    status: Annotated[
        Literal["pending", "sending", "succeeded", "failed", "skipped", "suppressed", "silenced"] | None,
        Query(description="Only this state (pending includes sending)."),
    ] = None,
    automation: Annotated[str | None, Query(max_length=128, description="Only this automation's.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="At most this many, newest first.")] = 50,
) -> list[dict[str, Any]]:
    """Deliveries (one per action of each trigger) of the automations your key covers."""
    rows = outbox.list_deliveries(
        conn, status=status, automation=automation, limit=limit, scopes=principal.scopes
    )
    return [{k: v for k, v in row.items()} for row in rows]


@router.post("/deliveries/{delivery_id}/redeliver", dependencies=[access("admin", delivery_in_path)])
def redeliver(delivery_id: str, conn: Conn) -> dict[str, Any]:
    """Send a delivery again (same id, fresh attempt budget): a running `engine serve` sends it."""
    return outbox.redeliver(conn, delivery_id)


@router.get("/triggers/{trigger_id}/explain", dependencies=[access("read", trigger_in_path)])
def explain(trigger_id: int, conn: Conn) -> dict[str, Any]:
    """Why a rule fired: the series, the window(s), the aggregate(s), the threshold, as data."""
    return explanation(conn, trigger_id)


def explanation(conn: psycopg.Connection, trigger_id: int) -> dict[str, Any]:
    """`engine explain`'s data as JSON (the one call the route makes)."""
    return explain_data(conn, trigger_id).model_dump(mode="python")
