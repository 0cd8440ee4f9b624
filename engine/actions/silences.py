"""Silences: for a while, the triggers of one automation, or of every automation of a project,
are recorded with their deliveries `silenced` and never sent (not even once it has ended).

The one place that adds, lists and ends them (`engine silence`, the API and the console).
The evaluator applies them in `insert_triggers`: a trigger is silenced when a silence is
active at the moment it is recorded (starts_at <= now < ends_at).

    add(conn, automation="loss-nan", duration=timedelta(hours=2), reason="cluster maintenance")
    add(conn, project="acme/vision", until=datetime(2026, 12, 4, 8, tzinfo=UTC), reason="sweep")
    end(conn, 3)

A silence names an automation by its name when it is added (it silences that automation, also
across later edits of its rule, not one created later under the same name), and a project by
its `entity/project` names (it may not exist yet: a sweep can be silenced before it starts).
"""

from __future__ import annotations

import getpass
import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row

from engine import clock, db
from engine.exceptions import EngineError, NotFound

MAX_REASON = 1000
_PART = "^[A-Za-z0-9._-]{1,128}$"


def author() -> str | None:
    """Who is adding or ending a silence: the user of this shell."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        return None


def add(
    conn: psycopg.Connection,
    *,
    automation: str | None = None,
    project: str | None = None,
    duration: timedelta | None = None,
    until: datetime | None = None,
    reason: str,
    created_by: str | None = None,
) -> int:
    """Add a silence, active from now; returns its id. Exactly one of `automation` (a name)
    and `project` (`entity/project`), and one of `duration` and `until`."""
    if (automation is None) == (project is None):
        raise EngineError("give exactly one of an automation (by name) or a project (entity/project)")
    if (duration is None) == (until is None):
        raise EngineError("give exactly one of a duration (--for 2h) or an end time (--until TIME)")
    reason = (reason or "").strip()
    if not reason:
        raise EngineError("give a reason (--reason TEXT): it is shown with every trigger it silences")
    if len(reason) > MAX_REASON or "\x00" in reason:
        raise EngineError(f"the reason must be at most {MAX_REASON} characters, without NUL")
    now = clock.now()
    if duration is not None:
        if duration <= timedelta(0):
            raise EngineError("the duration must be positive")
        ends_at = now + duration
    else:
        assert until is not None
        if until.tzinfo is None:
            raise EngineError("the end time needs a timezone")
        if until <= now:
            raise EngineError(f"the end time {until.isoformat()} is not in the future")
        ends_at = until
    automation_id = entity = project_name = None
    with db.boundary(), conn.cursor(row_factory=dict_row) as cur:
        if automation is not None:
            found = cur.execute(db.query("silence_automation"), {"name": automation}).fetchone()
            if found is None:
                raise NotFound(f"no automation named {automation!r} (see `engine rules list`)")
            automation_id = found["id"]
        else:
            assert project is not None
            entity, _, project_name = project.partition("/")
            if not (re.match(_PART, entity) and re.match(_PART, project_name)):
                raise EngineError(f"{project!r} is not a project: write entity/project (e.g. acme/vision)")
        row = cur.execute(
            db.query("silence_add"),
            {
                "automation_id": automation_id,
                "entity": entity,
                "project": project_name,
                "starts_at": now,
                "ends_at": ends_at,
                "reason": reason,
                "created_by": created_by if created_by is not None else author(),
            },
        ).fetchone()
    assert row is not None
    return int(row["id"])


def list_silences(
    conn: psycopg.Connection,
    *,
    include_ended: bool = False,
    limit: int = 100,
    scopes: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """The active and future silences (with `include_ended`, every one), active first; with
    `scopes` (an API key's patterns) only those of the automations and projects they cover.
    Each row: id, automation or project, starts_at, ends_at, reason, created_by, created_at,
    ended_at, ended_by, active, silenced (how many deliveries it has silenced)."""
    params = {"now": clock.now(), "all": include_ended, "limit": limit}
    return db.rows(conn, "silence_list", params | {"scopes": None if scopes is None else list(scopes)})


def end(conn: psycopg.Connection, silence_id: int, *, ended_by: str | None = None) -> datetime:
    """End a silence now; returns when it ended. What it silenced stays silenced."""
    now = clock.now()
    with db.boundary(), conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            db.query("silence_end"),
            {"id": silence_id, "now": now, "ended_by": ended_by if ended_by is not None else author()},
        ).fetchone()
        if row is not None:
            return row["ends_at"]
        found = cur.execute(db.query("silence_get"), {"id": silence_id}).fetchone()
    if found is None:
        raise NotFound(f"no silence {silence_id} (see `engine silence list --all`)")
    raise EngineError(f"silence {silence_id} already ended at {found['ends_at']:%Y-%m-%d %H:%M:%S %Z}")
