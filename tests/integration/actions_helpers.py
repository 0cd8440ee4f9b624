"""Helpers of the actions tests: automations, runs, triggers and their deliveries (the last two
by the evaluator's own insert statement), and a loop that runs the dispatcher until
the deliveries settle. The HTTP receiver is tests/receiver.py."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from engine import clock, db
from engine.actions.dispatcher import Dispatcher
from engine.actions.outbox import delivery_rows
from engine.evaluation.firing import Firing, trigger_row

FINAL = ("succeeded", "failed", "skipped")


# -- database ------------------------------------------------------------------------------
def make_automation(
    conn: psycopg.Connection,
    name: str,
    actions: list[dict],
    event: dict | None = None,
    scope: dict | None = None,
) -> int:
    """An enabled automation, written with SQL rather than by the rule store: these tests give
    one automation several actions, which the outbox handles (one delivery per action) but the
    rule language cannot express."""
    rule = {
        "name": name,
        "enabled": True,
        "scope": scope or {"project": "acme/vision"},
        "event": event
        or {
            "type": "run_metric_threshold",
            "metric": "accuracy",
            "window": 3,
            "aggregation": "avg",
            "operator": ">",
            "threshold": 0.6,
        },
        # A rule holds one action; a trigger's deliveries come from the list given to `fire`.
        "action": actions[0] if actions else {"type": "no_op"},
    }
    digest = hashlib.sha256(json.dumps(rule, sort_keys=True).encode()).hexdigest()
    return conn.execute(
        "INSERT INTO automations (name, rule, rule_hash, condition_hash) VALUES (%s, %s, %s, %s) RETURNING id",
        (name, Jsonb(rule), digest, digest),
    ).fetchone()[0]


def make_run(
    conn: psycopg.Connection, run_id: str = "r1", name: str = "resnet-50", user: str = "alice"
) -> int:
    """A running run, written with SQL rather than by `engine.init`: tests store names the SDK
    refuses (a newline) to prove that templates escape whatever the database holds."""
    project = conn.execute(
        "INSERT INTO projects (entity, name) VALUES ('acme', 'vision') ON CONFLICT (entity, name) DO UPDATE SET name = EXCLUDED.name RETURNING id"
    ).fetchone()[0]
    return conn.execute(
        "INSERT INTO runs (project_id, run_id, name, user_name, state) VALUES (%s, %s, %s, %s, 'running') RETURNING id",
        (project, run_id, name, user),
    ).fetchone()[0]


def fire(
    conn: psycopg.Connection,
    automation_id: int,
    actions: list[dict],
    *,
    run_pk: int | None = None,
    values: Iterable[float] = (0.5, 0.66, 0.7),
    step: int = 7,
    details: dict | None = None,
    cause: str | None = None,
) -> tuple[int, list[uuid.UUID]]:
    """A metric trigger and its deliveries, written by the evaluator's statement."""
    values = list(values)
    cause = cause or f"test:{uuid.uuid4()}"
    name, version = conn.execute(
        "SELECT name, version FROM automations WHERE id = %s", (automation_id,)
    ).fetchone()
    # trigger_row reads only these two of the stored automation (whose rule may not parse: see above)
    automation = SimpleNamespace(id=automation_id, version=version)
    firing = Firing(
        automation=name,
        event_type="run_metric_threshold",
        cause=cause,
        time=clock.now(),
        run_pk=run_pk,
        metric="accuracy",
        step=step,
        value=sum(values) / len(values),
        window_values=values,
        details=details or {},
    )
    with conn.transaction():
        conn.execute(
            db.query("insert_triggers"),
            {
                "triggers": Jsonb([trigger_row(automation, firing) | {"n": 0}]),
                "actions": Jsonb(delivery_rows(automation_id, actions)),
                "now": clock.now(),
                # no triggers inserted by a metric group's own statement
                "fired_ids": [],
                "fired_automations": [],
                "fired_runs": [],
            },
        )
        (trigger_id,) = conn.execute(
            "SELECT id FROM triggers WHERE automation_id = %s AND cause = %s", (automation_id, cause)
        ).fetchone()
        ids = [
            i
            for (i,) in conn.execute(
                "SELECT id FROM deliveries WHERE trigger_id = %s ORDER BY action_index", (trigger_id,)
            ).fetchall()
        ]
    return trigger_id, ids


def delivery(conn: psycopg.Connection, delivery_id: uuid.UUID) -> dict[str, Any]:
    cur = conn.execute("SELECT * FROM deliveries WHERE id = %s", (delivery_id,))
    names = [c.name for c in cur.description]
    return dict(zip(names, cur.fetchone()))


def attempts(conn: psycopg.Connection, delivery_id: uuid.UUID) -> list[dict[str, Any]]:
    cur = conn.execute(
        "SELECT * FROM delivery_attempts WHERE delivery_id = %s ORDER BY attempt", (delivery_id,)
    )
    names = [c.name for c in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def history(conn: psycopg.Connection, trigger_id: int) -> dict[str, Any]:
    cur = conn.execute("SELECT * FROM automation_history WHERE trigger_id = %s", (trigger_id,))
    names = [c.name for c in cur.description]
    return dict(zip(names, cur.fetchone()))


def settle(
    dispatcher: Dispatcher, conn: psycopg.Connection, ids: Iterable[uuid.UUID], timeout: float = 20.0
) -> None:
    """Run the dispatcher until every delivery in `ids` is final (retries included)."""
    ids = list(ids)
    deadline = time.monotonic() + timeout
    while True:
        statuses = [delivery(conn, i)["status"] for i in ids]
        if all(s in FINAL for s in statuses):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"deliveries not settled after {timeout} s: {statuses}")
        if not dispatcher.run_once():
            time.sleep(0.02)
