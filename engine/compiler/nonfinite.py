"""Non-finite rules: the NaN and infinite values of one metric, read from `nonfinite_points`
(written by the SDK's flush in the transaction of the points) in [from_xid, to_xid) (live)
or with time >= since (history), with the rule's scope and run filter. The per-series tails
hold finite values only, so these rules never join a metric group's query; their table is
small (only the non-finite values), so a query per rule costs an index probe per tick."""

from __future__ import annotations

import math
from typing import Any

from sqlglot import exp

from engine.compiler.base import DIALECT, CompiledQuery, Mode, col, in_span, param, run_scope
from engine.rules import Automation, RunMetricNonfinite

# The floats each of a rule's `values` stands for (PostgreSQL: NaN = NaN holds).
FLOATS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def compile_nonfinite(automation: Automation, mode: Mode = "live") -> CompiledQuery:
    event = automation.event
    assert isinstance(event, RunMetricNonfinite), f"{event} is not a non-finite rule"
    params: dict[str, Any] = {"metric": event.metric, "values": [FLOATS[v] for v in event.values]}
    select = (
        exp.select(*(col(name, "n") for name in ("run_pk", "key_id", "seq", "step", "time", "value")))
        .from_(exp.to_table("nonfinite_points").as_("n"))
        .join(exp.to_table("metric_keys").as_("k"), on=col("id", "k").eq(col("key_id", "n")))
    )
    select = in_span(select, col("xid" if mode == "live" else "time", "n"), mode)
    select = select.where(col("key", "k").eq(param("metric")))
    select = select.where(
        col("value", "n").eq(exp.Any(this=exp.paren(exp.cast(param("values"), "DOUBLE PRECISION[]"))))
    )
    select = run_scope(select, automation, params, "n")
    # per run in logging order: the order the cooldown is applied in
    select = select.order_by(col("run_pk", "n"), col("seq", "n"))
    return CompiledQuery(automation.name, "event", mode, select.sql(dialect=DIALECT), params)
