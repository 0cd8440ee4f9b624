"""The values a metric group's query evaluates: the CTEs `scopes`, `pending`, `series`,
`vals` and `points` (which series have new values, their finite values as arrays from the
per-series tails or, rarely, from the hypertable, and every position to evaluate). What is
done at each position (the rules' windows, classes and conditions) is in `metrics`."""

from __future__ import annotations

from sqlglot import exp

from engine.compiler.base import Mode, col, frag, lateral, param, xid


def pending(mode: Mode) -> exp.Select:
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
            # the metric's key looked up once (a join did it per batch of the span in the
            # generic plan), so that the (key_id, xid) index finds the metric's batches
            .where(
                col("key_id", "b").eq(frag("(SELECT k.id FROM metric_keys AS k WHERE k.key = %(metric)s)"))
            )
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


# The project of each rule of a group, in rule order (NULL: no such project): an array the
# final select indexes by rule number, like the rules' other parameters.
SCOPES = """
SELECT ARRAY_AGG(pr.id ORDER BY r.rule) AS project_ids
FROM UNNEST(CAST(%(entity)s AS TEXT[]), CAST(%(project)s AS TEXT[])) WITH ORDINALITY AS r(entity, project, rule)
LEFT JOIN projects AS pr ON pr.entity = r.entity AND pr.name = r.project
"""


# With an entity-scoped rule in the group: its project is NULL and its entity in
# %(scope_entity)s; `in_scope` adds every project of those entities, as they are now (a
# project created after the rule included).
ENTITY_SCOPES = """
SELECT ARRAY_AGG(pr.id ORDER BY r.rule) AS project_ids,
       ARRAY(SELECT pe.id FROM projects AS pe WHERE pe.entity = ANY(CAST(%(scope_entity)s AS TEXT[])))
       || ARRAY_AGG(pr.id) AS in_scope
FROM UNNEST(CAST(%(entity)s AS TEXT[]), CAST(%(project)s AS TEXT[])) WITH ORDINALITY AS r(entity, project, rule)
LEFT JOIN projects AS pr ON pr.entity = r.entity AND pr.name = r.project
"""


def series(in_scope: str = "UNNEST(sc.project_ids)") -> exp.Select:
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
        .where(frag(f"r.project_id IN (SELECT {in_scope} FROM scopes AS sc)"))
    )


SERIES_OUT = ("run_pk", "key_id", "first_pos", "last_pos", "project_id", "user_name", "run_name")


def tail_values() -> exp.Select:
    """`_values` for series whose tail reaches back far enough (the others are left out:
    see `metrics._short_tails`)."""
    return (
        exp.select(
            *(col(name, "x") for name in SERIES_OUT),
            col("base", "x").as_("off"),
            col("tail_step", "x").as_("steps"),
            col("tail_time", "x").as_("times"),
            col("tail_value", "x").as_("vals"),
        )
        .from_(exp.to_table("series").as_("x"))
        .where(frag("x.need_from > x.base"))
    )


def series_values(table: str) -> exp.Select:
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
            *(col(name, "x") for name in SERIES_OUT),
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


POINTS_OUT = (
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


def points() -> exp.Expression:
    """The values to evaluate: every new position where the shortest span of the group is
    full, with its index `i` in the arrays of `vals`."""
    return frag(
        "SELECT v.run_pk, v.key_id, v.project_id, v.user_name, v.run_name, v.steps, v.times, v.vals, e.pos, "
        "e.pos - v.off AS i "
        "FROM vals AS v CROSS JOIN LATERAL GENERATE_SERIES(GREATEST(v.first_pos, %(span_min)s), v.last_pos) AS e(pos)"
    )
