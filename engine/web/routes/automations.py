"""Automations over HTTP: list, show, validate, apply, enable, disable, delete, backtest.

The rule text is YAML, loaded by the same loader as `engine rules` (errors with their line
and field); storage is engine.automations, as for the CLI.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import psycopg
from fastapi import APIRouter
from pydantic import ValidationError

from engine import automations
from engine import db as enginedb
from engine.evaluation import backtest as run_backtest
from engine.exceptions import RuleValidationError
from engine.rules.loader import LoadedRule, parse_rules_text, parse_rules_texts
from engine.since import parse_since
from engine.web.auth import Invalid, Principal, access, automation_in_path, rules_in_body
from engine.web.deps import Conn
from engine.web.models import Apply, Backtest, Changed, Outcome, RuleError, RulesText, RulesTexts, Validation

router = APIRouter(prefix="/automations", tags=["automations"])


def issues_of(error: RuleValidationError) -> list[RuleError]:
    return [RuleError(line=i.line, field=i.field, message=i.message) for i in error.issues]


def parse_body_rules(payload: Any) -> list[LoadedRule]:
    """The rules of a request's `yaml` and `files` (RuleValidationError: 422 with every issue)."""
    try:
        body = RulesTexts.model_validate(
            {k: payload[k] for k in ("yaml", "file", "files") if k in payload}
            if isinstance(payload, dict)
            else payload
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        raise Invalid(("body", *first["loc"]), first["msg"]) from None
    return parse_rules_texts(texts_of(body))


def texts_of(body: RulesTexts) -> list[tuple[str, str]]:
    return [(body.yaml, body.file), *((f.yaml, f.file) for f in body.files)]


@router.get("")
def list_automations(principal: Annotated[Principal, access("read")], conn: Conn) -> list[dict[str, Any]]:
    """The automations your key covers: name, enabled, version, event type, scope, triggers, last error."""
    return [row.__dict__ for row in automations.list_automations(conn, scopes=principal.scopes)]


@router.get("/{name}", dependencies=[access("read", automation_in_path)])
def show(name: str, conn: Conn) -> dict[str, Any]:
    """The stored rule (as JSON), its condition in words, its version and evaluation state."""
    stored = automations.get(conn, name)
    return {
        "id": stored.id,
        "name": stored.name,
        "version": stored.version,
        "enabled": stored.enabled,
        "rule": stored.automation.to_json(),
        "condition": stored.automation.event.describe(),
        "source": stored.source,
        "created_at": stored.created_at,
        "updated_at": stored.updated_at,
        "evaluate_from": stored.evaluate_from,
        "state": stored.state.__dict__ if stored.state else None,
    }


@router.post("/validate", dependencies=[access("read")])
def validate(body: RulesText, conn: Conn) -> Validation:
    """Check rules: `{valid, errors: [{line, field, message}]}` (regexes compiled by PostgreSQL too)."""
    try:
        parse_rules_text(body.yaml, file=body.file, conn=conn)
    except RuleValidationError as exc:
        return Validation(valid=False, errors=issues_of(exc))
    return Validation(valid=True, errors=[])


@router.post("/apply")
def apply(
    body: Apply, principal: Annotated[Principal, access("admin", rules_in_body, body=True)], conn: Conn
) -> list[Outcome]:
    """Create or update automations by name; `prune` deletes those your key covers that are not in `yaml`."""
    rules = parse_rules_texts(texts_of(body), conn=conn)
    spare: list[str] = []
    if body.prune:  # a key prunes only what it covers
        spare = [r.name for r in automations.list_automations(conn)]
        covered = {r.name for r in automations.list_automations(conn, scopes=principal.scopes)}
        spare = [name for name in spare if name not in covered]
    results = automations.apply_rules(
        conn,
        [r.automation for r in rules],
        source={r.automation.name: r.file for r in rules},
        prune=body.prune,
        dry_run=body.dry_run,
        spare=spare,
    )
    return [Outcome(name=name, outcome=outcome) for name, outcome in results]


@router.post("/backtest", dependencies=[access("read", rules_in_body, body=True)])
def backtest(body: Backtest, conn: Conn) -> list[dict[str, Any]]:
    """What the rules would have fired over stored history since `since`; sends and writes nothing."""
    try:
        start = parse_since(body.since)
    except ValueError as exc:
        raise Invalid(("body", "since"), str(exc)) from None
    return backtest_rules(conn, parse_rules_text(body.yaml, file=body.file, conn=conn), start)


def backtest_rules(
    conn: psycopg.Connection, rules: list[LoadedRule], start: datetime
) -> list[dict[str, Any]]:
    """Each rule's would-be firings since `start`, runs named (the API's and the console's backtest)."""
    out = []
    for loaded in rules:
        firings = run_backtest(conn, loaded.automation, start)
        labels: dict[int, tuple[str, str | None]] = {}
        run_pks = [f.run_pk for f in firings if f.run_pk is not None]
        if run_pks:
            with enginedb.boundary():
                labels = {
                    r[0]: (r[1], r[2])
                    for r in conn.execute(enginedb.query("run_labels"), {"run_pks": run_pks})
                }
        out.append(
            {
                "automation": loaded.automation.name,
                "firings": [
                    {
                        "time": f.time,
                        "run_id": labels[f.run_pk][0] if f.run_pk in labels else None,
                        "run_name": labels[f.run_pk][1] if f.run_pk in labels else None,
                        "metric": f.metric,
                        "step": f.step,
                        "value": f.value,
                        "alias": f.alias,
                        "tag": f.tag,
                    }
                    for f in firings
                ],
            }
        )
    return out


@router.post("/{name}/enable", dependencies=[access("admin", automation_in_path)])
def enable(name: str, conn: Conn) -> Changed:
    """Enable it; it reacts to what is logged from now on."""
    return Changed(changed=automations.enable(conn, name))


@router.post("/{name}/disable", dependencies=[access("admin", automation_in_path)])
def disable(name: str, conn: Conn) -> Changed:
    """Disable it (kept, with its history)."""
    return Changed(changed=automations.disable(conn, name))


@router.delete("/{name}", dependencies=[access("admin", automation_in_path)])
def delete(name: str, conn: Conn) -> Changed:
    """Delete it: no longer evaluated, its name free again; its history is kept."""
    automations.delete(conn, name)
    return Changed(changed=True)
