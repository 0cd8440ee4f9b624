"""Silences over HTTP: list, add, end (engine/actions/silences.py, as `engine silence`).

A key sees the silences of the automations and projects its scopes cover; adding or ending
one needs an admin key that covers its automation or project. The key is recorded as the
silence's author (`key:NAME`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from engine import db as enginedb
from engine.actions import silences
from engine.rules.duration import parse_duration
from engine.web.auth import Invalid, Principal, access, silence_in_body, silence_in_path
from engine.web.deps import Conn
from engine.web.models import SilenceCreate, SilenceOut

router = APIRouter(prefix="/silences", tags=["silences"])


@router.get("")
def list_silences(
    principal: Annotated[Principal, access("read")],
    conn: Conn,
    ended: Annotated[bool, Query(alias="all", description="Also the silences that have ended.")] = False,
    limit: Annotated[int, Query(ge=1, le=1000, description="At most this many, active first.")] = 100,
) -> list[dict[str, Any]]:
    """The active silences your key covers (with `all`, those that have ended too), active first."""
    return silences.list_silences(conn, include_ended=ended, limit=limit, scopes=principal.scopes)


@router.post("", status_code=201)
def add(
    body: SilenceCreate,
    principal: Annotated[Principal, access("admin", silence_in_body, body=True)],
    conn: Conn,
) -> SilenceOut:
    """Silence an automation or a project from now on, for a `duration` or `until` a time: its
    triggers are recorded (delivery status `silenced`) but never sent, not even once it ends."""
    try:
        duration = parse_duration(body.duration) if body.duration is not None else None
    except ValueError as exc:
        raise Invalid(("body", "duration"), str(exc)) from None
    silence_id = silences.add(
        conn,
        automation=body.automation,
        project=body.project,
        duration=duration,
        until=body.until,
        reason=body.reason,
        created_by=principal.author,
    )
    stored = enginedb.one(conn, "silence_get", {"id": silence_id})
    assert stored is not None  # added just now, on this connection
    return SilenceOut(id=silence_id, ends_at=stored["ends_at"])


@router.post("/{silence_id}/end")
def end(
    silence_id: int,
    principal: Annotated[Principal, access("admin", silence_in_path)],
    conn: Conn,
) -> SilenceOut:
    """End a silence now. What it silenced stays silenced: it is never sent."""
    return SilenceOut(id=silence_id, ends_at=silences.end(conn, silence_id, ended_by=principal.author))
