"""Compile automation rules into SQL, built with sqlglot expressions.

Every value that comes from a rule (metric name, thresholds, windows, regexes, user,
project, alias/tag patterns) is a bound parameter (`exp.Placeholder`, rendered `%(name)s`);
the SQL text depends only on the *shape* of the rule (its kind, aggregation, operator,
which filters are present). Constant SQL fragments below are written as literals and
parsed by sqlglot; nothing user-supplied is ever formatted into them.

Metric rules
------------
The query evaluates SPEC section 2's per-value semantics: at every *new* finite value v_i
of a series (run, metric), the window is the N finite values ending at v_i. "New" depends
on the mode:

* ``live``: values written by transactions whose xid lies in [from_xid, to_xid)
  (table `series_batches`, maintained by the SDK in the same transaction as the points).
  Values come from the per-series tail (`series_state`), so the query never searches the
  hypertable, whatever its size or chunk count; a series whose tail does not reach back far
  enough (a long outage, or windows longer than ENGINE_SERIES_TAIL) reads the hypertable.
* ``history``: every finite value whose time is >= since (the backtest).

Both modes share everything after the `pending` CTE, so live evaluation and the backtest
cannot disagree on what a window is. The query returns the values where the condition
holds; the per-run cooldown is applied by the evaluator, in order.

Event rules
-----------
Run-state, artifact and registry rules select rows of the append-only `events` table in
[from_xid, to_xid) (live) or with time >= since (history), with their scope and filters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import sqlglot
from sqlglot import exp

from engine.rules import (
    ArtifactAliasAdded,
    ArtifactTagAdded,
    ArtifactVersionCreated,
    Automation,
    RegistryVersionLinked,
    RunMetricChange,
    RunMetricThreshold,
    RunState,
)

Mode = Literal["live", "history"]
DIALECT = "postgres"
SYSTEM_PREFIX = "system/"

# Keep in sync with the rule models' `operator` literal.
_COMPARISONS: dict[str, type[exp.Binary]] = {
    ">": exp.GT,
    ">=": exp.GTE,
    "<": exp.LT,
    "<=": exp.LTE,
    "==": exp.EQ,
    "!=": exp.NEQ,
}


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

    def bind(self, **runtime: Any) -> dict[str, Any]:
        return {**self.params, **runtime}

    def pretty(self) -> str:
        return sqlglot.transpile(self.sql, read=DIALECT, write=DIALECT, pretty=True)[0]


def _p(name: str) -> exp.Placeholder:
    return exp.Placeholder(this=name)


def _c(name: str, table: str | None = None) -> exp.Column:
    return exp.column(name, table)


def _xid(value: exp.Expression) -> exp.Cast:
    return exp.Cast(this=value, to=exp.DataType.build("xid8", udt=True))


def _frag(sql: str) -> exp.Expression:
    """Parse a constant SQL fragment (a literal in this module; never user input)."""
    return sqlglot.parse_one(sql, read=DIALECT)


def metric_table(metric: str) -> str:
    """`system/<key>` metrics live in system_metrics, everything else in metric_points."""
    return "system_metrics" if metric.startswith(SYSTEM_PREFIX) else "metric_points"


# --------------------------------------------------------------------------------------
# metric rules
# --------------------------------------------------------------------------------------
def _pending(mode: Mode) -> exp.Select:
    """Per series: the positions of the values to evaluate (first_pos..last_pos)."""
    if mode == "live":
        return (
            exp.select(
                _c("run_pk", "b"),
                _c("key_id", "b"),
                exp.func("min", _c("first_pos", "b")).as_("first_pos"),
                exp.func("max", _c("last_pos", "b")).as_("last_pos"),
            )
            .from_(exp.to_table("series_batches").as_("b"))
            .join(exp.to_table("metric_keys").as_("k"), on=_frag("k.id = b.key_id"))
            .where(exp.EQ(this=_c("key", "k"), expression=_p("metric")))
            .where(exp.GTE(this=_c("xid", "b"), expression=_xid(_p("from_xid"))))
            .where(exp.LT(this=_c("xid", "b"), expression=_xid(_p("to_xid"))))
            .group_by(_c("run_pk", "b"), _c("key_id", "b"))
        )
    return (
        exp.select(
            _c("run_pk", "s"),
            _c("key_id", "s"),
            exp.Literal.number(1).as_("first_pos"),
            _c("n_finite", "s").as_("last_pos"),
        )
        .from_(exp.to_table("series_state").as_("s"))
        .join(exp.to_table("metric_keys").as_("k"), on=_frag("k.id = s.key_id"))
        .where(exp.EQ(this=_c("key", "k"), expression=_p("metric")))
    )


def _run_scope(select: exp.Select, automation: Automation, params: dict[str, Any], run_alias: str) -> exp.Select:
    """Join the run and its project, and apply the scope and the run filter."""
    entity, project = automation.scope.project.split("/", 1)
    params["entity"], params["project"] = entity, project
    select = select.join(exp.to_table("runs").as_("r"), on=_frag(f"r.id = {run_alias}.run_pk")).join(
        exp.to_table("projects").as_("pr"), on=_frag("pr.id = r.project_id")
    )
    select = select.where(exp.EQ(this=_c("entity", "pr"), expression=_p("entity")))
    select = select.where(exp.EQ(this=_c("name", "pr"), expression=_p("project")))
    run_filter = automation.run_filter
    if run_filter is not None and run_filter.user is not None:
        params["run_user"] = run_filter.user
        select = select.where(exp.EQ(this=_c("user_name", "r"), expression=_p("run_user")))
    if run_filter is not None and run_filter.name_regex is not None:
        params["run_name_regex"] = run_filter.name_regex
        select = select.where(exp.RegexpLike(this=_c("name", "r"), expression=_p("run_name_regex")))
    return select


def _series(automation: Automation, params: dict[str, Any]) -> exp.Select:
    """Pending series in scope, with what is needed to slice their tail: `base` is the
    position just before tail[1]; `need_from` the first position a window needs."""
    select = (
        exp.select(
            _c("run_pk", "p"),
            _c("key_id", "p"),
            _c("first_pos", "p"),
            _c("last_pos", "p"),
            _c("n_finite", "s"),
            _frag("s.n_finite - CARDINALITY(s.tail_value)").as_("base"),
            exp.func("greatest", exp.Literal.number(1), _frag("p.first_pos - %(span)s + 1")).as_("need_from"),
            _c("tail_step", "s"),
            _c("tail_time", "s"),
            _c("tail_value", "s"),
        )
        .from_(exp.to_table("pending").as_("p"))
        .join(exp.to_table("series_state").as_("s"), on=_frag("s.key_id = p.key_id AND s.run_pk = p.run_pk"))
    )
    return _run_scope(select, automation, params, "p")


def _values(table: str) -> exp.Union:
    """The finite values each window needs: from the tail when it reaches back far enough,
    else (rarely) from the hypertable, newest first through the (run_pk, key_id, seq) index."""
    def tail_slice(column: str) -> exp.Bracket:
        return exp.Bracket(
            this=_c(column, "x"),
            expressions=[exp.Slice(this=_frag("x.need_from - x.base"), expression=_frag("x.last_pos - x.base"))],
        )

    unnest = exp.Unnest(
        expressions=[tail_slice("tail_step"), tail_slice("tail_time"), tail_slice("tail_value")],
        alias=exp.TableAlias(this=exp.to_identifier("t"), columns=[exp.to_identifier(n) for n in ("step", "time", "value")]),
        offset=exp.to_identifier("ord"),
    )
    from_tail = (
        exp.select(
            _c("run_pk", "x"),
            _c("key_id", "x"),
            _c("first_pos", "x"),
            _frag("x.need_from - 1 + t.ord").as_("pos"),
            _c("step", "t"),
            _c("time", "t"),
            _c("value", "t"),
        )
        .from_(exp.to_table("series").as_("x"))
        .join(exp.Lateral(this=unnest), join_type="CROSS")
        .where(_frag("x.need_from > x.base"))
    )
    # The correlated LIMIT reads exactly the values from need_from to the newest one.
    history = _frag(
        "SELECT x.n_finite + 1 - ROW_NUMBER() OVER (ORDER BY m.seq DESC) AS pos, m.step, m.time, m.value "
        f"FROM {table} AS m "
        "WHERE m.run_pk = x.run_pk AND m.key_id = x.key_id "
        "AND m.value < CAST('Infinity' AS DOUBLE PRECISION) AND m.value > CAST('-Infinity' AS DOUBLE PRECISION) "
        "ORDER BY m.seq DESC LIMIT x.n_finite - x.need_from + 1"
    )
    from_table = (
        exp.select(
            _c("run_pk", "x"),
            _c("key_id", "x"),
            _c("first_pos", "x"),
            _c("pos", "h"),
            _c("step", "h"),
            _c("time", "h"),
            _c("value", "h"),
        )
        .from_(exp.to_table("series").as_("x"))
        .join(exp.Lateral(this=exp.paren(history), alias=exp.TableAlias(this=exp.to_identifier("h"))), join_type="CROSS")
        .where(_frag("x.need_from <= x.base AND h.pos <= x.last_pos"))
    )
    return exp.union(from_tail, from_table, distinct=False)


def _window(start: exp.Expression, end: exp.Expression | str = "CURRENT ROW", end_side: str | None = None) -> exp.WindowSpec:
    return exp.WindowSpec(kind="ROWS", start=start, start_side="PRECEDING", end=end, end_side=end_side)


def _over(func: exp.Expression, spec: exp.WindowSpec) -> exp.Window:
    return exp.Window(
        this=func,
        partition_by=[_c("run_pk", "v")],
        order=exp.Order(expressions=[exp.Ordered(this=_c("pos", "v"))]),
        spec=spec,
    )


# The columns every value carries from `vals` into the window step.
_VALUE_COLUMNS = tuple(_c(name, "v") for name in ("run_pk", "key_id", "first_pos", "pos", "step", "time", "value"))


def _threshold_windows(event: RunMetricThreshold, params: dict[str, Any]) -> tuple[exp.Select, exp.Expression]:
    params |= {"window": event.window, "window_preceding": event.window - 1, "span": event.window}
    spec = _window(_p("window_preceding"))
    win = exp.select(
        *_VALUE_COLUMNS,
        _over(exp.func(event.aggregation, _c("value", "v")), spec).as_("aggregate"),
        _over(exp.func("array_agg", _c("value", "v")), spec).as_("window_values"),
        exp.Null().as_("prior_aggregate"),
        exp.cast(exp.Null(), "DOUBLE PRECISION[]").as_("prior_values"),
    ).from_(exp.to_table("vals").as_("v"))
    params["threshold"] = event.threshold
    condition = _COMPARISONS[event.operator](this=_c("aggregate", "w"), expression=_p("threshold"))
    return win, exp.and_(exp.GTE(this=_c("pos", "w"), expression=_p("window")), condition)


def _change_windows(event: RunMetricChange, params: dict[str, Any]) -> tuple[exp.Select, exp.Expression]:
    span = event.current_window + event.prior_window
    params |= {
        "span": span,
        "current_preceding": event.current_window - 1,
        "current_window": event.current_window,
        "span_preceding": span - 1,
    }
    current = _window(_p("current_preceding"))
    prior = _window(_p("span_preceding"), end=_p("current_window"), end_side="PRECEDING")
    agg = event.aggregation
    win = exp.select(
        *_VALUE_COLUMNS,
        _over(exp.func(agg, _c("value", "v")), current).as_("current_aggregate"),
        _over(exp.func("array_agg", _c("value", "v")), current).as_("window_values"),
        _over(exp.func(agg, _c("value", "v")), prior).as_("prior_aggregate"),
        _over(exp.func("array_agg", _c("value", "v")), prior).as_("prior_values"),
    ).from_(exp.to_table("vals").as_("v"))
    difference = _frag("w.current_aggregate - w.prior_aggregate")
    if event.change == "relative":
        # no trigger when prior = 0: NULLIF makes d NULL, and NULL never satisfies the condition
        difference = exp.Div(this=exp.paren(difference), expression=_frag("NULLIF(ABS(w.prior_aggregate), 0)"))
    params["amount"] = event.amount
    return win, difference


def _change_condition(event: RunMetricChange) -> exp.Expression:
    d = _c("aggregate", "c")
    if event.direction == "increase":
        cond: exp.Expression = exp.GTE(this=d, expression=_p("amount"))
    elif event.direction == "decrease":
        cond = exp.GTE(this=exp.Neg(this=d), expression=_p("amount"))
    else:
        cond = exp.GTE(this=exp.Abs(this=d), expression=_p("amount"))
    return exp.and_(exp.GTE(this=_c("pos", "c"), expression=_p("span")), cond)


_OUTPUT = ("run_pk", "key_id", "pos", "step", "time", "value", "aggregate", "window_values", "prior_aggregate", "prior_values")


def compile_metric(automation: Automation, mode: Mode = "live") -> CompiledQuery:
    event = automation.event
    assert isinstance(event, (RunMetricThreshold, RunMetricChange))
    params: dict[str, Any] = {"metric": event.metric}
    table = metric_table(event.metric)

    if isinstance(event, RunMetricThreshold):
        windows, condition = _threshold_windows(event, params)
        final = (
            exp.select(*(_c(name, "w") for name in _OUTPUT))
            .from_(exp.to_table("win").as_("w"))
            .where(_frag("w.pos >= w.first_pos"))
            .where(condition)
        )
        alias = "w"
    else:
        windows, difference = _change_windows(event, params)
        changes = exp.select(
            *(_c(name, "w") for name in ("run_pk", "key_id", "first_pos", "pos", "step", "time", "value", "window_values", "prior_aggregate", "prior_values")),
            difference.as_("aggregate"),
            _c("current_aggregate", "w"),
        ).from_(exp.to_table("win").as_("w"))
        final = (
            exp.select(*(_c(name, "c") for name in _OUTPUT), _c("current_aggregate", "c"))
            .from_(changes.subquery("c"))
            .where(_frag("c.pos >= c.first_pos"))
            .where(_change_condition(event))
        )
        alias = "c"

    if mode == "history":
        final = final.where(exp.GTE(this=_c("time", alias), expression=exp.cast(_p("since"), "TIMESTAMPTZ")))
    final = final.order_by(_c("run_pk", alias), _c("pos", alias))

    query = (
        final.with_("pending", as_=_pending(mode))
        .with_("series", as_=_series(automation, params))
        .with_("vals", as_=_values(table))
        .with_("win", as_=windows)
    )
    return CompiledQuery(automation.name, "metric", mode, query.sql(dialect=DIALECT), params)


# --------------------------------------------------------------------------------------
# event rules
# --------------------------------------------------------------------------------------
_EVENT_OUTPUT = (
    "id", "time", "type", "author", "project_id", "run_pk", "collection_id", "version_id",
    "registry_id", "registry_collection_id", "link_id", "details",
)


def _collection_scope(select: exp.Select, automation: Automation, params: dict[str, Any]) -> exp.Select:
    scope = automation.scope
    if scope.project is not None:
        entity, project = scope.project.split("/", 1)
        params["entity"], params["project"] = entity, project
        select = (
            select.join(exp.to_table("projects").as_("pr"), on=_frag("pr.id = e.project_id"))
            .where(exp.EQ(this=_c("entity", "pr"), expression=_p("entity")))
            .where(exp.EQ(this=_c("name", "pr"), expression=_p("project")))
            # project scope: the project's own collections, not registry-side alias moves
            .where(_frag("e.registry_id IS NULL"))
        )
        if scope.collection is not None or scope.collection_regex is not None:
            select = select.join(exp.to_table("artifact_collections").as_("ac"), on=_frag("ac.id = e.collection_id"))
        if scope.collection is not None:
            params["collection"] = scope.collection
            select = select.where(exp.EQ(this=_c("name", "ac"), expression=_p("collection")))
        if scope.collection_regex is not None:
            params["collection_regex"] = scope.collection_regex
            select = select.where(exp.RegexpLike(this=_c("name", "ac"), expression=_p("collection_regex")))
        return select
    params["registry"] = scope.registry
    select = select.join(exp.to_table("registries").as_("rg"), on=_frag("rg.id = e.registry_id")).where(
        exp.EQ(this=_c("name", "rg"), expression=_p("registry"))
    )
    if scope.collection is not None:
        params["collection"] = scope.collection
        select = select.join(
            exp.to_table("registry_collections").as_("rc"), on=_frag("rc.id = e.registry_collection_id")
        ).where(exp.EQ(this=_c("name", "rc"), expression=_p("collection")))
    return select


def compile_event(automation: Automation, mode: Mode = "live") -> CompiledQuery:
    event = automation.event
    params: dict[str, Any] = {}
    select = exp.select(*(_c(name, "e") for name in _EVENT_OUTPUT)).from_(exp.to_table("events").as_("e"))
    if mode == "live":
        select = select.where(exp.GTE(this=_c("xid", "e"), expression=_xid(_p("from_xid"))))
        select = select.where(exp.LT(this=_c("xid", "e"), expression=_xid(_p("to_xid"))))
    else:
        select = select.where(exp.GTE(this=_c("time", "e"), expression=exp.cast(_p("since"), "TIMESTAMPTZ")))
    params["event_kind"] = event.type if not isinstance(event, RunState) else "run_state"
    select = select.where(exp.EQ(this=_c("type", "e"), expression=_p("event_kind")))

    if isinstance(event, RunState):
        # `killed` can never be among the states (the model refuses it), so it never fires.
        params["states"] = list(event.states)
        select = select.where(
            exp.EQ(this=_frag("e.details ->> 'to'"), expression=exp.Any(this=exp.paren(exp.cast(_p("states"), "TEXT[]"))))
        )
        select = _run_scope(select, automation, params, "e")
    else:
        select = _collection_scope(select, automation, params)
        if isinstance(event, ArtifactVersionCreated) and event.collection_type is not None:
            params["collection_type"] = event.collection_type
            select = select.where(
                exp.EQ(this=_frag("e.details ->> 'collection_type'"), expression=_p("collection_type"))
            )
        elif isinstance(event, ArtifactAliasAdded):
            params["alias_regex"] = event.alias_regex
            select = select.where(exp.RegexpLike(this=_frag("e.details ->> 'alias'"), expression=_p("alias_regex")))
        elif isinstance(event, ArtifactTagAdded):
            params["tag_regex"] = event.tag_regex
            select = select.where(exp.RegexpLike(this=_frag("e.details ->> 'tag'"), expression=_p("tag_regex")))
        elif isinstance(event, RegistryVersionLinked) and event.alias_regex is not None:
            # the link matches when an alias of the linked version in that registry collection matches
            params["alias_regex"] = event.alias_regex
            aliases = (
                exp.select(exp.Literal.number(1))
                .from_(exp.to_table("registry_aliases").as_("ra"))
                .where(_frag("ra.link_id = e.link_id"))
                .where(exp.RegexpLike(this=_c("alias", "ra"), expression=_p("alias_regex")))
            )
            select = select.where(exp.Exists(this=aliases))
    select = select.order_by(_c("id", "e"))
    return CompiledQuery(automation.name, "event", mode, select.sql(dialect=DIALECT), params)


def compile_rule(automation: Automation, mode: Mode = "live") -> CompiledQuery:
    """The query of any rule (see the module docstring for the two modes)."""
    if isinstance(automation.event, (RunMetricThreshold, RunMetricChange)):
        return compile_metric(automation, mode)
    return compile_event(automation, mode)
