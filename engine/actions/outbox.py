"""The outbox: `deliveries` rows, written in the trigger's transaction, read by the dispatcher.

Lifecycle of a delivery (the `status` column):

    pending --claim--> sending --2xx--> succeeded
       ^                  |---retryable, attempts left--> pending (next_attempt_at later)
       |                  |---final error / no attempts left--> failed
       |                  '---lease expired (crash)--> claimed again, same id
       '------ engine redeliver (from succeeded/failed/pending) -------'
    no_op actions are inserted as skipped (nothing to send), stop_run ones as succeeded with
    their stop request (or skipped: the run had ended); a trigger under a silence, or
    beyond its action's rate limit, as silenced or suppressed (final: never sent). A digested
    action's triggers join a window instead (engine/actions/flow.py), whose one delivery is
    inserted pending when the window closes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import psycopg

from engine import clock, db
from engine.actions import flow
from engine.actions.retry import DEFAULT_MAX_ATTEMPTS
from engine.exceptions import EngineError, NotFound

ACTION_TYPES = ("webhook", "slack", "email", "discord", "teams", "pagerduty", "no_op", "stop_run")
# Final when inserted: nothing to send (a stop_run's request is written with its trigger).
FINAL_AT_ONCE = {"no_op": "skipped", "stop_run": "succeeded"}


def action_json(action: Any) -> dict[str, Any]:
    """An action as stored: the rule's JSON (secrets are `{env: NAME}` references only)."""
    if hasattr(action, "model_dump"):
        return action.model_dump(mode="json")
    return dict(action)


def actions_of(rule: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The actions of a rule's JSON, whether it holds one `action` or a list of `actions`."""
    if rule.get("actions"):
        return [action_json(a) for a in rule["actions"]]
    return [action_json(rule["action"])] if rule.get("action") else []


def delivery_rows(automation_id: int, actions: Sequence[Mapping[str, Any] | Any]) -> list[dict[str, Any]]:
    """The delivery of each action of a trigger, as the outbox stores it (action_index =
    position; no_op actions are 'skipped' and stop_run ones 'succeeded' at once: nothing to
    send). The evaluator inserts
    them with the triggers, in one statement (`insert_triggers`)."""
    rows = []
    for index, raw in enumerate(actions):
        action = action_json(raw)
        action_type = action.get("type")
        if action_type not in ACTION_TYPES:
            raise EngineError(
                f"unknown action type {action_type!r} (expected one of {', '.join(ACTION_TYPES)})"
            )
        final = FINAL_AT_ONCE.get(action_type)
        rows.append(
            {
                "automation_id": automation_id,
                "action_index": index,
                "action_type": action_type,
                "action": action,
                "status": final or "pending",
                "max_attempts": 1 if final else int(action.get("max_attempts") or DEFAULT_MAX_ATTEMPTS),
                **flow.controls(action),
            }
        )
    return rows


def find(conn: psycopg.Connection, delivery_id: str) -> dict[str, Any]:
    """A delivery by id or unique id prefix (at least 4 characters)."""
    prefix = delivery_id.strip().lower()
    if len(prefix) < 4:
        raise NotFound(f"delivery id {delivery_id!r} is too short: give at least 4 characters")
    rows = db.rows(conn, "delivery_find", {"prefix": prefix})
    if not rows:
        raise NotFound(f"no delivery {delivery_id} (see `engine deliveries`)")
    if len(rows) > 1:
        raise NotFound(f"delivery id prefix {delivery_id} is ambiguous: give more characters")
    return rows[0]


def redeliver(conn: psycopg.Connection, delivery_id: str) -> dict[str, Any]:
    """Make a delivery pending again, due now, with a fresh attempt budget; same id.

    Refused for a delivery being sent right now ('sending') and for those that are never sent:
    a stop_run request, a silenced or rate-limited (suppressed) trigger, a skipped no_op.
    """
    found = find(conn, delivery_id)
    if found["action_type"] == "stop_run":
        raise EngineError(
            f"delivery {found['id']} is a stop_run action: its stop request was stored with the trigger, "
            "there is nothing to send"
        )
    if found["status"] in ("silenced", "suppressed"):
        raise EngineError(f"delivery {found['id']} was {found['status']}: it is never sent")
    if found["status"] == "skipped":
        raise EngineError(f"delivery {found['id']} is a no_op action: there is nothing to send")
    if found["status"] == "sending":
        raise EngineError(f"delivery {found['id']} is being sent right now; wait for its outcome")
    budget = int(found["action"].get("max_attempts") or DEFAULT_MAX_ATTEMPTS)
    row = db.one(conn, "delivery_redeliver", {"id": found["id"], "budget": budget, "now": clock.now()})
    if row is None:  # it changed state between the two statements
        raise EngineError(f"delivery {found['id']} is being sent right now; wait for its outcome")
    return row | {"automation": found["automation"], "action_type": found["action_type"]}


def list_deliveries(
    conn: psycopg.Connection,
    *,
    status: str | None = None,
    automation: str | None = None,
    limit: int = 50,
    scopes: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Newest first. status 'pending' includes the ones being sent ('sending'). `scopes`
    (an API key's patterns): only deliveries of automations they cover."""
    params = {"status": status, "automation": automation, "limit": limit}
    return db.rows(conn, "delivery_list", params | {"scopes": None if scopes is None else list(scopes)})
