"""Compile automation rules into SQL, built with sqlglot expressions.

Every value that comes from a rule (metric name, thresholds, windows, regexes, user,
project, alias/tag patterns) is a bound parameter (`exp.Placeholder`, rendered `%(name)s`);
the SQL text depends only on the *shape* of the rule (its kind, aggregation, operator,
which filters are present). Constant SQL fragments are written as literals and parsed by
sqlglot; nothing user-supplied is ever formatted into them.

* `kinds`: the one registry of rule kinds (what differs per event class);
* `metrics`: metric rules, compiled per group (the rules of one metric, one query): the
  windows, classes and conditions at each evaluated value;
* `series`: the values such a query evaluates (new positions, tails or hypertable reads);
* `events`: run-state, artifact and registry rules, one query each;
* `nonfinite`: rules on NaN and infinite values, one query each;
* `stalled`: rules driven by time (a run that stopped logging), one query each;
* `base`: `CompiledQuery` and the builders both use.
"""

from __future__ import annotations

from engine.compiler.base import DIALECT, CompiledQuery, Mode, metric_table
from engine.compiler.events import compile_event
from engine.compiler.kinds import (
    ClockKind,
    PointKind,
    activity_key,
    is_metric_rule,
    kind_of,
    metric_condition,
)
from engine.compiler.metrics import compile_metrics, span_of
from engine.compiler.nonfinite import compile_nonfinite
from engine.compiler.stalled import compile_stalled
from engine.rules import Automation


def compile_rule(automation: Automation, mode: Mode = "live") -> CompiledQuery:
    """The query of any rule (live: what is new in [from_xid, to_xid); history: since `since`)."""
    if is_metric_rule(automation):
        return compile_metrics([automation], mode)
    if isinstance(kind_of(automation), PointKind):
        return compile_nonfinite(automation, mode)
    if isinstance(kind_of(automation), ClockKind):
        return compile_stalled(automation, mode)
    return compile_event(automation, mode)


__all__ = [
    "DIALECT",
    "ClockKind",
    "CompiledQuery",
    "Mode",
    "PointKind",
    "activity_key",
    "compile_event",
    "compile_metrics",
    "compile_nonfinite",
    "compile_rule",
    "compile_stalled",
    "is_metric_rule",
    "kind_of",
    "metric_condition",
    "metric_table",
    "span_of",
]
