"""`engine.rules.wandb_import`: W&B automations (the wandb SDK's dumps and raw GraphQL
triggers) become rules that validate and say the same; what cannot be converted is refused
with the automation's name and the field."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from engine.rules import parse_rules_text
from engine.rules.wandb_import import ImportResult, import_wandb, rule_yaml

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "wandb"


def convert(*names: str, entity: str | None = "acme", registry: str | None = None) -> ImportResult:
    return import_wandb(
        [(name, (FIXTURES / name).read_text()) for name in names], entity=entity, registry=registry
    )


def by_name(result: ImportResult) -> dict:
    return {item.wandb_name: item.automation for item in result.converted}


def test_committed_fixtures_are_what_the_wandb_package_writes():
    # The SDK fixtures are built by wandb's own classes: regenerate them with the installed
    # wandb (tests/fixtures/wandb/generate.py) and compare, so a release that changes its
    # JSON is seen here rather than by users.
    from tests.fixtures.wandb import generate

    with warnings.catch_warnings():
        # wandb reads its own deprecated `metric_filter` field while it builds a metric event
        warnings.simplefilter("ignore", DeprecationWarning)
        files = generate.build()
    for name, text in files.items():
        assert (FIXTURES / name).read_text() == text, f"{name}: rerun tests/fixtures/wandb/generate.py"


@pytest.mark.parametrize("fixture", ["sdk_automations.json", "graphql_triggers.json"])
def test_every_fixture_converts_and_its_yaml_validates_back_to_the_same_rule(fixture):
    result = convert(fixture, registry="model")
    assert result.refusals == []
    automations = json.loads((FIXTURES / fixture).read_text())
    count = (
        len(automations)
        if isinstance(automations, list)
        else len(automations["data"]["scope"]["triggers"]["edges"])
    )
    assert len(result.converted) == count
    for item in result.converted:
        loaded = parse_rules_text(rule_yaml(item), f"{item.automation.name}.yaml")
        assert [rule.automation for rule in loaded] == [item.automation]


def test_thresholds_every_operator_and_aggregation():
    rules = by_name(convert("sdk_automations.json", registry="model"))
    expected = {
        "acc-avg-above": ("accuracy", 5, "avg", ">", 0.6),
        "acc-min-at-least": ("accuracy", 3, "min", ">=", 0.5),
        "loss-max-below": ("loss", 4, "max", "<", 0.25),
        "loss-avg-at-most": ("loss", 2, "avg", "<=", 0.5),
        # no aggregation in W&B: one value, its window ignored
        "loss-single-value-above": ("loss", 1, "avg", ">", 1.0),
    }
    for name, (metric, window, aggregation, operator, threshold) in expected.items():
        event = rules[name].event
        assert (
            event.type,
            event.metric,
            event.window,
            event.aggregation,
            event.operator,
            event.threshold,
        ) == (
            "run_metric_threshold",
            metric,
            window,
            aggregation,
            operator,
            threshold,
        ), name


def test_changes_both_kinds_every_direction_and_both_windows():
    rules = by_name(convert("sdk_automations.json", registry="model"))
    expected = {
        "loss-drop-25pct": (3, 3, "avg", "relative", "decrease", 0.25),
        "acc-rise-abs": (2, 4, "max", "absolute", "increase", 0.5),
        "loss-moves-abs": (2, 2, "min", "absolute", "any", 1.0),
        "loss-moves-rel-single": (1, 1, "avg", "relative", "any", 0.5),
        "acc-rise-rel": (2, 2, "avg", "relative", "increase", 1.0),
        "loss-drop-abs": (1, 1, "avg", "absolute", "decrease", 0.75),
    }
    for name, values in expected.items():
        e = rules[name].event
        assert (e.current_window, e.prior_window, e.aggregation, e.change, e.direction, e.amount) == values, (
            name
        )


def test_zscores_each_direction():
    rules = by_name(convert("sdk_automations.json", registry="model"))
    assert [
        (rules[n].event.window, rules[n].event.threshold, rules[n].event.direction)
        for n in (
            "loss-spike-any",
            "loss-spike-up",
            "acc-dip",
        )
    ] == [(8, 2.0, "any"), (6, 1.5, "increase"), (5, 1.0, "decrease")]


def test_run_filters_on_name_and_user_keep_their_meaning():
    rules = by_name(convert("sdk_automations.json", registry="model"))
    assert rules["sweep-loss"].run_filter.name_regex == "^sweep-"
    assert rules["alice-acc"].run_filter.user == "alice"
    assert rules["alice-acc"].run_filter.name_regex is None
    # equality and substrings are literal: the regex characters in them are escaped
    assert rules["baseline-acc"].run_filter.name_regex == r"^base\+line \(v1\)$"
    assert rules["baseline-acc"].run_filter.user == "alice"
    assert rules["resnet-runs-loss"].run_filter.name_regex == r"resnet\.50"
    assert rules["acc-avg-above"].run_filter is None


def test_run_states_and_their_filter():
    rules = by_name(convert("sdk_automations.json", "graphql_triggers.json", registry="model"))
    assert rules["run-finished-or-failed"].event.states == ("failed", "finished")
    assert rules["run-finished-or-failed"].description == "Tell the team when a run ends"
    assert rules["sweep-started"].event.states == ("running",)
    assert rules["sweep-started"].enabled is False
    assert rules["GQL run crashed"].event.states == ("failed",)  # W&B's CRASHED
    assert rules["GQL run crashed"].run_filter.name_regex == "nightly"


def test_artifact_events_and_scopes():
    rules = by_name(convert("sdk_automations.json", "graphql_triggers.json", registry="model"))
    shapes = {
        name: (
            rules[name].scope.model_dump(mode="json", exclude_none=True),
            rules[name].event.model_dump(mode="json"),
        )
        for name in rules
        if not rules[name].event.is_run_event
    }
    assert shapes == {
        "prod-alias": ({"project": "acme/vision"}, {"type": "artifact_alias_added", "alias_regex": "^prod"}),
        "registry-staging-alias": (
            {"registry": "model"},
            {"type": "artifact_alias_added", "alias_regex": "^staging$"},
        ),
        "mnist-golden": (
            {"entity": "acme", "collection": "mnist"},
            {"type": "artifact_alias_added", "alias_regex": "^golden$"},
        ),
        "mnist-new-version": (
            {"entity": "acme", "collection": "mnist"},
            {"type": "artifact_version_created", "collection_type": None},
        ),
        "europe-tag": ({"project": "acme/vision"}, {"type": "artifact_tag_added", "tag_regex": "^eu-"}),
        "europe-tag-removed": (
            {"project": "acme/vision"},
            {"type": "artifact_tag_removed", "tag_regex": "^eu-west$"},
        ),
        "registry-link": ({"registry": "model"}, {"type": "registry_version_linked", "alias_regex": None}),
        "resnet-link-candidate": (
            {"registry": "model", "collection": "resnet"},
            {"type": "registry_version_linked", "alias_regex": "candidate"},
        ),
        "registry-unlink": ({"registry": "model"}, {"type": "artifact_unlinked", "alias_regex": None}),
        "collection-tag-added": (
            {"registry": "model"},
            {"type": "collection_tag_added", "tag_regex": "^reviewed$"},
        ),
        "collection-tag-removed": (
            {"project": "acme/vision"},
            {"type": "collection_tag_removed", "tag_regex": "^tmp"},
        ),
        "org-wide-alias": (
            {"entity": "acme-org"},
            {"type": "artifact_alias_added", "alias_regex": "^(production|prod)$"},
        ),
        "GQL registry alias": (
            {"registry": "model"},
            {"type": "artifact_alias_added", "alias_regex": "^(prod|staging)$"},
        ),
        "GQL collection link": (
            {"registry": "model", "collection": "resnet"},
            {"type": "registry_version_linked", "alias_regex": None},
        ),
        "GQL entity tag": (
            {"entity": "acme-research"},
            {"type": "artifact_tag_added", "tag_regex": "^eu-west$"},
        ),
        # a collection whose JSON names its project (and that project's entity) keeps them
        "GQL dataset versions": (
            {"project": "acme-data/vision", "collection": "mnist"},
            {"type": "artifact_version_created", "collection_type": None},
        ),
        "GQL unlink": ({"registry": "model"}, {"type": "artifact_unlinked", "alias_regex": "^production$"}),
    }
    # a collection of W&B's JSON without its project: every same-named collection of the entity, said in a note
    notes = {
        item.wandb_name: item.notes for item in convert("sdk_automations.json", registry="model").converted
    }
    assert any("every project of acme" in note for note in notes["mnist-golden"])


def test_actions_slack_webhook_no_op_with_templated_payloads_and_placeholders():
    result = convert("sdk_automations.json", "graphql_triggers.json", registry="model")
    rules = by_name(result)
    slack = rules["registry-staging-alias"].action
    assert (slack.type, slack.webhook_url.env, slack.title, slack.message, slack.severity) == (
        "slack",
        "SLACK_WEBHOOK_11",
        "${alias} on ${artifact_version_string}",
        "by ${event_author}",
        "info",
    )
    assert rules["run-finished-or-failed"].action.severity == "error"
    hook = rules["acc-avg-above"].action
    assert hook.url == "https://wandb-webhook-12.invalid/"  # the SDK's JSON has no URL: never reachable
    assert hook.payload["metric"] == {"name": "${metric_name}", "value": "${metric_value}"}
    assert rules["acc-min-at-least"].action.type == "no_op"
    # the raw GraphQL form carries the integration: its URL, its Slack channel and workspace
    gql = rules["GQL threshold above"].action
    assert (gql.url, gql.access_token.env) == (
        "https://ci.example.com/hooks/wandb",
        "WANDB_WEBHOOK_CI_TRIGGER_TOKEN",
    )
    change = rules["GQL change"].action
    assert (change.token.env, change.channel, change.severity) == (
        "SLACK_TOKEN_ACME_ML",
        "#ml-alerts",
        "warn",
    )
    assert sorted(result.placeholders) == [
        "SLACK_TOKEN_ACME_ML",
        "SLACK_WEBHOOK_11",
        "WANDB_WEBHOOK_CI_TRIGGER_TOKEN",
    ]
    assert "Slack incoming-webhook URL" in result.placeholders["SLACK_WEBHOOK_11"].meaning


def test_refusals_name_the_automation_and_the_field_and_the_rest_still_converts():
    result = convert("sdk_refused.json", "graphql_refused.json", "graphql_triggers.json")
    assert len(result.converted) == 10  # the good file is not held back by the others
    refused = {(r.automation, r.field): r.message for r in result.refusals}
    threshold = "event.filter.run_metric_filter.threshold_filter.cmp_op"
    assert set(refused) == {
        ("acc-equals", threshold),
        ("acc-not-equal", threshold),
        ("launch-eval", "action.template"),
        ("ask-aria", "action.prompt"),
        ("lr-runs-only", "event.filter.run_filter.config.lr"),
        ("GQL killed", "event.filter.run_state_filter.states"),
        ("GQL weave", "event.eventType"),
        ("GQL either run", "event.filter.run_filter"),
        ("GQL push", "action"),
        ("GQL bad filter", "event.filter"),
    }
    assert "W&B's own SDK cannot read" in refused[("acc-equals", threshold)]
    assert 'operator: "=="' in refused[("acc-equals", threshold)]
    assert "ARIA" in refused[("ask-aria", "action.prompt")]
    assert "Launch job" in refused[("launch-eval", "action.template")]
    assert all(r.source.endswith("refused.json") for r in result.refusals)
    text = str(result.refusals[0])
    assert text.startswith("sdk_refused.json: automation 'acc-equals': event.filter.")


def test_without_an_entity_a_project_is_refused_but_an_entity_scope_converts():
    result = convert("graphql_triggers.json", entity=None)
    refused = {r.automation: (r.field, r.message) for r in result.refusals}
    assert refused["GQL threshold above"] == (
        "scope.name",
        "W&B names project 'vision' without its entity: pass --entity E",
    )
    assert {item.wandb_name for item in result.converted} == {
        "GQL registry alias",
        "GQL collection link",
        "GQL entity tag",
        "GQL dataset versions",  # its project names its entity
        "GQL unlink",
    }


def test_a_registry_collection_without_its_registry_asks_for_one():
    result = convert("sdk_automations.json", registry=None)
    assert [(r.automation, r.field) for r in result.refusals] == [("resnet-link-candidate", "scope")]
    assert "--registry NAME" in result.refusals[0].message


def test_bad_json_and_files_without_automations_are_named():
    result = import_wandb([("a.json", '{"name": '), ("b.json", '{"data": {}}')], entity="acme")
    assert [str(r) for r in result.refusals] == [
        "a.json: not JSON (line 1, column 10: Expecting value)",
        "b.json: no W&B automation found (an object with name, event and action)",
    ]


def test_names_are_made_valid_and_unique():
    trigger = json.loads((FIXTURES / "sdk_automations.json").read_text())[7]
    twice = [{**trigger, "name": "Loss: drop / 25%"}, {**trigger, "name": "Loss: drop / 25%"}]
    result = import_wandb([("x.json", json.dumps(twice))], entity="acme")
    assert [item.automation.name for item in result.converted] == ["Loss- drop - 25-", "Loss- drop - 25--2"]
    assert "renamed from 'Loss: drop / 25%'" in result.converted[0].notes[0]


def test_names_from_the_json_never_break_the_yaml_comments_and_deep_json_is_refused():
    trigger = json.loads((FIXTURES / "graphql_triggers.json").read_text())["data"]["scope"]["triggers"][
        "edges"
    ][0]
    node = trigger["node"]
    node["id"] = "x\nname: injected"
    node["action"]["integration"] = {"id": "1", "urlEndpoint": None, "name": "a\nb: c"}
    result = import_wandb([("x.json", json.dumps(node))], entity="acme")
    text = rule_yaml(result.converted[0])
    assert [rule.automation for rule in parse_rules_text(text)] == [result.converted[0].automation]
    header = text.splitlines()[:2]
    assert header[0].startswith(
        "# imported by `engine rules import-wandb` from W&B automation 'GQL threshold above'"
    )
    assert header[1].startswith(
        "# note: action.url: W&B's JSON does not carry the URL of webhook integration a b: c"
    )
    assert text.splitlines()[2] == "name: GQL threshold above"

    deep = import_wandb([("deep.json", "[" * 100_000 + "]" * 100_000)])
    assert [str(r) for r in deep.refusals] == ["deep.json: JSON nested too deeply"]
