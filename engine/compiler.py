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
    """Join the run, and apply the scope and the run filter. The project is looked up once
    per query (a scalar subquery), not once per run."""
    entity, project = automation.scope.project.split("/", 1)
    params["entity"], params["project"] = entity, project
    select = select.join(exp.to_table("runs").as_("r"), on=_frag(f"r.id = {run_alias}.run_pk"))
    project_id = (
        exp.select(_c("id", "pr"))
        .from_(exp.to_table("projects").as_("pr"))
        .where(exp.EQ(this=_c("entity", "pr"), expression=_p("entity")))
        .where(exp.EQ(this=_c("name", "pr"), expression=_p("project")))
    )
    select = select.where(exp.EQ(this=_c("project_id", "r"), expression=project_id.subquery()))
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


def _values(table: str) -> exp.Select:
    """Per pending series: arrays holding its finite values from position need_from to (at
    least) last_pos, and `off`, such that the value at position pos is at index pos - off.
    They are the tail itself when it reaches back far enough; else (rarely) they are read
    from the hypertable in one pass, newest first through the (run_pk, key_id, seq) index,
    the correlated LIMIT reading exactly the values from need_from to the newest one. The
    read is gated by a one-time filter, so the hypertable is not touched (and the plain
    array_agg calls see no row) for a series whose tail suffices."""
    in_tail = _frag("x.need_from > x.base")
    newest = (
        exp.select(_c("seq", "m"), _c("step", "m"), _c("time", "m"), _c("value", "m"))
        .from_(exp.to_table(table).as_("m"))
        .where(_frag("m.run_pk = x.run_pk AND m.key_id = x.key_id"))
        .where(_frag("m.value < CAST('Infinity' AS DOUBLE PRECISION) AND m.value > CAST('-Infinity' AS DOUBLE PRECISION)"))
        # DESC NULLS FIRST is the index's order (sqlglot would write NULLS LAST otherwise)
        .order_by(exp.Ordered(this=_c("seq", "m"), desc=True, nulls_first=True))
        .limit(_frag("x.n_finite - x.need_from + 1"))
    )
    # oldest first; array_agg without its own ORDER BY keeps this order (and needs no sort
    # state per call, which made the gated branch cost ~35 us per series)
    oldest_first = exp.select(_c("step", "n"), _c("time", "n"), _c("value", "n")).from_(newest.subquery("n")).order_by(
        _c("seq", "n")
    )
    read = (
        exp.select(
            exp.func("array_agg", _c("step", "o")).as_("steps"),
            exp.func("array_agg", _c("time", "o")).as_("times"),
            exp.func("array_agg", _c("value", "o")).as_("vals"),
        )
        .from_(oldest_first.subquery("o"))
        .where(_frag("x.need_from <= x.base"))
    )

    def pick(tail: str, column: str) -> exp.Case:
        return exp.Case().when(in_tail, _c(tail, "x")).else_(_c(column, "h"))

    return (
        exp.select(
            _c("run_pk", "x"),
            _c("key_id", "x"),
            _c("first_pos", "x"),
            _c("last_pos", "x"),
            exp.Case().when(in_tail, _c("base", "x")).else_(_frag("x.need_from - 1")).as_("off"),
            pick("tail_step", "steps").as_("steps"),
            pick("tail_time", "times").as_("times"),
            pick("tail_value", "vals").as_("vals"),
        )
        .from_(exp.to_table("series").as_("x"))
        .join(
            exp.Lateral(this=exp.paren(read), alias=exp.TableAlias(this=exp.to_identifier("h"))),
            join_type="LEFT",
            on=exp.true(),
        )
    )


def _points() -> exp.Expression:
    """The values to evaluate: every new position whose windows are full (pos >= span), with
    its index `i` in the arrays of `vals`."""
    return _frag(
        "SELECT v.run_pk, v.key_id, v.steps, v.times, v.vals, e.pos, e.pos - v.off AS i "
        "FROM vals AS v CROSS JOIN LATERAL GENERATE_SERIES(GREATEST(v.first_pos, %(span)s), v.last_pos) AS e(pos)"
    )


def _slice(lo: str, hi: str) -> exp.Bracket:
    """p.vals[lo:hi]: the finite values of a window, its bounds relative to the index p.i."""
    return exp.Bracket(this=_c("vals", "p"), expressions=[exp.Slice(this=_frag(lo), expression=_frag(hi))])


def _reduce(aggregation: str, values: exp.Expression, column: str, alias: str) -> exp.Lateral:
    """A window's aggregate, computed once per evaluated value (a LATERAL rather than a
    scalar subquery, so that the condition and the output share it). Only the windows of
    the new values are reduced: window functions over `vals` would also reduce those of the
    values before them, each over its whole frame (float avg/min/max have no moving form).
    UNNEST in a select list streams the values (ProjectSet); in FROM it would first copy
    them into a tuplestore, which doubles the cost of a window."""
    values = exp.select(exp.Unnest(expressions=[values.copy()]).as_("u"))
    reduce = exp.select(exp.func(aggregation, _c("u", "s")).as_(column)).from_(values.subquery("s"))
    return exp.Lateral(this=exp.paren(reduce), alias=exp.TableAlias(this=exp.to_identifier(alias)))


_VALUE_OUTPUT = (
    _c("run_pk", "p"),
    _c("key_id", "p"),
    _c("pos", "p"),
    _frag("p.steps[p.i]").as_("step"),
    _frag("p.times[p.i]").as_("time"),
    _frag("p.vals[p.i]").as_("value"),
)


def _threshold(event: RunMetricThreshold, params: dict[str, Any]) -> tuple[exp.Select, exp.Expression]:
    params |= {"span": event.window, "window": event.window, "threshold": event.threshold}
    window = _slice("p.i - %(window)s + 1", "p.i")
    select = (
        exp.select(
            *_VALUE_OUTPUT,
            _c("aggregate", "a"),
            window.copy().as_("window_values"),
            exp.Null().as_("prior_aggregate"),
            exp.cast(exp.Null(), "DOUBLE PRECISION[]").as_("prior_values"),
        )
        .from_(exp.to_table("points").as_("p"))
        .join(_reduce(event.aggregation, window, "aggregate", "a"), join_type="CROSS")
    )
    condition = _COMPARISONS[event.operator](this=_c("aggregate", "a"), expression=_p("threshold"))
    return select, condition


def _change(event: RunMetricChange, params: dict[str, Any]) -> tuple[exp.Select, exp.Expression]:
    params |= {"span": event.current_window + event.prior_window, "current_window": event.current_window,
               "amount": event.amount}
    current = _slice("p.i - %(current_window)s + 1", "p.i")
    prior = _slice("p.i - %(span)s + 1", "p.i - %(current_window)s")
    difference = _frag("c.current_aggregate - r.prior_aggregate")
    if event.change == "relative":
        # no trigger when prior = 0: NULLIF makes d NULL, and NULL never satisfies the condition
        difference = exp.Div(this=exp.paren(difference), expression=_frag("NULLIF(ABS(r.prior_aggregate), 0)"))
    d = exp.paren(difference)
    select = (
        exp.select(
            *_VALUE_OUTPUT,
            d.copy().as_("aggregate"),
            current.copy().as_("window_values"),
            _c("prior_aggregate", "r"),
            prior.copy().as_("prior_values"),
            _c("current_aggregate", "c"),
        )
        .from_(exp.to_table("points").as_("p"))
        .join(_reduce(event.aggregation, current, "current_aggregate", "c"), join_type="CROSS")
        .join(_reduce(event.aggregation, prior, "prior_aggregate", "r"), join_type="CROSS")
    )
    if event.direction == "increase":
        condition: exp.Expression = exp.GTE(this=d.copy(), expression=_p("amount"))
    elif event.direction == "decrease":
        condition = exp.GTE(this=exp.Neg(this=d.copy()), expression=_p("amount"))
    else:
        condition = exp.GTE(this=exp.Abs(this=d.copy()), expression=_p("amount"))
    return select, condition


def compile_metric(automation: Automation, mode: Mode = "live") -> CompiledQuery:
    event = automation.event
    assert isinstance(event, (RunMetricThreshold, RunMetricChange))
    params: dict[str, Any] = {"metric": event.metric}
    if isinstance(event, RunMetricThreshold):
        final, condition = _threshold(event, params)
    else:
        final, condition = _change(event, params)
    final = final.where(condition)
    if mode == "history":
        final = final.where(exp.GTE(this=_frag("p.times[p.i]"), expression=exp.cast(_p("since"), "TIMESTAMPTZ")))
    final = final.order_by(_c("run_pk", "p"), _c("pos", "p"))
    query = (
        final.with_("pending", as_=_pending(mode))
        .with_("series", as_=_series(automation, params))
        # MATERIALIZED: computed once per series. Inlined, PostgreSQL would re-evaluate the
        # array expressions (and their hypertable reads) for every evaluated position of the
        # series, which is quadratic in a backlog (1M points: minutes instead of seconds).
        .with_("vals", as_=_values(metric_table(event.metric)), materialized=True)
        .with_("points", as_=_points())
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
