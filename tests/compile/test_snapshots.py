"""Golden SQL snapshots: each rule kind compiled, compared with a checked-in .sql file,
so that a reviewer sees every change of generated SQL in the diff.

Regenerate after an intended change with: UPDATE_SNAPSHOTS=1 pytest tests/compile
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.compiler import compile_metrics, compile_rule
from engine.rules import parse_rules_text

SNAPSHOTS = Path(__file__).parent / "snapshots"

RULES = {
    "threshold_avg": """
name: accuracy-above-0.6
scope: {project: acme/vision}
event: {type: run_metric_threshold, metric: accuracy, operator: ">", threshold: 0.6}
action: {type: no_op}
""",
    "threshold_min_filtered": """
name: loss-low
scope: {project: acme/vision}
event: {type: run_metric_threshold, metric: loss, window: 3, aggregation: min, operator: "<=", threshold: 0.1}
run_filter: {user: alice, name_regex: "^sweep-"}
action: {type: no_op}
""",
    "threshold_system": """
name: cpu-hot
scope: {project: acme/vision}
event: {type: run_metric_threshold, metric: system.cpu, window: 4, aggregation: max, operator: ">", threshold: 90}
action: {type: no_op}
""",
    "change_relative": """
name: loss-down
scope: {project: acme/vision}
event: {type: run_metric_change, metric: loss, direction: decrease, amount: 0.25}
action: {type: no_op}
""",
    "change_absolute_any": """
name: acc-moves
scope: {project: acme/vision}
event: {type: run_metric_change, metric: accuracy, current_window: 2, prior_window: 3, aggregation: max, change: absolute, direction: any, amount: 0.1}
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
    "registry_version_linked": """
name: model-linked
scope: {registry: model}
event: {type: registry_version_linked, alias_regex: "^prod"}
action: {type: no_op}
""",
}


@pytest.mark.parametrize("mode", ["live", "history"])
@pytest.mark.parametrize("name", sorted(RULES))
def test_compiled_sql_matches_snapshot(name: str, mode: str) -> None:
    automation = parse_rules_text(RULES[name])[0].automation
    _assert_snapshot(compile_rule(automation, mode).pretty() + "\n", SNAPSHOTS / f"{name}.{mode}.sql")


def _assert_snapshot(sql: str, path) -> None:
    if os.environ.get("UPDATE_SNAPSHOTS") == "1" or not path.exists():
        path.write_text(sql)
        if os.environ.get("UPDATE_SNAPSHOTS") != "1":
            pytest.fail(f"snapshot {path.name} did not exist and was written: check it and commit it")
    assert sql == path.read_text()


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


@pytest.mark.parametrize("name", ["threshold_avg", "change_relative"])
def test_tails_only_variant_matches_snapshot(name: str) -> None:
    """The live variant the evaluator runs first: tails only, a `rule` 0 row for a series
    whose tail falls short."""
    automation = parse_rules_text(RULES[name])[0].automation
    _assert_snapshot(
        compile_metrics([automation], "live", tails_only=True).pretty() + "\n",
        SNAPSHOTS / f"{name}.live_tails.sql",
    )
