"""How much is sent: an action's `digest` and `rate_limit` (silences: engine/actions/silences.py).

Everything is decided in the database, so that several services share one count and a
restart loses nothing:

* **Gates.** Each (automation, action) with a digest or a rate limit has a row in
  `action_gates`. The evaluator locks the gates of the actions it is about to fire
  (`lock_gates`, a statement of its own) before `insert_triggers`, whose snapshot then sees
  every delivery committed before: the rate-limit count and the insert it allows happen under
  one lock, whichever service runs them.
* **Rate limit.** `insert_triggers` counts the action's deliveries created in the last `per`
  (suppressed, silenced and skipped ones do not count); the triggers beyond `count` get a
  `suppressed` delivery: recorded, final, never sent.
* **Digest.** A digested action's trigger gets no delivery of its own: it joins the action's
  open window (`digests`, `digest_members`), or opens one that closes `digest` later.
  `close_due_digests` claims the gates of actions with a window due (SKIP LOCKED, like a
  delivery claim) and, in one statement, gives each due window ONE delivery (its trigger: the
  one that opened the window) and marks it closed. The window, its members and its closing
  are rows written in transactions, so a crash before the commit closes nothing and one after
  it has the delivery in the outbox: exactly one delivery per window. The dispatcher renders
  it with `${digest}` (each member's variables) and `${digest_count}` (`digest_contexts`).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from engine import clock, db
from engine.actions.context import build_contexts
from engine.actions.templates import default_payload
from engine.rules.duration import MIN_COOLDOWN, format_duration, parse_duration
from engine.settings import Settings

log = logging.getLogger(__name__)

CLOSE_BATCH = 100  # actions whose windows one closing statement handles
MIN_WINDOW = MIN_COOLDOWN  # the shortest `digest` (the rule language checks it)


def controls(action: Mapping[str, Any]) -> dict[str, Any]:
    """The digest and rate limit of an action (its stored JSON), as `insert_triggers` reads them."""
    digest, limit = action.get("digest"), action.get("rate_limit")
    per = parse_duration(limit["per"]) if limit else None
    return {
        "digest_seconds": parse_duration(digest).total_seconds() if digest else None,
        "rate_count": int(limit["count"]) if limit else None,
        "rate_per_seconds": per.total_seconds() if per else None,
        "rate_text": f"{int(limit['count'])} per {format_duration(per)}" if limit and per else None,
    }


def lock_gates(conn: psycopg.Connection, actions: Sequence[Mapping[str, Any]]) -> None:
    """Lock the gates of the controlled ones of these delivery rows (`outbox.delivery_rows`)
    until the transaction ends. Call it inside the transaction, before `insert_triggers`."""
    keys = sorted(
        {
            (int(a["automation_id"]), int(a["action_index"]))
            for a in actions
            if a.get("digest_seconds") is not None or a.get("rate_count") is not None
        }
    )
    if keys:
        conn.execute(
            db.query("flow_lock_gates"),
            {"automation_ids": [k[0] for k in keys], "action_indexes": [k[1] for k in keys]},
        )


def close_due_digests(conn: psycopg.Connection, now: datetime | None = None) -> list[dict[str, Any]]:
    """Close every digest window due at `now` whose action no other service is handling: one
    delivery each (pending, or suppressed by the rate limit). Returns a row per window closed
    (digest_id, delivery_id, status, members). `conn` must be in autocommit mode."""
    now = now or clock.now()
    closed: list[dict[str, Any]] = []
    while True:
        with db.boundary(), conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            gates = cur.execute(
                db.query("flow_claim_due_gates"), {"now": now, "limit": CLOSE_BATCH}
            ).fetchall()
            if not gates:
                return closed
            rows = cur.execute(
                db.query("flow_close_digests"),
                {
                    "now": now,
                    "automation_ids": [g["automation_id"] for g in gates],
                    "action_indexes": [g["action_index"] for g in gates],
                },
            ).fetchall()
        for row in rows:
            log.info(
                "digest %s closed with %d triggers: delivery %s %s",
                row["digest_id"],
                row["members"],
                row["delivery_id"],
                row["status"],
            )
        closed += rows
        if len(gates) < CLOSE_BATCH:
            return closed


def seconds_until_next_close(conn: psycopg.Connection) -> float:
    """Seconds until the earliest open window closes (0 when one is due), at most the shortest
    digest: a window opened from now on closes no sooner."""
    with db.boundary():
        row = conn.execute(db.query("flow_next_close")).fetchone()
    closes_at = row[0] if row else None
    shortest = MIN_WINDOW.total_seconds()
    if closes_at is None:
        return shortest
    return min(shortest, max(0.0, (closes_at - clock.now()).total_seconds()))


def digest_contexts(
    conn: psycopg.Connection,
    claims: Sequence[Mapping[str, Any]],
    contexts: Mapping[int, dict[str, str]],
    settings: Settings | None = None,
) -> dict[uuid.UUID, dict[str, str]]:
    """The template variables of the digest deliveries among claimed rows (`id`, `trigger_id`,
    `action`), by delivery id: those of the trigger that opened the window (`contexts`, read
    with the claim), plus `digest` (a JSON list with each member's variables, as the default
    payload shows one trigger) and `digest_count`. Other deliveries are not in the result."""
    wanted = [c["id"] for c in claims if (c.get("action") or {}).get("digest")]
    if not wanted:
        return {}
    members = {
        r["delivery_id"]: r["trigger_ids"]
        for r in db.rows(conn, "flow_digest_members", {"delivery_ids": wanted})
    }
    every = build_contexts(conn, {t for ids in members.values() for t in ids}, settings)
    out: dict[uuid.UUID, dict[str, str]] = {}
    for claim in claims:
        ids = members.get(claim["id"])
        if ids is None:
            continue
        base = contexts.get(claim["trigger_id"]) or every.get(claim["trigger_id"])
        if base is None:
            continue  # the trigger is gone
        items = [default_payload(every[t]) for t in ids if t in every]
        out[claim["id"]] = dict(base) | {
            "digest": json.dumps(items, ensure_ascii=False, allow_nan=False),
            "digest_count": str(len(items)),
        }
    return out


def sample_digest(ctx: Mapping[str, str]) -> dict[str, str]:
    """`ctx` (one trigger's variables) as a digest carrying that one trigger (`engine actions test`)."""
    return dict(ctx) | {"digest": json.dumps([default_payload(ctx)], ensure_ascii=False), "digest_count": "1"}
