"""A converted W&B metric automation means what the original meant: for every metric rule of
the fixtures, W&B's documented semantics (a plain-Python reference read from the W&B JSON
itself) and the converted rule (the engine's backtest, on a real database) fire at the same
values of the same series.

W&B's documentation, as the reference reads it: a threshold compares the aggregate (AVERAGE,
MIN, MAX) of the last `window_size` values, or the latest value when there is no aggregate;
a change compares the aggregate of the current window with that of the window just before it
(`prior_window_size`, by default the current size; single values without an aggregate),
ABSOLUTE as cur − prior and RELATIVE as a fraction of the prior; a z-score compares a value
with the mean and standard deviation of the `window_size` values before it, reached at the
threshold (≥, as wandb.automations says). Where W&B is vague (full windows only, |prior| in
a relative change, no trigger when σ = 0 or prior = 0) the engine's SPEC decided, and the
reference follows it. Each value that satisfies the condition fires (the rule's cooldown is
set to 1m and the values are 2 minutes apart): the conditions are compared, not cooldowns.
"""

from __future__ import annotations

import json
import math
import random
import re
import statistics
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import engine
from engine.evaluation import backtest
from engine.rules import Automation
from engine.rules.wandb_import import import_wandb

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "wandb"
T0 = datetime(2026, 3, 1, tzinfo=UTC)
GRID = [0.0, 0.25, 0.5, 0.75, 1.0, 2.0, 3.0, 4.0, -1.0]  # values that land aggregates exactly on thresholds
CMP = {
    "$gt": lambda a, t: a > t,
    "$gte": lambda a, t: a >= t,
    "$lt": lambda a, t: a < t,
    "$lte": lambda a, t: a <= t,
}


def _aggregate(agg: str, values: list[float]) -> float:
    return {"AVERAGE": statistics.fmean, "MIN": min, "MAX": max}[agg](values)


def wandb_threshold(spec: dict[str, Any], values: list[float], i: int) -> bool:
    if spec.get("agg_op") is None:
        return CMP[spec["cmp_op"]](values[i], spec["threshold"])
    n = spec["window_size"]
    if i + 1 < n:
        return False
    return CMP[spec["cmp_op"]](_aggregate(spec["agg_op"], values[i - n + 1 : i + 1]), spec["threshold"])


def wandb_change(spec: dict[str, Any], values: list[float], i: int) -> bool:
    if spec.get("agg_op") is None:
        if i < 1:
            return False
        cur, prior = values[i], values[i - 1]
    else:
        n, m = spec["current_window_size"], spec.get("prior_window_size", spec["current_window_size"])
        if i + 1 < n + m:
            return False
        cur = _aggregate(spec["agg_op"], values[i - n + 1 : i + 1])
        prior = _aggregate(spec["agg_op"], values[i - n - m + 1 : i - n + 1])
    if spec["change_type"] == "ABSOLUTE":
        d = cur - prior
    elif prior == 0:
        return False
    else:
        d = (cur - prior) / abs(prior)
    amount = spec["change_amount"]
    return {"INCREASE": d >= amount, "DECREASE": -d >= amount, "ANY": abs(d) >= amount}[spec["change_dir"]]


def wandb_zscore(spec: dict[str, Any], values: list[float], i: int) -> float | None:
    w = spec.get("window_size", 30)
    if i < w:
        return None
    reference = values[i - w : i]
    sigma = statistics.pstdev(reference)
    return None if sigma == 0 else (values[i] - statistics.fmean(reference)) / sigma


def wandb_zscore_holds(spec: dict[str, Any], values: list[float], i: int) -> bool:
    z, t = wandb_zscore(spec, values, i), spec.get("threshold", 3.0)
    if z is None:
        return False
    return {"INCREASE": z >= t, "DECREASE": z <= -t, "ANY": abs(z) >= t}[spec.get("change_dir", "ANY")]


def _metric_specs() -> dict[str, tuple[str, dict[str, Any]]]:
    """W&B name → (filter kind, its spec), read from the fixtures' double-encoded JSON."""
    triggers = json.loads((FIXTURES / "sdk_automations.json").read_text())
    edges = json.loads((FIXTURES / "graphql_triggers.json").read_text())["data"]["scope"]["triggers"]["edges"]
    triggers += [edge["node"] for edge in edges]
    specs = {}
    for trigger in triggers:
        event = trigger.get("event") or trigger["triggeringCondition"]
        outer = json.loads(event["filter"])
        choice = outer.get("run_metric_filter") or (
            {"threshold_filter": json.loads(outer["metric_filter"])} if outer.get("metric_filter") else None
        )
        if choice:
            ((kind, spec),) = ((k, v) for k, v in choice.items() if v is not None)
            specs[trigger["name"]] = (kind, spec)
    return specs


def _series(kind: str, seed: int) -> list[float]:
    rng = random.Random(seed)
    if kind == "zscore_filter":
        return [rng.gauss(0.0, 1.0) + (4.0 if rng.random() < 0.1 else 0.0) for _ in range(80)]
    values: list[float] = []
    while len(values) < 80:  # stretches of one value: full windows at every level of the grid
        values += [rng.choice(GRID)] * rng.randint(1, 5)
    return values


def test_converted_metric_rules_fire_where_wandb_rules_do(conn):
    specs = _metric_specs()
    result = import_wandb(
        [(name, (FIXTURES / name).read_text()) for name in ("sdk_automations.json", "graphql_triggers.json")],
        entity="acme",
        registry="model",
    )
    checked = 0
    for seed, item in enumerate(result.converted):
        if item.wandb_name not in specs or item.automation.scope.project is None:
            continue
        kind, spec = specs[item.wandb_name]
        data = item.automation.to_json() | {"cooldown": "1m", "run_filter": None}
        automation = Automation.model_validate(data)
        values = _series(kind, seed)
        holds = {"threshold_filter": wandb_threshold, "change_filter": wandb_change}.get(
            kind, wandb_zscore_holds
        )
        if kind == "zscore_filter":
            # W&B reaches (≥) and the engine exceeds (>) the threshold: they differ only for a
            # z exactly on it, which these random values never give (checked, not assumed).
            t = spec.get("threshold", 3.0)
            assert all(
                z is None or not math.isclose(abs(z), t, rel_tol=1e-9)
                for z in (wandb_zscore(spec, values, i) for i in range(len(values)))
            )
        expected = {i for i in range(len(values)) if holds(spec, values, i)}

        run = engine.init(project=automation.scope.project, name=f"wandb-{seed}", system_metrics_interval=0)
        try:
            for step, value in enumerate(values):
                run.log({automation.event.metric: value}, step=step, time=T0 + timedelta(minutes=2 * step))
            run.flush()
        finally:
            run.finish()
        run_pk = conn.execute("SELECT id FROM runs WHERE run_id = %s", (run.id,)).fetchone()[0]
        fired = {f.step for f in backtest(conn, automation, T0 - timedelta(days=1)) if f.run_pk == run_pk}
        assert fired == expected, f"{item.wandb_name}: {automation.event.describe()}"
        assert expected, f"{item.wandb_name}: the series never satisfies the condition, so it tests nothing"
        checked += 1
    # every threshold, change and z-score fixture with a project scope
    assert checked == 22


NAMES = [
    "base+line (v1)",
    "base+line (v1) again",
    "baseline (v1)",
    "base+line (v1",
    "sweep-12",
    "my-sweep-12",
    "resnet.50-a",
    "resnet-50",
    "nightly-3",
    "exp-7",
    "",
]


def wandb_name_matches(test: dict[str, Any], name: str) -> bool:
    """W&B's run filter on the display name: $eq exact, $contains a substring, $regex a search."""
    ((op, value),) = test.items()
    if op == "$eq":
        return name == value
    if op == "$contains":
        return value in name
    if op == "$in":
        return name in value
    return re.search(value, name) is not None


def test_converted_run_name_filters_match_the_same_names_in_postgresql(conn):
    """The converted `name_regex` runs in PostgreSQL (`~`): escaping keeps W&B's equality and
    substring tests literal there, on names full of regex characters."""
    specs = {}
    for name in ("sdk_automations.json", "graphql_triggers.json"):
        data = json.loads((FIXTURES / name).read_text())
        triggers = (
            data
            if isinstance(data, list)
            else [e["node"] for e in data["data"]["scope"]["triggers"]["edges"]]
        )
        for trigger in triggers:
            event = trigger.get("event") or trigger["triggeringCondition"]
            outer = json.loads(event["filter"])
            for condition in json.loads(outer.get("run_filter", "{}")).get("$and", []):
                if "display_name" in condition:
                    specs[trigger["name"]] = condition["display_name"]
    result = import_wandb(
        [(name, (FIXTURES / name).read_text()) for name in ("sdk_automations.json", "graphql_triggers.json")],
        entity="acme",
        registry="model",
    )
    converted = {item.wandb_name: item.automation for item in result.converted}
    assert len(specs) == 6
    for wandb_name, test in specs.items():
        pattern = converted[wandb_name].run_filter.name_regex
        matched = {n for n in NAMES if conn.execute("SELECT %s ~ %s", (n, pattern)).fetchone()[0]}
        assert matched == {n for n in NAMES if wandb_name_matches(test, n)}, wandb_name
        assert matched, f"{wandb_name}: no name matches, so this tests nothing"
