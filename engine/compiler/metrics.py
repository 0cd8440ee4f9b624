"""Metric rules, compiled per group: the rules of one metric, evaluated by one query.

The query evaluates the per-value semantics of docs/rules.md: at every *new* finite value v_i
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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from sqlglot import exp

from engine.compiler.base import (
    DIALECT,
    CompiledQuery,
    Mode,
    at,
    col,
    frag,
    lateral,
    metric_table,
    param,
    xid,
)
from engine.compiler.kinds import MetricCondition, activity_key, metric_condition
from engine.rules import Automation


def _pending(mode: Mode) -> exp.Select:
    """Per series: the positions of the values to evaluate (first_pos..last_pos)."""
    if mode == "live":
        return (
            exp.select(
                col("run_pk", "b"),
                col("key_id", "b"),
                exp.func("min", col("first_pos", "b")).as_("first_pos"),
                exp.func("max", col("last_pos", "b")).as_("last_pos"),
                # the highest seq of these batches (unknown if a batch predates migration 0006)
                frag("CASE WHEN COUNT(b.seq_bound) = COUNT(*) THEN MAX(b.seq_bound) END").as_("seq_bound"),
            )
            .from_(exp.to_table("series_batches").as_("b"))
            .join(exp.to_table("metric_keys").as_("k"), on=col("id", "k").eq(col("key_id", "b")))
            .where(col("key", "k").eq(param("metric")))
            .where(col("xid", "b") >= xid(param("from_xid")))
            .where(col("xid", "b") < xid(param("to_xid")))
            .group_by(col("run_pk", "b"), col("key_id", "b"))
        )
    return (
        exp.select(
            col("run_pk", "s"),
            col("key_id", "s"),
            exp.Literal.number(1).as_("first_pos"),
            col("n_finite", "s").as_("last_pos"),
            exp.cast(exp.Null(), "BIGINT").as_("seq_bound"),
        )
        .from_(exp.to_table("series_state").as_("s"))
        .join(exp.to_table("metric_keys").as_("k"), on=col("id", "k").eq(col("key_id", "s")))
        .where(col("key", "k").eq(param("metric")))
    )


@dataclass(frozen=True)
class _Segment:
    """A stretch of a window to reduce: the values `back_from`..`back_to` positions before
    the evaluated one (0 is the value itself), reduced with `aggregation`."""

    aggregation: str
    back_from: int
    back_to: int


def _segments(
    conditions: Sequence[MetricCondition],
) -> tuple[list[_Segment], list[tuple[int, int | None]]]:
    """The distinct segments of a group's windows, and per rule the (1-based) index of its
    current window's segment and of its prior window's (None without one: a threshold).
    Rules reducing the same stretch the same way share it."""
    segments: list[_Segment] = []

    def index(segment: _Segment) -> int:
        if segment not in segments:
            segments.append(segment)
        return segments.index(segment) + 1

    per_rule: list[tuple[int, int | None]] = []
    for c in conditions:
        current = index(_Segment(c.aggregation, 0, c.size - 1))
        prior = index(_Segment(c.aggregation, c.size, c.span - 1)) if c.prior else None
        per_rule.append((current, prior))
    return segments, per_rule


def span_of(automation: Automation) -> int:
    """How many values a metric rule's windows cover (its window, or current + prior)."""
    return metric_condition(automation).span


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
            col("run_pk", "p"),
            col("key_id", "p"),
            col("first_pos", "p"),
            col("last_pos", "p"),
            col("seq_bound", "p"),
            col("n_finite", "s"),
            frag("s.n_finite - CARDINALITY(s.tail_value)").as_("base"),
            exp.func("greatest", exp.Literal.number(1), frag("p.first_pos - %(span_max)s + 1")).as_(
                "need_from"
            ),
            col("tail_step", "s"),
            col("tail_time", "s"),
            col("tail_value", "s"),
            col("project_id", "r"),
            col("user_name", "r"),
            col("name", "r").as_("run_name"),
        )
        .from_(exp.to_table("pending").as_("p"))
        .join(exp.to_table("series_state").as_("s"), on=frag("s.key_id = p.key_id AND s.run_pk = p.run_pk"))
        .join(exp.to_table("runs").as_("r"), on=col("id", "r").eq(col("run_pk", "p")))
        .where(frag("r.project_id IN (SELECT UNNEST(sc.project_ids) FROM scopes AS sc)"))
    )


_SERIES_OUT = ("run_pk", "key_id", "first_pos", "last_pos", "project_id", "user_name", "run_name")


def _tail_values() -> exp.Select:
    """`_values` for series whose tail reaches back far enough (the others are left out:
    see `_short_tails`)."""
    return (
        exp.select(
            *(col(name, "x") for name in _SERIES_OUT),
            col("base", "x").as_("off"),
            col("tail_step", "x").as_("steps"),
            col("tail_time", "x").as_("times"),
            col("tail_value", "x").as_("vals"),
        )
        .from_(exp.to_table("series").as_("x"))
        .where(frag("x.need_from > x.base"))
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
        .where(frag("x.need_from <= x.base"))
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
    in_tail = frag("x.need_from > x.base")
    newest = (
        exp.select(col("seq", "m"), col("step", "m"), col("time", "m"), col("value", "m"))
        .from_(exp.to_table(table).as_("m"))
        .where(frag("m.run_pk = x.run_pk AND m.key_id = x.key_id"))
        .where(frag("m.seq <= COALESCE(x.seq_bound, 9223372036854775807)"))
        # finite values only: the definition ingest and explain use too (migration 0008)
        .where(exp.func("is_finite_value", col("value", "m")))
        # DESC NULLS FIRST is the index's order (sqlglot would write NULLS LAST otherwise)
        .order_by(exp.Ordered(this=col("seq", "m"), desc=True, nulls_first=True))
        .limit(frag("CASE WHEN x.seq_bound IS NULL THEN x.n_finite ELSE x.last_pos END - x.need_from + 1"))
    )
    # oldest first; array_agg without its own ORDER BY keeps this order (and needs no sort
    # state per call, which made the gated branch cost ~35 us per series)
    oldest_first = (
        exp.select(col("step", "n"), col("time", "n"), col("value", "n"))
        .from_(newest.subquery("n"))
        .order_by(col("seq", "n"))
    )
    read = (
        exp.select(
            exp.func("array_agg", col("step", "o")).as_("steps"),
            exp.func("array_agg", col("time", "o")).as_("times"),
            exp.func("array_agg", col("value", "o")).as_("vals"),
        )
        .from_(oldest_first.subquery("o"))
        .where(frag("x.need_from <= x.base"))
    )

    def pick(tail: str, column: str) -> exp.Case:
        return exp.Case().when(in_tail, col(tail, "x")).else_(col(column, "h"))

    return (
        exp.select(
            *(col(name, "x") for name in _SERIES_OUT),
            exp.Case().when(in_tail, col("base", "x")).else_(frag("x.need_from - 1")).as_("off"),
            pick("tail_step", "steps").as_("steps"),
            pick("tail_time", "times").as_("times"),
            pick("tail_value", "vals").as_("vals"),
        )
        .from_(exp.to_table("series").as_("x"))
        .join(
            lateral(read, "h"),
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
    return frag(
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
        within: exp.Expression = col("back", "w") <= param(f"segment_{k}_to")
        if segment.back_from > 0:  # back >= 0 always holds: one comparison less per value and segment (~25 %)
            params[f"segment_{k}_from"] = segment.back_from
            within = col("back", "w").between(param(f"segment_{k}_from"), param(f"segment_{k}_to"))
        aggregates.append(
            exp.Filter(this=exp.func(segment.aggregation, col("v", "w")), expression=exp.Where(this=within))
        )
    stretch = frag(
        "SELECT UNNEST(p.vals[p.i - %(span_max)s + 1:p.i]) AS v, "
        "GENERATE_SERIES(LEAST(p.i, %(span_max)s) - 1, 0, -1) AS back"
    )
    reduce = exp.select(exp.Array(expressions=aggregates).as_("aggregates")).from_(
        exp.paren(stretch).as_("w")
    )
    return lateral(reduce, "a")


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

    def expression(self) -> exp.Expression:
        current = at(col("aggregates", "a"), self.current)
        d: exp.Expression = current
        if self.prior is not None:
            prior = at(col("aggregates", "a"), self.prior)
            difference = current - prior
            # typed: PostgreSQL's own division of two doubles (sqlglot would add a CAST)
            d = (
                exp.Div(
                    this=exp.paren(difference),
                    expression=exp.func("NULLIF", exp.func("ABS", prior), exp.Literal.number(0)),
                    typed=True,
                    safe=False,
                )
                if self.relative
                else difference
            )
        if self.turn == "abs":
            return exp.Abs(this=d)
        return exp.Neg(this=exp.paren(d)) if self.turn == "-" else exp.paren(d)


def _class_of(condition: MetricCondition, current: int, prior: int | None) -> tuple[_Test, float]:
    """A rule's class and its key in it: the rule can fire at a value only if the class's
    test is >= the key (a superset of its condition; the exact condition is checked after)."""
    if condition.operator in ("<", "<="):
        return _Test(current, prior, condition.relative, "-"), -condition.bound
    if condition.operator == "!=":  # fires almost always: a candidate at every value
        return _Test(current, prior, condition.relative, ""), -math.inf
    # >, >=, == (a threshold), or a change in its direction
    turn: Literal["", "-", "abs"] = {"value": "", "decrease": "-", "any": "abs"}[condition.direction]  # type: ignore[assignment]
    return _Test(current, prior, condition.relative, turn), condition.bound


def _candidates(tests: Sequence[_Test]) -> exp.Expression:
    """Per evaluated value, the rule numbers that can fire there (NULL when none can, the
    common case, decided by one comparison per class with its lowest key)."""
    numbered = list(enumerate(tests, start=1))
    any_can = exp.or_(*(t.expression() >= param(f"class_{n}_min") for n, t in numbered))
    prefixes = [
        exp.Bracket(
            this=exp.paren(exp.cast(param(f"class_{n}_rules"), "INT[]")),
            expressions=[
                exp.Slice(
                    this=exp.Literal.number(1),
                    expression=exp.func(
                        "WIDTH_BUCKET",
                        t.expression(),
                        exp.cast(param(f"class_{n}_keys"), "DOUBLE PRECISION[]"),
                    ),
                )
            ],
            offset=1,
        )
        for n, t in numbered
    ]
    concatenated: exp.Expression = prefixes[0]
    for prefix in prefixes[1:]:
        concatenated = exp.DPipe(this=concatenated, expression=prefix)
    return exp.Case().when(any_can, concatenated)


def _class_params(
    conditions: Sequence[MetricCondition], per_rule: Sequence[tuple[int, int | None]]
) -> tuple[list[_Test], dict[str, Any]]:
    """The classes of a group's rules and, per class, its keys in ascending order with the
    rule numbers in the same order, and the lowest key."""
    members: dict[_Test, list[tuple[float, int]]] = {}
    for n, (condition, (current, prior)) in enumerate(zip(conditions, per_rule), start=1):
        test, key = _class_of(condition, current, prior)
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


def _output(mode: Mode) -> exp.Select:
    """The rows of the candidates that fire, with their windows: the slices of the values,
    or (live) their text, which the evaluator passes on to the trigger rows as it is
    (converting them to Python floats and back to JSON cost ~0.2 ms per trigger)."""
    c_i = col("i", "c")

    def back(length: str) -> exp.Expression:  # c.i - ru.<length> + 1: where a window starts
        return exp.Add(this=exp.Sub(this=c_i, expression=col(length, "ru")), expression=exp.Literal.number(1))

    window: exp.Expression = exp.Bracket(
        this=col("vals", "c"), expressions=[exp.Slice(this=back("size"), expression=c_i)]
    )
    prior: exp.Expression = exp.Bracket(
        this=col("vals", "c"), expressions=[exp.Slice(this=back("span"), expression=c_i - col("size", "ru"))]
    )
    if mode == "live":
        window, prior = exp.cast(window, "TEXT"), exp.cast(prior, "TEXT")
    candidate_rules = exp.Lateral(
        this=exp.Unnest(expressions=[col("candidates", "c")]),
        alias=exp.TableAlias(this=exp.to_identifier("k"), columns=[exp.to_identifier("rule")]),
    )
    return (
        exp.select(
            col("run_pk", "c"),
            col("key_id", "c"),
            col("pos", "c"),
            at(col("steps", "c"), c_i).as_("step"),
            at(col("times", "c"), c_i).as_("time"),
            at(col("vals", "c"), c_i).as_("value"),
            col("d", "o").as_("aggregate"),
            window.as_("window_values"),
            col("prior_aggregate", "o"),
            exp.Case()
            .when(exp.Is(this=col("prior_segment", "ru"), expression=exp.null(), negate=True), prior)
            .as_("prior_values"),
            col("current_aggregate", "o"),
            col("rule", "ru"),
        )
        .from_(exp.to_table("candidates").as_("c"))
        .join(exp.to_table("scopes").as_("sc"), join_type="CROSS")
        .join(candidate_rules, join_type="CROSS")
    )


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
        condition = metric_condition(automation)
        assert automation.scope.project is not None
        entity, project = automation.scope.project.split("/", 1)
        run_filter = automation.run_filter
        cooldown = automation.cooldown
        row = {
            "entity": entity,
            "project": project,
            "run_user": run_filter.user if run_filter is not None else None,
            "run_name_regex": run_filter.name_regex if run_filter is not None else None,
            "span": condition.span,
            "size": condition.size,
            "relative": condition.relative,
            "direction": condition.direction,
            "operator": condition.operator,
            "bound": condition.bound,
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
    conditions = [metric_condition(a) for a in automations]
    assert conditions and (mode == "live" or not tails_only)
    metrics = {activity_key(a)[1] for a in automations}
    assert len(metrics) == 1, f"one metric per group, not {sorted(metrics)}"
    ids: Sequence[int | None] = automation_ids if automation_ids is not None else [None] * len(automations)
    assert len(ids) == len(automations)
    segments, per_rule = _segments(conditions)
    params: dict[str, Any] = {"metric": next(iter(metrics))} | _rule_params(automations, ids)
    params["current_segment"] = [current for current, _ in per_rule]
    params["prior_segment"] = [prior for _, prior in per_rule]
    params["span_max"] = max(params["span"])
    params["span_min"] = min(params["span"])
    tests, class_params = _class_params(conditions, per_rule)
    params |= class_params
    # per evaluated value: its segments' aggregates and the rules that can fire there.
    # OFFSET 0: computed once per value, before the candidates are expanded.
    candidates = (
        exp.select(
            *(col(name, "p") for name in _POINTS_OUT),
            col("aggregates", "a"),
            _candidates(tests).as_("candidates"),
        )
        .from_(exp.to_table("points").as_("p"))
        .join(_reduce(segments, params), join_type="CROSS")
        .offset(0)
    )
    final = (
        _output(mode)
        .join(lateral(frag(_RULE), "ru"), join_type="CROSS")
        .join(lateral(frag(_MATCH), "o"), join_type="CROSS")
        .join(lateral(frag(_TESTED), "t"), join_type="CROSS")
        .where(frag(_CONDITION))
    )
    if mode == "live":
        last = lateral(frag(_LAST_FIRED), "lf")
        final = final.join(last, join_type="LEFT", on=exp.true()).where(frag(_COOLED))
        final = final.select(col("value_time", "lf").as_("last_fired"))
    else:
        final = final.where(at(col("times", "c"), col("i", "c")) >= exp.cast(param("since"), "TIMESTAMPTZ"))
        final = final.select(exp.cast(exp.null(), "TIMESTAMPTZ").as_("last_fired"))
    result: exp.Query
    if tails_only:
        result = exp.union(final, _short_tails(), distinct=False).order_by("rule", "run_pk", "pos")
        values = _tail_values()
    else:
        result = final.order_by(col("rule", "ru"), col("run_pk", "c"), col("pos", "c"))
        values = _values(metric_table(metrics.pop()))
    query = (
        result.with_("scopes", as_=frag(_SCOPES), materialized=True)
        .with_("pending", as_=_pending(mode))
        # NOT MATERIALIZED: read twice in tails_only mode, and a copy of its arrays is not wanted
        .with_("series", as_=_series(), materialized=False if tails_only else None)
        .with_("vals", as_=values)
        .with_("points", as_=_points())
        .with_("candidates", as_=candidates)
    )
    names = tuple(a.name for a in automations)
    return CompiledQuery(", ".join(names), "metric", mode, query.sql(dialect=DIALECT), params, names)
