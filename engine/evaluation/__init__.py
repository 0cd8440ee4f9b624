"""Incremental, exact, restart-safe evaluation of automations.

Progress is an xid frontier per automation (`automation_state.frontier`): everything
written by transactions with xid < frontier has been evaluated. A tick takes the current
snapshot's xmin as the new frontier — every transaction below it has finished, so a batch
that commits late is never skipped — and evaluates what is new in [frontier, new frontier):
the metric rules of one metric with one query (their windows reduced once per value for all
of them, see `compiler.compile_metrics`), each event rule with its own. It applies the
per-run cooldown in value order and inserts the triggers (a unique key makes duplicates
impossible), their deliveries (the outbox) and the new frontiers in one transaction per
connection (ENGINE_EVALUATION_CONNECTIONS share a tick's work). Two services on one
database share the work: the automations' state rows are locked with FOR UPDATE SKIP LOCKED.

The modules, in the order data flows through them:

* `tick`: the `Evaluator` and its tick (which automations have new data, grouping, sharing
  the work among connections, frontiers);
* `isolation`: a failing group split until the failing automation is found and skipped;
* `statements`: running a compiled query (prepared, parameters converted once);
* `firing`: query rows -> firings -> cooldown -> trigger rows, written with their deliveries;
* `backtest`: the same query and cooldown over stored history, writing nothing.
"""

from engine.evaluation.backtest import backtest
from engine.evaluation.firing import Firing
from engine.evaluation.tick import Evaluator, TickResult

__all__ = ["Evaluator", "Firing", "TickResult", "backtest"]
