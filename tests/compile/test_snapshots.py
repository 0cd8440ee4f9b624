"""Golden SQL snapshots: each rule kind compiled, compared with a checked-in .sql file,
so that a reviewer sees every change of generated SQL in the diff.

Regenerate after an intended change with: UPDATE_SNAPSHOTS=1 pytest tests/compile
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from engine.compiler import compile_metrics, compile_rule
from engine.rules import parse_rules_text

SNAPSHOTS = Path(__file__).parent / "snapshots"

# The production path: the metric rules of one metric are compiled into one query. These
# share a metric and differ in everything else: thresholds above and below their bound and
# one that fires on `!=`, changes (relative, absolute, in each direction), two scopes, a run
# filter, a cooldown, z-scores; rules of one class (same segments, same test) share a sorted key array.
GROUP = """
name: loss-high
scope: {project: acme/vision}
event: {type: run_metric_threshold, metric: loss, window: 5, operator: ">", threshold: 2.0}
action: {type: no_op}
---
name: loss-low
scope: {project: acme/vision}
event: {type: run_metric_threshold, metric: loss, window: 5, operator: "<=", threshold: 0.1}
run_filter: {user: alice, name_regex: "^sweep-"}
action: {type: no_op}
---
name: loss-very-high
scope: {project: acme/other}
event: {type: run_metric_threshold, metric: loss, window: 5, operator: ">=", threshold: 10}
action: {type: no_op}
---
name: loss-not-one
scope: {project: acme/vision}
event: {type: run_metric_threshold, metric: loss, window: 3, aggregation: max, operator: "!=", threshold: 1}
action: {type: no_op}
---
name: loss-down
scope: {project: acme/vision}
event: {type: run_metric_change, metric: loss, direction: decrease, amount: 0.25}
cooldown: 1h
action: {type: no_op}
---
name: loss-down-more
scope: {project: acme/vision}
event: {type: run_metric_change, metric: loss, direction: decrease, amount: 0.5}
action: {type: no_op}
---
name: loss-moves
scope: {project: acme/vision}
event: {type: run_metric_change, metric: loss, current_window: 2, prior_window: 3, aggregation: max, change: absolute, direction: any, amount: 0.1}
action: {type: no_op}
---
name: loss-spike
scope: {project: acme/vision}
event: {type: run_metric_zscore, metric: loss}
action: {type: no_op}
---
name: loss-jump
scope: {project: acme/vision}
event: {type: run_metric_zscore, metric: loss, window: 10, threshold: 2.5, direction: increase}
action: {type: no_op}
"""

# Rules whose SQL differs in shape from the group's: a system metric (another table) and
# every event kind (each has its own conditions).
RULES = {
    "threshold_system": """
name: cpu-hot
scope: {project: acme/vision}
event: {type: run_metric_threshold, metric: system.cpu, window: 4, aggregation: max, operator: ">", threshold: 90}
action: {type: no_op}
""",
    "run_state": """
name: run-failed
scope: {project: acme/vision}
event: {type: run_state, states: [failed, crashed, finished]}
run_filter: {user: alice}
action: {type: no_op}
""",
    "artifact_version_created": """
name: new-dataset
scope: {project: acme/vision, collection_regex: "^mnist"}
event: {type: artifact_version_created, collection_type: dataset}
action: {type: no_op}
""",
    "artifact_alias_added": """
name: production
scope: {project: acme/vision, collection: resnet}
event: {type: artifact_alias_added, alias_regex: "^production$"}
action: {type: no_op}
""",
    "artifact_alias_added_registry": """
name: registry-staging
scope: {registry: model, collection: resnet}
event: {type: artifact_alias_added, alias_regex: "^staging$"}
action: {type: no_op}
""",
    "artifact_tag_added": """
name: europe
scope: {project: acme/vision}
event: {type: artifact_tag_added, tag_regex: "^europe"}
action: {type: no_op}
""",
    "run_metric_nonfinite": """
name: loss-nan
scope: {project: acme/vision}
event: {type: run_metric_nonfinite, metric: loss, values: [nan]}
run_filter: {name_regex: "^sweep-"}
action: {type: no_op}
""",
    "registry_version_linked": """
name: model-linked
scope: {registry: model}
event: {type: registry_version_linked, alias_regex: "^prod"}
action: {type: no_op}
""",
    "run_alert": """
name: nan-alerts
scope: {entity: acme}
event: {type: run_alert, title_regex: "(?i)nan", levels: [warn, error]}
run_filter: {user: alice}
action: {type: no_op}
""",
    "run_alert_any": """
name: any-alert
scope: {project: acme/vision}
event: {type: run_alert}
action: {type: no_op}
""",
    "artifact_tag_removed": """
name: europe-gone
scope: {project: acme/vision, collection: mnist}
event: {type: artifact_tag_removed, tag_regex: "^europe"}
action: {type: no_op}
""",
    "artifact_unlinked": """
name: prod-unlinked
scope: {registry: model, collection: resnet}
event: {type: artifact_unlinked, alias_regex: "^production$"}
action: {type: no_op}
""",
    "collection_tag_added": """
name: golden-datasets
scope: {entity: acme, collection_regex: "^ds-"}
event: {type: collection_tag_added, tag_regex: "^golden$"}
action: {type: no_op}
""",
    "collection_tag_removed": """
name: registry-untagged
scope: {registry: model, collection: resnet}
event: {type: collection_tag_removed, tag_regex: "."}
action: {type: no_op}
""",
}

# A metric group with an entity-scoped rule: its own SQL shape (the others keep theirs).
ENTITY_GROUP = """
name: loss-high-anywhere
scope: {entity: acme}
event: {type: run_metric_threshold, metric: loss, window: 5, operator: ">", threshold: 2.0}
action: {type: no_op}
---
name: loss-high-vision
scope: {project: acme/vision}
event: {type: run_metric_threshold, metric: loss, window: 5, operator: ">", threshold: 3.0}
action: {type: no_op}
"""


def _group() -> list:
    return [r.automation for r in parse_rules_text(GROUP)]


@pytest.mark.parametrize(
    ("variant", "mode", "tails_only"),
    [("live", "live", False), ("live_tails", "live", True), ("history", "history", False)],
)
def test_a_metric_group_matches_snapshot(variant: str, mode: str, tails_only: bool) -> None:
    """The evaluator's query for the rules of one metric (live: with the stored ids, which
    bring each automation's last firing; live_tails: the variant it runs first)."""
    automations = _group()
    ids = list(range(1, len(automations) + 1)) if mode == "live" else None
    compiled = compile_metrics(automations, mode, tails_only=tails_only, automation_ids=ids)  # type: ignore[arg-type]
    _assert_snapshot(compiled.pretty() + "\n", SNAPSHOTS / f"metric_group.{variant}.sql")


def test_an_entity_scoped_metric_group_matches_snapshot() -> None:
    automations = [r.automation for r in parse_rules_text(ENTITY_GROUP)]
    compiled = compile_metrics(automations, "live", automation_ids=[1, 2])
    assert compiled.params["scope_entity"] == ["acme", None]
    assert compiled.params["project"] == [None, "vision"]
    _assert_snapshot(compiled.pretty() + "\n", SNAPSHOTS / "metric_group_entity.live.sql")


def test_a_metric_groups_rules_are_matched_by_class() -> None:
    """Rules with the same segments and test share a class: their keys sorted ascending
    (the binary search's order) with their rule numbers alongside."""
    params = compile_metrics(_group(), "live").params
    classes = {
        tuple(params[f"class_{c}_rules"]): params[f"class_{c}_keys"]
        for c in range(1, 10)
        if f"class_{c}_rules" in params
    }
    # >, >= on avg(5): one class, keys 2 and 10; <= on avg(5): the negated bound; != fires
    # at every value; the two relative decreases share one class; the absolute change its own;
    # each z-score its own (its own reference window, and |z| or z)
    assert classes == {
        (1, 3): [2.0, 10.0],
        (2,): [-0.1],
        (4,): [-math.inf],
        (5, 6): [0.25, 0.5],
        (7,): [0.1],
        (8,): [3.0],
        (9,): [2.5],
    }
    assert params["project"] == [
        "vision",
        "vision",
        "other",
        "vision",
        "vision",
        "vision",
        "vision",
        "vision",
        "vision",
    ]
    assert params["zscore"] == [False] * 7 + [True, True]


@pytest.mark.parametrize("name", sorted(RULES))
def test_compiled_sql_matches_snapshot(name: str) -> None:
    automation = parse_rules_text(RULES[name])[0].automation
    _assert_snapshot(compile_rule(automation, "live").pretty() + "\n", SNAPSHOTS / f"{name}.live.sql")


def test_history_mode_matches_snapshot() -> None:
    """History mode (the backtest) differs from live only in what is new: time >= since."""
    automation = parse_rules_text(RULES["run_state"])[0].automation
    _assert_snapshot(compile_rule(automation, "history").pretty() + "\n", SNAPSHOTS / "run_state.history.sql")


def _assert_snapshot(sql: str, path) -> None:
    if os.environ.get("UPDATE_SNAPSHOTS") == "1" or not path.exists():
        path.write_text(sql)
        if os.environ.get("UPDATE_SNAPSHOTS") != "1":
            pytest.fail(f"snapshot {path.name} did not exist and was written: check it and commit it")
    assert sql == path.read_text()


def test_every_snapshot_file_belongs_to_a_test() -> None:
    """Snapshots of rules no longer compiled here are deleted, not left to rot."""
    expected = {f"metric_group.{v}.sql" for v in ("live", "live_tails", "history")}
    expected |= {f"{name}.live.sql" for name in RULES} | {
        "run_state.history.sql",
        "metric_group_entity.live.sql",
    }
    assert {p.name for p in SNAPSHOTS.glob("*.sql")} == expected


HOSTILE = "x'); DROP TABLE runs; --"


def test_rule_values_are_parameters_never_sql_text() -> None:
    text = f"""
name: hostile
scope: {{project: acme/vision}}
event: {{type: run_metric_threshold, metric: "{HOSTILE}", operator: ">", threshold: 0.5}}
run_filter: {{user: "{HOSTILE}", name_regex: "a|b"}}
action: {{type: no_op}}
"""
    compiled = compile_rule(parse_rules_text(text)[0].automation)
    assert "DROP" not in compiled.sql
    assert compiled.params["metric"] == HOSTILE
    assert compiled.params["run_user"] == [HOSTILE]
    assert "%(metric)s" in compiled.sql and "%(bound)s" in compiled.sql
