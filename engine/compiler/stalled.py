"""Stall rules: the running runs of the rule's scope with no metric value for `after`,
measured on the database's clock from `runs.last_metric_at` (stamped by the SDK's flush), or
from the run's start when it has none. Driven by time, not by new data: the evaluator runs
the live query every tick, and it reads the running runs of one project through the partial
index `runs_running` (its cost follows them, never the history).

Live: a stall is (run, deadline = last value + after), fired once: a deadline already fired
(a trigger of the automation for the run at that value_time) is not returned, and only
deadlines after `checked_from` count (never before the automation was enabled). `now` is the
database's clock unless the engine's clock is frozen (tests).

History (the backtest): the pauses recorded by the flushes (`run_metric_gaps`, every pause of
at least a minute) longer than `after`, and the pause each run is in now; a run that ended
before the deadline never stalled.
"""

from __future__ import annotations

from typing import Any

from sqlglot import exp

from engine.compiler.base import DIALECT, CompiledQuery, Mode, frag, matches, param, project_id
from engine.rules import Automation, RunStalled

_SINCE = "COALESCE(r.last_metric_at, r.created_at)"
_NOW = "CAST(%(now)s AS TIMESTAMPTZ)"
_AFTER = "CAST(%(after)s AS INTERVAL)"

# Written as a range of the last value's time (the index `runs_running`): deadlines up to now,
# after `checked_from` (the later of the automation's enabling and the previous check, minus a
# margin: see Evaluator._run_clocked).
_LIVE = f"""
SELECT r.id AS run_pk, {_SINCE} AS since, {_SINCE} + {_AFTER} AS deadline,
       EXTRACT(EPOCH FROM {_NOW} - {_SINCE}) AS seconds
FROM runs AS r
WHERE r.state = 'running' AND {_SINCE} <= {_NOW} - {_AFTER}
  AND {_SINCE} > CAST(%(checked_from)s AS TIMESTAMPTZ) - {_AFTER}
  AND NOT EXISTS (SELECT 1 FROM triggers AS t WHERE t.automation_id = %(automation_id)s AND t.run_pk = r.id
                  AND t.value_time = {_SINCE} + {_AFTER})
"""

_PAUSES = f"""
SELECT g.run_pk, g.from_at AS since, g.from_at + {_AFTER} AS deadline, EXTRACT(EPOCH FROM {_AFTER}) AS seconds
FROM run_metric_gaps AS g JOIN runs AS r ON r.id = g.run_pk
WHERE g.to_at > g.from_at + {_AFTER} AND g.from_at + {_AFTER} >= CAST(%(since)s AS TIMESTAMPTZ)
  AND (r.finished_at IS NULL OR r.finished_at > g.from_at + {_AFTER}) AND r.state <> 'killed'
"""

_OPEN = f"""
SELECT r.id AS run_pk, {_SINCE} AS since, {_SINCE} + {_AFTER} AS deadline, EXTRACT(EPOCH FROM {_AFTER}) AS seconds
FROM runs AS r
WHERE {_SINCE} + {_AFTER} <= STATEMENT_TIMESTAMP() AND {_SINCE} + {_AFTER} >= CAST(%(since)s AS TIMESTAMPTZ)
  AND (r.finished_at IS NULL OR r.finished_at > {_SINCE} + {_AFTER}) AND r.state <> 'killed'
"""


def _scoped(select: exp.Select, automation: Automation, params: dict[str, Any]) -> exp.Select:
    """The rule's project (looked up once, a scalar subquery) or its entity's projects as they
    are when the query runs (later ones included), and its run filter, on `runs AS r`."""
    if automation.scope.project is None:
        params["entity"] = automation.scope.entity
        projects = exp.select(exp.column("id", "pr")).from_(exp.to_table("projects").as_("pr"))
        projects = projects.where(exp.column("entity", "pr").eq(param("entity")))
        select = select.where(exp.column("project_id", "r").isin(query=projects))
    else:
        params["entity"], params["project"] = automation.scope.project.split("/", 1)
        select = select.where(exp.column("project_id", "r").eq(project_id("pr").subquery()))
    run_filter = automation.run_filter
    if run_filter is not None and run_filter.user is not None:
        params["run_user"] = run_filter.user
        select = select.where(exp.column("user_name", "r").eq(param("run_user")))
    if run_filter is not None and run_filter.name_regex is not None:
        params["run_name_regex"] = run_filter.name_regex
        select = select.where(matches(exp.column("name", "r"), param("run_name_regex")))
    return select


def compile_stalled(automation: Automation, mode: Mode = "live") -> CompiledQuery:
    """Live: bind `now`, `checked_from` and `automation_id`;
    history: `since`. Rows: run_pk, since (the last value), deadline, seconds."""
    event = automation.event
    assert isinstance(event, RunStalled), f"{event} is not a stall rule"
    params: dict[str, Any] = {"after": event.after}
    query: exp.Query
    if mode == "live":
        query = _scoped(frag(_LIVE), automation, params).order_by("run_pk")
    else:
        query = exp.union(
            _scoped(frag(_PAUSES), automation, params),
            _scoped(frag(_OPEN), automation, params),
            distinct=False,
        ).order_by("run_pk", "deadline")
    return CompiledQuery(automation.name, "event", mode, query.sql(dialect=DIALECT), params)
