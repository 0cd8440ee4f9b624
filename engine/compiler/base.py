"""What every compiled query is made of: the `CompiledQuery` it becomes, and the few
builders the metric and event compilers share (placeholders, columns, the run scope)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import sqlglot
from sqlglot import exp

from engine.names import is_system_metric
from engine.rules import Automation

Mode = Literal["live", "history"]
DIALECT = "postgres"


@dataclass(frozen=True)
class CompiledQuery:
    """A rule's query: SQL with `%(name)s` placeholders and the rule's own parameter values.

    The evaluator adds the runtime parameters (`from_xid`/`to_xid` in live mode, `since`
    in history mode) with `bind()`.
    """

    automation: str
    kind: Literal["metric", "event"]
    mode: Mode
    sql: str
    params: dict[str, Any] = field(default_factory=dict)
    automations: tuple[str, ...] = ()  # metric groups: the rules, in the order of the `rule` column

    def bind(self, **runtime: Any) -> dict[str, Any]:
        return {**self.params, **runtime}

    def pretty(self) -> str:
        return sqlglot.transpile(self.sql, read=DIALECT, write=DIALECT, pretty=True)[0]


def param(name: str) -> exp.Placeholder:
    """A bound parameter, rendered `%(name)s`: every value that comes from a rule is one."""
    return exp.Placeholder(this=name)


def col(name: str, table: str | None = None) -> exp.Column:
    return exp.column(name, table)


def xid(value: exp.Expression) -> exp.Cast:
    return exp.cast(value, exp.DataType.build("xid8", udt=True))


def frag(sql: str) -> Any:
    """Parse a constant SQL fragment (a literal in this package; never user input)."""
    return sqlglot.parse_one(sql, read=DIALECT)


def matches(value: exp.Expression, pattern: exp.Expression) -> exp.RegexpLike:
    """`value ~ pattern` (a POSIX regular expression, as PostgreSQL checked it on apply)."""
    return exp.RegexpLike(this=value, expression=pattern)


def at(array: exp.Expression, index: exp.Expression | int) -> exp.Bracket:
    """`array[index]`, 1-based as in PostgreSQL (offset=1: sqlglot takes the index as written)."""
    position = exp.Literal.number(index) if isinstance(index, int) else index
    return exp.Bracket(this=array, expressions=[position], offset=1)


def lateral(query: exp.Expression, alias: str) -> exp.Lateral:
    return exp.Lateral(this=exp.paren(query), alias=exp.TableAlias(this=exp.to_identifier(alias)))


def in_span(select: exp.Select, column: exp.Column, mode: Mode) -> exp.Select:
    """What is new: live, rows written by transactions in [from_xid, to_xid); history, rows
    whose `time` is at or after `since`."""
    if mode == "live":
        return select.where(column >= xid(param("from_xid"))).where(column < xid(param("to_xid")))
    return select.where(column >= exp.cast(param("since"), "TIMESTAMPTZ"))


def metric_table(metric: str) -> str:
    """`system/<key>` metrics live in system_metrics, everything else in metric_points."""
    return "system_metrics" if is_system_metric(metric) else "metric_points"


def project_id(alias: str) -> exp.Select:
    """The id of the rule's project (%(entity)s/%(project)s), from `projects AS <alias>`."""
    return (
        exp.select(col("id", alias))
        .from_(exp.to_table("projects").as_(alias))
        .where(col("entity", alias).eq(param("entity")))
        .where(col("name", alias).eq(param("project")))
    )


def run_scope(
    select: exp.Select, automation: Automation, params: dict[str, Any], run_alias: str
) -> exp.Select:
    """Join the run, and apply the scope and the run filter. The project is looked up once
    per query (a scalar subquery), not once per run; an entity scope takes the entity's
    projects as they are when the query runs (later projects included)."""
    select = select.join(exp.to_table("runs").as_("r"), on=col("id", "r").eq(col("run_pk", run_alias)))
    if automation.scope.project is None:
        params["entity"] = automation.scope.entity
        projects = exp.select(col("id", "pr")).from_(exp.to_table("projects").as_("pr"))
        projects = projects.where(col("entity", "pr").eq(param("entity")))
        select = select.where(col("project_id", "r").isin(query=projects))
    else:
        entity, project = automation.scope.project.split("/", 1)
        params["entity"], params["project"] = entity, project
        select = select.where(col("project_id", "r").eq(project_id("pr").subquery()))
    run_filter = automation.run_filter
    if run_filter is not None and run_filter.user is not None:
        params["run_user"] = run_filter.user
        select = select.where(col("user_name", "r").eq(param("run_user")))
    if run_filter is not None and run_filter.name_regex is not None:
        params["run_name_regex"] = run_filter.name_regex
        select = select.where(matches(col("name", "r"), param("run_name_regex")))
    return select
