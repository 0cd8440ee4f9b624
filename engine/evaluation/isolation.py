"""Failure isolation: one broken (or too slow) automation is found, logged and skipped while
the others go on.

Groups are evaluated together in one transaction; when that fails, the work is split and
tried again: the other groups without the failing one, then the failing group's members one
by one. The attempts wait in a worklist (a stack, so that each split is settled before the
work queued before it, as a depth-first search would). A timeout of a group of n rules thus
costs up to n + 1 timeouts in that tick.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import psycopg

from engine.automations import StoredAutomation
from engine.db import run
from engine.exceptions import DatabaseError, DatabaseUnavailable, EngineError

log = logging.getLogger(__name__)

Groups = list[list[StoredAutomation]]


class GroupFailed(Exception):
    """The query of one group failed (inside a transaction that holds others too)."""

    def __init__(self, group: list[StoredAutomation], error: DatabaseError):
        super().__init__(str(error))
        self.group, self.error = group, error


@dataclass
class _Attempt:
    """Evaluate these groups together, in one transaction."""

    groups: Groups


@dataclass
class _Isolate:
    """A group that failed with `error`: its members one by one (one member: skipped)."""

    members: list[StoredAutomation]
    error: Exception


def evaluate_isolating(
    groups: Groups,
    evaluate: Callable[[Groups], None],
    skip: Callable[[StoredAutomation, Exception], None],
) -> None:
    """Run `evaluate` over `groups`, splitting the work on failure until every automation
    has either been evaluated or been found failing alone (`skip` is called for it).

    `evaluate` raises `GroupFailed` when one group's query failed, any `EngineError` (the
    gateway's, for the database) when the transaction failed otherwise. A database outage is not a failure
    of these automations nor of the ones after them: it is raised (the service backs off
    and logs it)."""
    work: list[_Attempt | _Isolate] = [_Attempt(groups)]
    while work:
        item = work.pop()
        if isinstance(item, _Isolate):
            if len(item.members) > 1:
                log.warning(
                    "%d automations on one metric failed together (%s); evaluating them one by one",
                    len(item.members),
                    item.error,
                )
                work.extend(_Attempt([[stored]]) for stored in reversed(item.members))
            else:
                skip(item.members[0], item.error)
            continue
        try:
            evaluate(item.groups)
        except GroupFailed as failed:
            if isinstance(failed.error, DatabaseUnavailable):
                raise failed.error from failed.error.__cause__
            work.append(_Isolate(failed.group, failed.error))
            others = [group for group in item.groups if group is not failed.group]
            if others:
                work.append(_Attempt(others))
        except DatabaseUnavailable:
            raise
        except EngineError as exc:
            if len(item.groups) > 1:
                work.extend(_Attempt([group]) for group in reversed(item.groups))
            else:
                work.append(_Isolate(item.groups[0], exc))


def record_failure(conn: psycopg.Connection, stored: StoredAutomation, error: Exception) -> None:
    """Log a failed automation and record it (the next tick retries it over a shorter span)."""
    log.error("automation %r failed and is skipped this tick: %s", stored.name, error)
    try:
        run(conn, "record_failure", {"automation_id": stored.id, "error": str(error)[:2000]})
    except EngineError:  # the failure is already logged; never let it stop the tick
        log.exception("could not record the failure of automation %s", stored.id)
