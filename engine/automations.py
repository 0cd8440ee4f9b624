"""Automations in the database: apply (create/update by name), enable, disable, delete, read.

The rule language (models, loader, linter) is `engine.rules`; this module stores what it
validated, and the evaluator reads the enabled automations back from here:

    from engine.automations import apply
    apply(Automation.model_validate({...}))        # or apply(yaml_text)

How "never fires retroactively" works: each automation has a frontier in
`automation_state`; the evaluator only reads values and events written by transactions
whose xid is at or above it. Creating an automation, enabling it, or changing its
condition (scope, event, run filter) moves the frontier to the current snapshot's xmax,
so everything logged before is ignored. Other edits (description, action, cooldown) keep
it, and no edit ever deletes past triggers: every version is kept in `automation_versions`.

Deleting is a soft delete (`automations.deleted_at`, see migration 0007): the automation is
disabled and leaves every management command, but its versions, triggers and deliveries
stay, so `automation_history` remains an audit log and pending deliveries are still sent.
Its name is free again; an automation created later under it starts a history of its own.
"""

from __future__ import annotations

import difflib
import logging
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import psycopg
from psycopg.types.json import Jsonb
from pydantic import ValidationError

from engine import clock
from engine import db as enginedb
from engine.db import one_row, query, rows, transaction, value
from engine.exceptions import DatabaseError, NotFound, RuleIssue, RuleValidationError
from engine.rules.automation import Automation
from engine.rules.loader import parse_rules_text
from engine.rules.regex import postgres_hint, regexes_of
from engine.rules.scope import Scope

log = logging.getLogger(__name__)

Outcome = Literal["created", "updated", "unchanged", "deleted"]
_LOCK = 0x72756C6573  # "rules": one writer of automations at a time


@dataclass(frozen=True)
class AutomationState:
    """Evaluation progress of one automation (for `engine rules show`)."""

    frontier: str | None
    evaluated_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    failures: int
    triggers: int
    last_fired_at: datetime | None


@dataclass(frozen=True)
class StoredAutomation:
    id: int
    name: str
    version: int
    enabled: bool
    automation: Automation
    source: str | None
    created_at: datetime
    updated_at: datetime
    evaluate_from: datetime
    state: AutomationState | None = None  # filled by get() only


@dataclass(frozen=True)
class AutomationRow:
    """One line of `engine rules list`."""

    name: str
    enabled: bool
    version: int
    rule_type: str  # the rule's event.type
    scope: str
    updated_at: datetime
    last_error: str | None
    triggers: int


# -- apply ---------------------------------------------------------------------------------
def apply(*rules: Automation | str, prune: bool = False, dry_run: bool = False) -> list[tuple[str, Outcome]]:
    """Create or update automations by name (YAML text may hold several rules).

    Connects like the rest of the engine (ENGINE_DATABASE_URL or the embedded database).
    Returns (name, created|updated|unchanged|deleted) for each; with `dry_run`, what it would
    return, and nothing is changed. Deleted automations keep their trigger history.
    """
    automations: list[Automation] = []
    for rule in rules:
        if isinstance(rule, str):
            automations += [loaded.automation for loaded in parse_rules_text(rule, file="<python>")]
        elif isinstance(rule, Automation):
            automations.append(rule)
        else:
            raise TypeError(f"apply() takes Automation models or YAML text, not {type(rule).__name__}")
    with enginedb.connection() as conn:
        enginedb.ensure_schema(conn)
        return apply_rules(conn, automations, prune=prune, dry_run=dry_run)


def check_regexes_in_db(
    conn: psycopg.Connection, automation: Automation, *, file: str = "<rule>", line: int | None = None
) -> list[RuleIssue]:
    """Compile each regex of the rule in PostgreSQL (`SELECT '' ~ pattern`), which runs them;
    one issue per refusal, in PostgreSQL's words (plus a hint for a Python-only construct).

    Each check runs in its own savepoint, so a refusal never aborts the caller's transaction.
    """
    issues = []
    for loc, pattern in regexes_of(automation):
        try:
            with transaction(conn):
                value(conn, "check_regex", {"pattern": pattern})
        except DatabaseError as exc:
            if exc.sqlstate != "2201B":  # invalid_regular_expression
                raise
            message = str(exc.__cause__ or exc).strip().splitlines()[0]  # PostgreSQL's words
            hint = postgres_hint(pattern)
            issues.append(
                RuleIssue(
                    file,
                    line,
                    ".".join(loc),
                    f"PostgreSQL refuses this regex: {message}" + (f" ({hint})" if hint else ""),
                )
            )
    return issues


def apply_rules(
    conn: psycopg.Connection,
    rules: Sequence[Automation],
    *,
    source: dict[str, str] | None = None,
    prune: bool = False,
    dry_run: bool = False,
    spare: Sequence[str] = (),
) -> list[tuple[str, Outcome]]:
    """Create or update each rule by name, in one transaction; with `prune`, delete the
    automations not among `rules` nor named in `spare` (their history stays). Returns (name,
    created|updated|unchanged|deleted). With `dry_run`, the same answer, from a read-only
    transaction: nothing is written.

    Regexes are compiled by PostgreSQL first; any refusal raises RuleValidationError and
    nothing is written.
    """
    source = source or {}
    issues: list[RuleIssue] = []
    seen: set[str] = set()
    for rule in rules:
        where = source.get(rule.name, "<rule>")
        if rule.name in seen:
            issues.append(RuleIssue(where, None, "name", f"duplicate automation name {rule.name!r}"))
        seen.add(rule.name)
        issues += check_regexes_in_db(conn, rule, file=where)
    if issues:
        raise RuleValidationError(issues)

    keep = [r.name for r in rules] + list(spare)
    if dry_run:
        return _plan(conn, rules, keep if prune else None)
    now = clock.now()
    results: list[tuple[str, Outcome]] = []
    with transaction(conn):
        conn.execute(query("lock_automations"), {"key": _LOCK})
        for rule in rules:
            results.append((rule.name, _apply_one(conn, rule, source.get(rule.name), now)))
        if prune:
            results += [(name, "deleted") for name in _delete(conn, now, keep=keep)]
    return results


def _plan(
    conn: psycopg.Connection, rules: Sequence[Automation], keep: list[str] | None
) -> list[tuple[str, Outcome]]:
    """What apply would answer, read in a READ ONLY transaction (the database refuses any write)."""
    results: list[tuple[str, Outcome]] = []
    with transaction(conn):
        conn.execute(query("read_only_transaction"))
        for rule in rules:
            row = conn.execute(query("automation_hash"), {"name": rule.name}).fetchone()
            results.append((rule.name, _outcome(row[0] if row else None, rule)))
        if keep is not None:
            results += [
                (name, "deleted") for (name,) in conn.execute(query("pruned_automations"), {"keep": keep})
            ]
    return results


def _outcome(stored_hash: str | None, rule: Automation) -> Outcome:
    """created / unchanged / updated, from the stored rule's hash (None: no such automation)."""
    if stored_hash is None:
        return "created"
    return "unchanged" if stored_hash == rule.rule_hash() else "updated"


def _apply_one(conn: psycopg.Connection, rule: Automation, source: str | None, now: datetime) -> Outcome:
    row = _for_update(conn, rule.name)
    outcome = _outcome(row["rule_hash"] if row else None, rule)
    if row is None:
        params = _rule_params(rule) | {"source": source, "now": now}
        (automation_id,) = one_row(conn.execute(query("insert_automation"), params))
        conn.execute(query("insert_automation_version"), {"id": automation_id, "version": 1, **params})
        conn.execute(query("insert_automation_state"), {"id": automation_id})
    elif outcome == "updated":
        _update(conn, row, rule, source, now)
    return outcome


def _update(
    conn: psycopg.Connection, row: dict[str, Any], rule: Automation, source: str | None, now: datetime
) -> None:
    """Store a new version; restart evaluation if the condition changed or it was just enabled."""
    restart = row["condition_hash"] != rule.condition_hash() or (not row["enabled"] and rule.enabled)
    params = _rule_params(rule) | {"id": row["id"], "source": source, "now": now, "restart": restart}
    (version,) = one_row(conn.execute(query("update_automation"), params))
    conn.execute(query("insert_automation_version"), params | {"version": version})
    if restart:
        conn.execute(query("restart_automation_state"), {"id": row["id"]})


def _rule_params(rule: Automation) -> dict[str, Any]:
    return {
        "name": rule.name,
        "enabled": rule.enabled,
        "rule": Jsonb(rule.to_json()),
        "rule_hash": rule.rule_hash(),
        "condition_hash": rule.condition_hash(),
    }


def _for_update(conn: psycopg.Connection, name: str) -> dict[str, Any] | None:
    return enginedb.one(conn, "automation_for_update", {"name": name})


# -- management ------------------------------------------------------------------------------
def enable(conn: psycopg.Connection, name: str) -> bool:
    """Enable an automation (a new version; evaluation starts from now). False if it already was."""
    return _set_enabled(conn, name, True)


def disable(conn: psycopg.Connection, name: str) -> bool:
    """Disable an automation (a new version). False if it already was."""
    return _set_enabled(conn, name, False)


def _set_enabled(conn: psycopg.Connection, name: str, enabled: bool) -> bool:
    with transaction(conn):
        conn.execute(query("lock_automations"), {"key": _LOCK})
        row = _for_update(conn, name)
        if row is None:
            raise _not_found(conn, name)
        if row["enabled"] == enabled:
            return False
        # The stored rule says `enabled` too, so that `show` and a re-apply agree with the table.
        rule = Automation.model_validate({**row["rule"], "enabled": enabled})
        _update(conn, row, rule, None, clock.now())
        return True


def delete(conn: psycopg.Connection, name: str) -> None:
    """Delete an automation: it is no longer evaluated nor listed, and its name is free;
    its versions, triggers and deliveries stay in the history (pending deliveries are sent)."""
    with transaction(conn):
        conn.execute(query("lock_automations"), {"key": _LOCK})
        if not _delete(conn, clock.now(), names=[name]):
            raise _not_found(conn, name)


def _delete(
    conn: psycopg.Connection, now: datetime, *, names: list[str] | None = None, keep: list[str] | None = None
) -> list[str]:
    """Soft-delete `names`, or every live automation not in `keep`; the names deleted."""
    params = {"now": now, "names": names or [], "keep": keep or [], "prune": keep is not None}
    return [name for (name,) in conn.execute(query("delete_automations"), params).fetchall()]


def get(conn: psycopg.Connection, name: str) -> StoredAutomation:
    """The stored automation with its evaluation state; NotFound (with close names) otherwise."""
    row = enginedb.one(conn, "get_automation", {"name": name})
    if row is None:
        raise _not_found(conn, name)
    state = AutomationState(
        frontier=row["frontier"],
        evaluated_at=row["evaluated_at"],
        last_error=row["last_error"],
        last_error_at=row["last_error_at"],
        failures=row["failures"] or 0,
        triggers=row["triggers"],
        last_fired_at=row["last_fired_at"],
    )
    return _stored(row, Automation.model_validate(row["rule"]), state)


def list_automations(conn: psycopg.Connection, scopes: Sequence[str] | None = None) -> list[AutomationRow]:
    """Live automations; with `scopes` (an API key's patterns), only those they cover."""
    found = rows(conn, "list_automations", {"scopes": None if scopes is None else list(scopes)})
    return [
        AutomationRow(
            name=r["name"],
            enabled=r["enabled"],
            version=r["version"],
            rule_type=r["rule_type"],
            scope=Scope.model_validate(r["scope"]).describe(),
            updated_at=r["updated_at"],
            last_error=r["last_error"],
            triggers=r["triggers"],
        )
        for r in found
    ]


def load_enabled(conn: psycopg.Connection) -> list[StoredAutomation]:
    """Every enabled automation, parsed, for the evaluator.

    A stored rule the current models refuse (written by another version of the engine) is
    logged and skipped rather than stopping every other automation.
    """
    result = []
    for row in rows(conn, "enabled_automations"):
        try:
            automation = Automation.model_validate(row["rule"])
        except ValidationError as exc:
            log.error("automation %r (id %s) cannot be read and is skipped: %s", row["name"], row["id"], exc)
            continue
        result.append(_stored(row, automation, None))
    return result


def _stored(row: dict[str, Any], automation: Automation, state: AutomationState | None) -> StoredAutomation:
    return StoredAutomation(
        id=row["id"],
        name=row["name"],
        version=row["version"],
        enabled=row["enabled"],
        automation=automation,
        source=row["source"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        evaluate_from=row["evaluate_from"],
        state=state,
    )


def _not_found(conn: psycopg.Connection, name: str) -> NotFound:
    names = [r["name"] for r in rows(conn, "automation_names")]
    deleted_at = value(conn, "deleted_automation", {"name": name})
    if deleted_at is not None:
        return NotFound(
            f"no automation named {name!r}: it was deleted on {deleted_at:%Y-%m-%d %H:%M %Z} "
            f"(its history: engine history --automation {shlex.quote(name)})"
        )
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(n) for n in close)}?" if close else ""
    return NotFound(f"no automation named {name!r}{hint}")
