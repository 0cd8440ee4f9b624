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

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

import sqlglot
from sqlglot import exp

from engine.names import is_system_metric
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
    return "system_metrics" if is_system_metric(metric) else "metric_points"


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
                # the highest seq of these batches (unknown if a batch predates migration 0006)
                _frag("CASE WHEN COUNT(b.seq_bound) = COUNT(*) THEN MAX(b.seq_bound) END").as_("seq_bound"),
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
            exp.cast(exp.Null(), "BIGINT").as_("seq_bound"),
        )
        .from_(exp.to_table("series_state").as_("s"))
        .join(exp.to_table("metric_keys").as_("k"), on=_frag("k.id = s.key_id"))
        .where(exp.EQ(this=_c("key", "k"), expression=_p("metric")))
    )


def _run_scope(
    select: exp.Select, automation: Automation, params: dict[str, Any], run_alias: str
) -> exp.Select:
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


@dataclass(frozen=True)
class _Segment:
    """A stretch of a window to reduce: the values `back_from`..`back_to` positions before
    the evaluated one (0 is the value itself), reduced with `aggregation`."""

    aggregation: str
    back_from: int
    back_to: int


def _segments(
    events: Sequence[RunMetricThreshold | RunMetricChange],
) -> tuple[list[_Segment], list[tuple[int, int | None]]]:
    """The distinct segments of a group's windows, and per rule the (1-based) index of its
    current window's segment and of its prior window's (None for a threshold rule). Rules
    reducing the same stretch the same way share it."""
    segments: list[_Segment] = []

    def index(segment: _Segment) -> int:
        if segment not in segments:
            segments.append(segment)
        return segments.index(segment) + 1

    per_rule: list[tuple[int, int | None]] = []
    for event in events:
        if isinstance(event, RunMetricThreshold):
            per_rule.append((index(_Segment(event.aggregation, 0, event.window - 1)), None))
        else:
            size, prior = event.current_window, event.prior_window
            per_rule.append(
                (
                    index(_Segment(event.aggregation, 0, size - 1)),
                    index(_Segment(event.aggregation, size, size + prior - 1)),
                )
            )
    return segments, per_rule


def span_of(automation: Automation) -> int:
    """How many values a metric rule's windows cover (its window, or current + prior)."""
    event = automation.event
    if isinstance(event, RunMetricThreshold):
        return event.window
    assert isinstance(event, RunMetricChange)
    return event.current_window + event.prior_window


# The project of each rule of a group, in rule order (NULL: no such project): an array the
# final select indexes by rule number, like the rules' other parameters.
_SCOPES = """
SELECT ARRAY_AGG(pr.id ORDER BY r.rule) AS project_ids
FROM UNNEST(CAST(%(entity)s AS TEXT[]), CAST(%(project)s AS TEXT[])) WITH ORDINALITY AS r(entity, project, rule)
LEFT JOIN projects AS pr ON pr.entity = r.entity AND pr.name = r.project
"""


def _series() -> exp.Select:
    """Pending series of runs in the project of some rule of the group, with what is needed
    to slice their tail: `base` is the position just before tail[1]; `need_from` the first
    position the longest window of the group needs. (The run filters are applied per rule,
    in the final select.)"""
    return (
        exp.select(
            _c("run_pk", "p"),
            _c("key_id", "p"),
            _c("first_pos", "p"),
            _c("last_pos", "p"),
            _c("seq_bound", "p"),
            _c("n_finite", "s"),
            _frag("s.n_finite - CARDINALITY(s.tail_value)").as_("base"),
            exp.func("greatest", exp.Literal.number(1), _frag("p.first_pos - %(span_max)s + 1")).as_(
                "need_from"
            ),
            _c("tail_step", "s"),
            _c("tail_time", "s"),
            _c("tail_value", "s"),
            _c("project_id", "r"),
            _c("user_name", "r"),
            _c("name", "r").as_("run_name"),
        )
        .from_(exp.to_table("pending").as_("p"))
        .join(exp.to_table("series_state").as_("s"), on=_frag("s.key_id = p.key_id AND s.run_pk = p.run_pk"))
        .join(exp.to_table("runs").as_("r"), on=_frag("r.id = p.run_pk"))
        .where(_frag("r.project_id IN (SELECT UNNEST(sc.project_ids) FROM scopes AS sc)"))
    )


_SERIES_OUT = ("run_pk", "key_id", "first_pos", "last_pos", "project_id", "user_name", "run_name")


def _tail_values() -> exp.Select:
    """`_values` for series whose tail reaches back far enough (the others are left out:
    see `_short_tails`)."""
    return (
        exp.select(
            *(_c(name, "x") for name in _SERIES_OUT),
            _c("base", "x").as_("off"),
            _c("tail_step", "x").as_("steps"),
            _c("tail_time", "x").as_("times"),
            _c("tail_value", "x").as_("vals"),
        )
        .from_(exp.to_table("series").as_("x"))
        .where(_frag("x.need_from > x.base"))
    )


def _short_tails() -> exp.Select:
    """One row, `rule` 0, when some pending series' tail does not reach back far enough for
    the group's windows: the evaluator then runs the query that reads the hypertable."""
    columns = [
        (exp.Literal.number(0) if name == "rule" else exp.Null()).as_(name) for name in _OUTPUT_COLUMNS
    ]
    return (
        exp.select(*columns)
        .from_(exp.to_table("series").as_("x"))
        .where(_frag("x.need_from <= x.base"))
        .limit(1)
    )


def _values(table: str) -> exp.Select:
    """Per pending series: arrays holding its finite values from position need_from to (at
    least) last_pos, and `off`, such that the value at position pos is at index pos - off.
    They are the tail itself when it reaches back far enough; else (rarely) they are read
    from the hypertable in one pass, newest first through the (run_pk, key_id, seq) index,
    the correlated LIMIT reading exactly the values from need_from to the newest one. The
    read is gated by a one-time filter, so the hypertable is not touched (and the plain
    array_agg calls see no row) for a series whose tail suffices. The read starts at the
    pending batches' `seq_bound` (position last_pos), not at the newest value: evaluating
    the first part of a long backlog reads only that part."""
    in_tail = _frag("x.need_from > x.base")
    newest = (
        exp.select(_c("seq", "m"), _c("step", "m"), _c("time", "m"), _c("value", "m"))
        .from_(exp.to_table(table).as_("m"))
        .where(_frag("m.run_pk = x.run_pk AND m.key_id = x.key_id"))
        .where(_frag("m.seq <= COALESCE(x.seq_bound, 9223372036854775807)"))
        # finite values only: the definition ingest and explain use too (migration 0008)
        .where(exp.func("is_finite_value", _c("value", "m")))
        # DESC NULLS FIRST is the index's order (sqlglot would write NULLS LAST otherwise)
        .order_by(exp.Ordered(this=_c("seq", "m"), desc=True, nulls_first=True))
        .limit(_frag("CASE WHEN x.seq_bound IS NULL THEN x.n_finite ELSE x.last_pos END - x.need_from + 1"))
    )
    # oldest first; array_agg without its own ORDER BY keeps this order (and needs no sort
    # state per call, which made the gated branch cost ~35 us per series)
    oldest_first = (
        exp.select(_c("step", "n"), _c("time", "n"), _c("value", "n"))
        .from_(newest.subquery("n"))
        .order_by(_c("seq", "n"))
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
            *(_c(name, "x") for name in _SERIES_OUT),
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
        # OFFSET 0: a subquery the planner keeps whole, so the arrays (and their hypertable
        # reads) are computed once per series. Flattened into `points`, the planner may
        # generate the positions first and read the arrays again for each one: quadratic
        # in a backlog (1M points: minutes instead of seconds). A MATERIALIZED CTE fences
        # it too, but copies every series' arrays into a tuplestore (~8 % slower).
        .offset(0)
    )


_POINTS_OUT = (
    "run_pk",
    "key_id",
    "project_id",
    "user_name",
    "run_name",
    "steps",
    "times",
    "vals",
    "pos",
    "i",
)


def _points() -> exp.Expression:
    """The values to evaluate: every new position where the shortest span of the group is
    full, with its index `i` in the arrays of `vals`."""
    return _frag(
        "SELECT v.run_pk, v.key_id, v.project_id, v.user_name, v.run_name, v.steps, v.times, v.vals, e.pos, "
        "e.pos - v.off AS i "
        "FROM vals AS v CROSS JOIN LATERAL GENERATE_SERIES(GREATEST(v.first_pos, %(span_min)s), v.last_pos) AS e(pos)"
    )


def _reduce(segments: Sequence[_Segment], params: dict[str, Any]) -> exp.Lateral:
    """Every segment of the group reduced in ONE pass over the last `span_max` values of
    each evaluated position: one aggregate per segment, each filtered to its stretch
    (`back` counts positions back from the evaluated value). A subquery per segment would
    cost a subplan call per segment and value (~3x slower with 16 segments). UNNEST and
    GENERATE_SERIES in a select list run in lockstep, streamed (ProjectSet)."""
    aggregates = []
    for k, segment in enumerate(segments, start=1):
        params[f"segment_{k}_to"] = segment.back_to
        within: exp.Expression = exp.LTE(this=_c("back", "w"), expression=_p(f"segment_{k}_to"))
        if segment.back_from > 0:  # back >= 0 always holds: one comparison less per value and segment (~25 %)
            params[f"segment_{k}_from"] = segment.back_from
            within = exp.Between(
                this=_c("back", "w"), low=_p(f"segment_{k}_from"), high=_p(f"segment_{k}_to")
            )
        aggregates.append(
            exp.Filter(this=exp.func(segment.aggregation, _c("v", "w")), expression=exp.Where(this=within))
        )
    stretch = _frag(
        "SELECT UNNEST(p.vals[p.i - %(span_max)s + 1:p.i]) AS v, "
        "GENERATE_SERIES(LEAST(p.i, %(span_max)s) - 1, 0, -1) AS back"
    )
    reduce = exp.select(exp.Array(expressions=aggregates).as_("aggregates")).from_(stretch.subquery("w"))
    return exp.Lateral(this=exp.paren(reduce), alias=exp.TableAlias(this=exp.to_identifier("a")))


@dataclass(frozen=True)
class _Test:
    """What a *class* of rules compares with their bounds at each evaluated value: `d` (a
    threshold rule's aggregate, or a change rule's change between two segments), turned
    (`turn`): `-d` for rules that fire below their bound, |d| for a change in any direction.
    Every rule of a class fires only if test >= its key (the bound, or minus the bound),
    so with the keys sorted, the rules that can fire at a value are a prefix of the class,
    found by a binary search (WIDTH_BUCKET): the work per value follows the classes (at
    most segments x 2 for thresholds) and the rules that can fire, not the rules."""

    current: int  # segment (1-based)
    prior: int | None
    relative: bool
    turn: Literal["", "-", "abs"]

    def sql(self) -> str:
        current = f"a.aggregates[{self.current}]"
        d = current
        if self.prior is not None:
            prior = f"a.aggregates[{self.prior}]"
            d = (
                f"({current} - {prior}) / NULLIF(ABS({prior}), 0)"
                if self.relative
                else f"{current} - {prior}"
            )
        return {"": f"({d})", "-": f"-({d})", "abs": f"ABS({d})"}[self.turn]


def _class_of(
    event: RunMetricThreshold | RunMetricChange, current: int, prior: int | None
) -> tuple[_Test, float]:
    """A rule's class and its key in it: the rule can fire at a value only if the class's
    test is >= the key (a superset of its condition; the exact condition is checked after)."""
    if isinstance(event, RunMetricThreshold):
        if event.operator in ("<", "<="):
            return _Test(current, None, False, "-"), -event.threshold
        if event.operator == "!=":  # fires almost always: a candidate at every value
            return _Test(current, None, False, ""), -math.inf
        return _Test(current, None, False, ""), event.threshold  # >, >=, ==
    turn: Literal["", "-", "abs"] = {"increase": "", "decrease": "-", "any": "abs"}[event.direction]  # type: ignore[assignment]
    return _Test(current, prior, event.change == "relative", turn), event.amount


def _candidates(tests: Sequence[_Test], params: dict[str, Any]) -> exp.Expression:
    """Per evaluated value, the rule numbers that can fire there (NULL when none can, the
    common case, decided by one comparison per class with its lowest key)."""
    any_can = " OR ".join(f"{t.sql()} >= %(class_{n}_min)s" for n, t in enumerate(tests, start=1))
    prefixes = " || ".join(
        f"(CAST(%(class_{n}_rules)s AS INT[]))"
        f"[1:WIDTH_BUCKET({t.sql()}, CAST(%(class_{n}_keys)s AS DOUBLE PRECISION[]))]"
        for n, t in enumerate(tests, start=1)
    )
    return _frag(f"CASE WHEN {any_can} THEN {prefixes} END")


def _class_params(
    events: Sequence[RunMetricThreshold | RunMetricChange], per_rule: Sequence[tuple[int, int | None]]
) -> tuple[list[_Test], dict[str, Any]]:
    """The classes of a group's rules and, per class, its keys in ascending order with the
    rule numbers in the same order, and the lowest key."""
    members: dict[_Test, list[tuple[float, int]]] = {}
    for n, (event, (current, prior)) in enumerate(zip(events, per_rule), start=1):
        test, key = _class_of(event, current, prior)
        members.setdefault(test, []).append((key, n))
    params: dict[str, Any] = {}
    for c, rules in enumerate(members.values(), start=1):
        rules.sort()
        params[f"class_{c}_keys"] = [key for key, _ in rules]
        params[f"class_{c}_rules"] = [n for _, n in rules]
        params[f"class_{c}_min"] = rules[0][0]
    return list(members), params


# A candidate rule's parameters, picked from the group's arrays by its number (no join: the
# planner would be free to put the rules outside the values and reduce every window once per
# rule). OFFSET 0: picked once per candidate, not once per use.
_RULE = """
SELECT k.rule, sc.project_ids[k.rule] AS project_id, (CAST(%(run_user)s AS TEXT[]))[k.rule] AS run_user,
       (CAST(%(run_name_regex)s AS TEXT[]))[k.rule] AS run_name_regex, (CAST(%(span)s AS INT[]))[k.rule] AS span,
       (CAST(%(size)s AS INT[]))[k.rule] AS size, (CAST(%(current_segment)s AS INT[]))[k.rule] AS current_segment,
       (CAST(%(prior_segment)s AS INT[]))[k.rule] AS prior_segment, (CAST(%(relative)s AS BOOLEAN[]))[k.rule] AS relative,
       (CAST(%(direction)s AS TEXT[]))[k.rule] AS direction, (CAST(%(operator)s AS TEXT[]))[k.rule] AS operator,
       (CAST(%(bound)s AS DOUBLE PRECISION[]))[k.rule] AS bound,
       (CAST(%(automation_id)s AS BIGINT[]))[k.rule] AS automation_id,
       (CAST(%(cooldown_us)s AS BIGINT[]))[k.rule] AS cooldown_us
OFFSET 0
"""

# Per candidate (value, rule): the rule's d, the aggregate (threshold) or the change
# between its current and prior aggregates (relative: no d when the prior is 0, and NULL
# never satisfies a condition).
_MATCH = """
SELECT c.aggregates[ru.current_segment] AS current_aggregate, c.aggregates[ru.prior_segment] AS prior_aggregate,
       CASE WHEN ru.prior_segment IS NULL THEN c.aggregates[ru.current_segment]
            WHEN ru.relative THEN (c.aggregates[ru.current_segment] - c.aggregates[ru.prior_segment])
                                  / NULLIF(ABS(c.aggregates[ru.prior_segment]), 0)
            ELSE c.aggregates[ru.current_segment] - c.aggregates[ru.prior_segment] END AS d
"""

# The exact condition of a candidate: its scope, run filter and full windows, then
# thresholds compare d with the rule's operator; change rules test d >= amount
# (increase), -d >= amount (decrease) or |d| >= amount (any).
_CONDITION = """
ru.project_id = c.project_id AND c.pos >= ru.span
AND (ru.run_user IS NULL OR ru.run_user = c.user_name)
AND (ru.run_name_regex IS NULL OR c.run_name ~ ru.run_name_regex)
AND CASE ru.operator
    WHEN '>' THEN t.tested > ru.bound WHEN '>=' THEN t.tested >= ru.bound
    WHEN '<' THEN t.tested < ru.bound WHEN '<=' THEN t.tested <= ru.bound
    WHEN '==' THEN t.tested = ru.bound ELSE t.tested <> ru.bound END
"""

_TESTED = "SELECT CASE ru.direction WHEN 'decrease' THEN -o.d WHEN 'any' THEN ABS(o.d) ELSE o.d END AS tested"

# Live: the time of the automation's last firing for the run (the cooldown's start). The
# value times of an automation's firings in a run only increase (each is at least the
# cooldown after the one before), so it is the highest one: found through the cooldown index.
_LAST_FIRED = """
SELECT tr.value_time FROM triggers AS tr
WHERE tr.automation_id = ru.automation_id AND tr.run_pk = c.run_pk
ORDER BY tr.value_time DESC LIMIT 1
"""

# A value within the cooldown of the last firing can never fire (the cooldown only moves
# forward): it is not returned. The evaluator applies the cooldown itself to what remains
# (several values of a run in one tick), starting from `last_fired`.
_COOLED = "ru.cooldown_us IS NULL OR lf.value_time IS NULL OR c.times[c.i] >= lf.value_time + ru.cooldown_us * INTERVAL '1 microsecond'"

# {window} and {prior} are the window slices, or (live) their text: the evaluator passes
# them on to the trigger rows as they are (converting them to Python floats and back to
# JSON cost ~0.2 ms per trigger).
_OUTPUT = """
SELECT c.run_pk, c.key_id, c.pos, c.steps[c.i] AS step, c.times[c.i] AS time, c.vals[c.i] AS value,
       o.d AS aggregate, {window} AS window_values, o.prior_aggregate,
       CASE WHEN ru.prior_segment IS NOT NULL THEN {prior} END AS prior_values,
       o.current_aggregate, ru.rule
FROM candidates AS c
CROSS JOIN scopes AS sc
CROSS JOIN LATERAL UNNEST(c.candidates) AS k(rule)
"""

_OUTPUT_COLUMNS = (
    "run_pk",
    "key_id",
    "pos",
    "step",
    "time",
    "value",
    "aggregate",
    "window_values",
    "prior_aggregate",
    "prior_values",
    "current_aggregate",
    "rule",
    "last_fired",
)


def _rule_params(automations: Sequence[Automation], ids: Sequence[int | None]) -> dict[str, Any]:
    """The rules of a group as parallel arrays (one element per rule)."""
    columns: dict[str, list[Any]] = {
        name: []
        for name in (
            "entity",
            "project",
            "run_user",
            "run_name_regex",
            "span",
            "size",
            "relative",
            "direction",
            "operator",
            "bound",
            "automation_id",
            "cooldown_us",
        )
    }
    for automation, automation_id in zip(automations, ids):
        event = automation.event
        entity, project = automation.scope.project.split("/", 1)
        run_filter = automation.run_filter
        threshold = isinstance(event, RunMetricThreshold)
        cooldown = automation.cooldown
        row = {
            "entity": entity,
            "project": project,
            "run_user": run_filter.user if run_filter is not None else None,
            "run_name_regex": run_filter.name_regex if run_filter is not None else None,
            "span": span_of(automation),
            "size": event.window if threshold else event.current_window,
            "relative": (not threshold) and event.change == "relative",
            "direction": "value"
            if threshold
            else {"increase": "value", "decrease": "decrease", "any": "any"}[event.direction],
            "operator": event.operator if threshold else ">=",
            "bound": event.threshold if threshold else event.amount,
            "automation_id": automation_id,
            "cooldown_us": None if cooldown is None else cooldown // timedelta(microseconds=1),
        }
        for name, value in row.items():
            columns[name].append(value)
    return columns


def compile_metrics(
    automations: Sequence[Automation],
    mode: Mode = "live",
    *,
    tails_only: bool = False,
    automation_ids: Sequence[int] | None = None,
) -> CompiledQuery:
    """One query evaluating every metric rule of `automations` (all on the same metric).

    Each evaluated value's windows are reduced once for the whole group (`_reduce`); the
    rules that can fire there are found per class of rules by a binary search on their
    sorted bounds (`_Test`), and only those are matched against their scope, run filter
    and exact condition. Rows carry `rule`, the rule's 1-based position in `automations`,
    and come ordered by rule, run and position (the cooldown's order).

    Live mode: `automation_ids` (the stored ids, in the same order) let the query look up
    each automation's last firing per run; values within its cooldown are not returned,
    and each row carries that firing's time as `last_fired` (where the evaluator's
    cooldown starts). Without them (to show the query), nothing has fired yet.

    `tails_only` (live mode): the query reads the per-series tails only, and returns a row
    with `rule` 0 (first) instead of evaluating a series whose tail is too short. It has no
    hypertable branch, whose mere set-up costs ~0.7 ms per run with 36 chunks (and grows
    with them); the evaluator runs the full query when that row comes back."""
    events = [a.event for a in automations]
    assert events and all(isinstance(e, (RunMetricThreshold, RunMetricChange)) for e in events)
    assert mode == "live" or not tails_only
    metrics = {e.metric for e in events}
    assert len(metrics) == 1, f"one metric per group, not {sorted(metrics)}"
    ids: Sequence[int | None] = automation_ids if automation_ids is not None else [None] * len(automations)
    assert len(ids) == len(automations)
    segments, per_rule = _segments(events)
    params: dict[str, Any] = {"metric": metrics.pop()} | _rule_params(automations, ids)
    params["current_segment"] = [current for current, _ in per_rule]
    params["prior_segment"] = [prior for _, prior in per_rule]
    params["span_max"] = max(params["span"])
    params["span_min"] = min(params["span"])
    tests, class_params = _class_params(events, per_rule)
    params |= class_params
    # per evaluated value: its segments' aggregates and the rules that can fire there.
    # OFFSET 0: computed once per value, before the candidates are expanded.
    candidates = (
        exp.select(
            *(_c(name, "p") for name in _POINTS_OUT),
            _c("aggregates", "a"),
            _candidates(tests, params).as_("candidates"),
        )
        .from_(exp.to_table("points").as_("p"))
        .join(_reduce(segments, params), join_type="CROSS")
        .offset(0)
    )
    match = exp.Lateral(this=exp.paren(_frag(_MATCH)), alias=exp.TableAlias(this=exp.to_identifier("o")))
    tested = exp.Lateral(this=exp.paren(_frag(_TESTED)), alias=exp.TableAlias(this=exp.to_identifier("t")))
    rule = exp.Lateral(this=exp.paren(_frag(_RULE)), alias=exp.TableAlias(this=exp.to_identifier("ru")))
    window, prior = "c.vals[c.i - ru.size + 1:c.i]", "c.vals[c.i - ru.span + 1:c.i - ru.size]"
    if mode == "live":
        window, prior = f"CAST({window} AS TEXT)", f"CAST({prior} AS TEXT)"
    final: exp.Select = (
        _frag(_OUTPUT.format(window=window, prior=prior))
        .join(rule, join_type="CROSS")
        .join(match, join_type="CROSS")
        .join(tested, join_type="CROSS")
        .where(_frag(_CONDITION))
    )
    if mode == "live":
        last = exp.Lateral(
            this=exp.paren(_frag(_LAST_FIRED)), alias=exp.TableAlias(this=exp.to_identifier("lf"))
        )
        final = final.join(last, join_type="LEFT", on=exp.true()).where(_frag(_COOLED))
        final = final.select(_c("value_time", "lf").as_("last_fired"))
    else:
        final = final.where(
            exp.GTE(this=_frag("c.times[c.i]"), expression=exp.cast(_p("since"), "TIMESTAMPTZ"))
        )
        final = final.select(exp.cast(exp.Null(), "TIMESTAMPTZ").as_("last_fired"))
    result: exp.Query
    if tails_only:
        result = exp.union(final, _short_tails(), distinct=False).order_by("rule", "run_pk", "pos")
        values = _tail_values()
    else:
        result = final.order_by(_c("rule", "ru"), _c("run_pk", "c"), _c("pos", "c"))
        values = _values(metric_table(events[0].metric))
    query = (
        result.with_("scopes", as_=_frag(_SCOPES), materialized=True)
        .with_("pending", as_=_pending(mode))
        # NOT MATERIALIZED: read twice in tails_only mode, and a copy of its arrays is not wanted
        .with_("series", as_=_series(), materialized=False if tails_only else None)
        .with_("vals", as_=values)
        .with_("points", as_=_points())
        .with_("candidates", as_=candidates)
    )
    names = tuple(a.name for a in automations)
    return CompiledQuery(", ".join(names), "metric", mode, query.sql(dialect=DIALECT), params, names)


# --------------------------------------------------------------------------------------
# event rules
# --------------------------------------------------------------------------------------
_EVENT_OUTPUT = (
    "id",
    "time",
    "type",
    "author",
    "project_id",
    "run_pk",
    "collection_id",
    "version_id",
    "registry_id",
    "registry_collection_id",
    "link_id",
    "details",
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
            select = select.join(
                exp.to_table("artifact_collections").as_("ac"), on=_frag("ac.id = e.collection_id")
            )
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
            exp.EQ(
                this=_frag("e.details ->> 'to'"),
                expression=exp.Any(this=exp.paren(exp.cast(_p("states"), "TEXT[]"))),
            )
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
            select = select.where(
                exp.RegexpLike(this=_frag("e.details ->> 'alias'"), expression=_p("alias_regex"))
            )
        elif isinstance(event, ArtifactTagAdded):
            params["tag_regex"] = event.tag_regex
            select = select.where(
                exp.RegexpLike(this=_frag("e.details ->> 'tag'"), expression=_p("tag_regex"))
            )
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
        return compile_metrics([automation], mode)
    return compile_event(automation, mode)
