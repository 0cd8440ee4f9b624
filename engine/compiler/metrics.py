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
)
from engine.compiler.kinds import MetricCondition, activity_key, metric_condition
from engine.compiler.series import (
    ENTITY_SCOPES,
    POINTS_OUT,
    SCOPES,
    pending,
    points,
    series,
    series_values,
    tail_values,
)
from engine.rules import Automation


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
        if c.zscore:
            # the reference window (1..prior values back), as three consecutive segments: only
            # z-score rules add them, always together and in this order (see `_z`)
            current = index(_Segment("zsum", 1, c.prior))
            index(_Segment("zsumsq", 1, c.prior))
            index(_Segment("zspread", 1, c.prior))
            per_rule.append((current, current + 1))
            continue
        current = index(_Segment(c.aggregation, 0, c.size - 1))
        prior = index(_Segment(c.aggregation, c.size, c.span - 1)) if c.prior else None
        per_rule.append((current, prior))
    return segments, per_rule


def span_of(automation: Automation) -> int:
    """How many values a metric rule's windows cover (its window, or current + prior)."""
    return metric_condition(automation).span


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


# The z-score segments, as deviations from the evaluated value v = p.vals[p.i] (shifting the
# values by v keeps the sums small where v is near them, and leaves the variance as it is):
# zsum = Σ(x − v), zsumsq = Σ(x − v)², zspread = max |x − last x| (0: every value equal, σ = 0,
# decided exactly rather than from a sum of squares that rounding leaves slightly above 0).
# The deviations are columns of the stretch (`dv`, `dl`: from v and from the value before it),
# computed once per value rather than once per value and z-score segment (each was an array
# subscript of its own: with ~15 reference windows on a metric, most of the reduction).
_Z_AGGREGATES = {
    "zsum": "SUM(w.dv)",
    "zsumsq": "SUM(w.dv * w.dv)",
    "zspread": "MAX(ABS(w.dl))",
}


def _z(aggregates: str, k: int | str, window: str) -> str:
    """z at a value from its z-score segments (zsum at index k of `aggregates`, zsumsq at
    k + 1, zspread at k + 2) over a reference window of `window` values: with Q = W·Σ(x−v)² −
    (Σ(x−v))² = W²σ², z = (v − μ) / σ = −Σ(x−v) / √Q. For values with few significant bits
    (0.25, 3, …) every step is exact, so a z on the threshold is exactly on it. NULL when
    σ = 0 (no trigger)."""
    s, sq, spread = f"{aggregates}[{k}]", f"{aggregates}[{k} + 1]", f"{aggregates}[{k} + 2]"
    return f"CASE WHEN {spread} > 0 THEN -{s} / NULLIF(SQRT(GREATEST({window} * {sq} - {s} * {s}, 0)), 0) END"


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
        function = (
            frag(_Z_AGGREGATES[segment.aggregation])
            if segment.aggregation in _Z_AGGREGATES
            else exp.func(segment.aggregation, col("v", "w"))
        )
        aggregates.append(exp.Filter(this=function, expression=exp.Where(this=within)))
    stretch = frag(
        "SELECT UNNEST(p.vals[p.i - %(span_max)s + 1:p.i]) AS v, "
        "GENERATE_SERIES(LEAST(p.i, %(span_max)s) - 1, 0, -1) AS back"
    )
    if any(segment.aggregation in _Z_AGGREGATES for segment in segments):
        # OFFSET 0: kept a subquery, so that each deviation is computed once per value (pulled
        # up, its expression would be copied into every aggregate that reads it)
        stretch = frag(
            "SELECT s.v, s.back, s.v - p.vals[p.i] AS dv, s.v - p.vals[p.i - 1] AS dl "
            f"FROM ({stretch.sql(dialect=DIALECT)}) AS s OFFSET 0"
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
    zscore: bool = False  # d is z, from the z-score segments starting at `current`

    def expression(self) -> exp.Expression:
        if self.zscore:  # the reference window's length is its segment's upper bound
            z = frag(_z("a.aggregates", self.current, f"%(segment_{self.current}_to)s"))
            if self.turn == "abs":
                return exp.Abs(this=z)
            return exp.Neg(this=exp.paren(z)) if self.turn == "-" else exp.paren(z)
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
    if condition.zscore:
        turn_z: Literal["", "-", "abs"] = {"value": "", "decrease": "-", "any": "abs"}[condition.direction]  # type: ignore[assignment]
        return _Test(current, prior, False, turn_z, zscore=True), condition.bound
    if condition.operator in ("<", "<="):
        return _Test(current, prior, condition.relative, "-"), -condition.bound
    if condition.operator == "!=":  # fires almost always: a candidate at every value
        return _Test(current, prior, condition.relative, ""), -math.inf
    # >, >=, == (a threshold), or a change in its direction
    turns: dict[str, Literal["", "-", "abs"]] = {"value": "", "decrease": "-", "any": "abs"}
    turn = turns[condition.direction]
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
       (CAST(%(zscore)s AS BOOLEAN[]))[k.rule] AS zscore, (CAST(%(automation_id)s AS BIGINT[]))[k.rule] AS automation_id,
       (CAST(%(cooldown_us)s AS BIGINT[]))[k.rule] AS cooldown_us
OFFSET 0
"""

# Per candidate (value, rule): the rule's d, the aggregate (threshold) or the change
# between its current and prior aggregates (relative: no d when the prior is 0, and NULL
# never satisfies a condition), or z; a z-score rule's aggregates are the reference
# window's mean and population standard deviation.
_Z_MEAN = "c.vals[c.i] + c.aggregates[ru.current_segment] / (ru.span - 1)"
_Z_SIGMA = (
    "SQRT(GREATEST((ru.span - 1) * c.aggregates[ru.current_segment + 1] "
    "- c.aggregates[ru.current_segment] * c.aggregates[ru.current_segment], 0)) / (ru.span - 1)"
)
_MATCH = f"""
SELECT CASE WHEN ru.zscore THEN {_Z_MEAN} ELSE c.aggregates[ru.current_segment] END AS current_aggregate,
       CASE WHEN ru.zscore THEN {_Z_SIGMA} ELSE c.aggregates[ru.prior_segment] END AS prior_aggregate,
       CASE WHEN ru.zscore THEN {_z("c.aggregates", "ru.current_segment", "(ru.span - 1)")}
            WHEN ru.prior_segment IS NULL THEN c.aggregates[ru.current_segment]
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


def _output(mode: Mode, as_text: bool) -> exp.Select:
    """The rows of the candidates that fire, with their windows: the slices of the values,
    or (`as_text`, live) their text, which the evaluator passes on to the trigger rows as it
    is (converting them to Python floats and back to JSON cost ~0.2 ms per trigger). The
    tails-only query keeps the arrays: the statement around it inserts them as they are, and
    casts them to text only for the rows it returns (`fire_metric_group`)."""
    c_i = col("i", "c")

    def back(length: str) -> exp.Expression:  # c.i - ru.<length> + 1: where a window starts
        return exp.Add(this=exp.Sub(this=c_i, expression=col(length, "ru")), expression=exp.Literal.number(1))

    window: exp.Expression = exp.Bracket(
        this=col("vals", "c"), expressions=[exp.Slice(this=back("size"), expression=c_i)]
    )
    prior: exp.Expression = exp.Bracket(
        this=col("vals", "c"), expressions=[exp.Slice(this=back("span"), expression=c_i - col("size", "ru"))]
    )
    if as_text:
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
            "zscore",
            "automation_id",
            "cooldown_us",
        )
    }
    for automation, automation_id in zip(automations, ids):
        condition = metric_condition(automation)
        # an entity scope: no project (its entity is matched through scope_entity)
        entity, _, project = (automation.scope.project or f"{automation.scope.entity}/").partition("/")
        run_filter = automation.run_filter
        cooldown = automation.cooldown
        row = {
            "entity": entity,
            "project": project or None,
            "run_user": run_filter.user if run_filter is not None else None,
            "run_name_regex": run_filter.name_regex if run_filter is not None else None,
            "span": condition.span,
            "size": condition.size,
            "relative": condition.relative,
            "direction": condition.direction,
            "operator": condition.operator,
            "bound": condition.bound,
            "zscore": condition.zscore,
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
            *(col(name, "p") for name in POINTS_OUT),
            col("aggregates", "a"),
            _candidates(tests).as_("candidates"),
        )
        .from_(exp.to_table("points").as_("p"))
        .join(_reduce(segments, params), join_type="CROSS")
        .offset(0)
    )
    rule_sql, condition_sql, scopes_sql, in_scope = _RULE, _CONDITION, SCOPES, "UNNEST(sc.project_ids)"
    if any(a.scope.entity is not None for a in automations):
        # an entity scope: the rule's entity, and a value's project must be one of it
        params["scope_entity"] = [a.scope.entity for a in automations]
        rule_sql = _RULE.replace(
            "AS project_id,", "AS project_id, (CAST(%(scope_entity)s AS TEXT[]))[k.rule] AS scope_entity,", 1
        )
        condition_sql = _CONDITION.replace(
            "ru.project_id = c.project_id",
            "(ru.project_id = c.project_id OR c.project_id IN "
            "(SELECT pe.id FROM projects AS pe WHERE pe.entity = ru.scope_entity))",
            1,
        )
        scopes_sql, in_scope = ENTITY_SCOPES, "UNNEST(sc.in_scope)"
    final = (
        _output(mode, as_text=mode == "live" and not tails_only)
        .join(lateral(frag(rule_sql), "ru"), join_type="CROSS")
        .join(lateral(frag(_MATCH), "o"), join_type="CROSS")
        .join(lateral(frag(_TESTED), "t"), join_type="CROSS")
        .where(frag(condition_sql))
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
        values = tail_values()
    else:
        result = final.order_by(col("rule", "ru"), col("run_pk", "c"), col("pos", "c"))
        values = series_values(metric_table(metrics.pop()))
    query = (
        result.with_("scopes", as_=frag(scopes_sql), materialized=True)
        .with_("pending", as_=pending(mode))
        # NOT MATERIALIZED: read twice in tails_only mode, and a copy of its arrays is not wanted
        .with_("series", as_=series(in_scope), materialized=False if tails_only else None)
        .with_("vals", as_=values)
        .with_("points", as_=points())
        .with_("candidates", as_=candidates)
    )
    names = tuple(a.name for a in automations)
    return CompiledQuery(", ".join(names), "metric", mode, query.sql(dialect=DIALECT), params, names)
