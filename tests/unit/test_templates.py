"""Template rendering (SPEC section 3, "Templates") and the variables of each event kind."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from engine.actions.context import compose, sample_context
from engine.actions.templates import default_payload, render_payload, render_text
from engine.rules import Automation
from engine.rules.events import EVENT_TYPES
from engine.rules.variables import APPLIES, VARIABLES, WANDB_EVENT_TYPES, is_known_variable, variables_in
from engine.settings import Settings

FIRED = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
NASTY = 'run "quoted"\nnext line\t\\ back'

RULES = {
    "run_metric_threshold": {
        "name": "acc",
        "event": {
            "type": "run_metric_threshold",
            "metric": "accuracy",
            "window": 3,
            "aggregation": "avg",
            "operator": ">",
            "threshold": 0.6,
        },
    },
    "run_metric_change": {
        "name": "loss-drop",
        "event": {
            "type": "run_metric_change",
            "metric": "loss",
            "current_window": 2,
            "prior_window": 3,
            "aggregation": "avg",
            "change": "relative",
            "direction": "decrease",
            "amount": 0.25,
        },
    },
    "run_state": {"name": "failed", "event": {"type": "run_state", "states": ["failed"]}},
    "artifact_version_created": {"name": "new-data", "event": {"type": "artifact_version_created"}},
    "artifact_alias_added": {
        "name": "prod",
        "event": {"type": "artifact_alias_added", "alias_regex": "prod"},
    },
    "artifact_tag_added": {"name": "tagged", "event": {"type": "artifact_tag_added", "tag_regex": "eu"}},
    "registry_version_linked": {"name": "linked", "event": {"type": "registry_version_linked"}},
}


def row_for(kind: str, **extra) -> dict:
    """A `delivery_trigger_context` row as the query returns it for a trigger of `kind`."""
    row = {
        "trigger_id": 42,
        "fired_at": FIRED,
        "kind": kind,
        "automation_name": RULES[kind]["name"],
        "rule": RULES[kind],
        "details": {},
        "event_details": {},
        "entity": "acme",
        "project": "vision",
    }
    if kind.startswith("run_"):
        row |= {"run_id": "r1", "run_name": NASTY, "run_state": "running", "run_user": "alice"}
    if kind == "run_metric_threshold":
        row |= {"metric": "accuracy", "step": 7, "value": 0.62, "window_values": [0.5, 0.66, 0.7]}
    if kind == "run_metric_change":
        row |= {"metric": "loss", "step": 9, "value": -0.4, "window_values": [0.3, 0.3]}
    if kind == "run_state":
        row |= {
            "event_details": {"from": "running", "to": "failed"},
            "run_state": "failed",
            "event_author": "alice",
        }
    if not kind.startswith("run_"):
        row |= {
            "version_id": 11,
            "version_index": 3,
            "collection_name": "mnist",
            "metadata": {"rows": 60000, "split": "train"},
            "version_author": "bob",
            "event_author": "carol",
        }
    if kind == "artifact_alias_added":
        row["alias"] = "production"
    if kind == "artifact_tag_added":
        row["tag"] = "europe"
    if kind == "registry_version_linked":
        row |= {
            "registry_name": "model",
            "registry_collection_name": "resnet",
            "link_index": 1,
            "link_author": "dave",
        }
    return row | extra


def ctx_for(kind: str, **extra) -> dict[str, str]:
    return compose(row_for(kind, **extra), Settings(base_url=""))


ALL_VARIABLES_PAYLOAD = {name: "${" + name + "}" for name in VARIABLES}


def test_render_text_substitutes_and_blanks_what_does_not_apply():
    ctx = {"run_name": "r1", "metric_step": "7", "alias": ""}
    assert (
        render_text("run ${run_name} at ${metric_step}; alias=${alias}; ${nope}", ctx)
        == "run r1 at 7; alias=; "
    )
    assert render_text("no placeholders, $notone {x}", ctx) == "no placeholders, $notone {x}"
    assert (
        render_text("<${run_name}>", {"run_name": "a<b"}, escape=lambda s: s.replace("<", "&lt;"))
        == "<a&lt;b>"
    )


def test_metadata_variables_have_dots():
    ctx = ctx_for("artifact_version_created")
    assert (
        render_text("${artifact_metadata.rows}/${artifact_metadata.split}/${artifact_metadata.x}", ctx)
        == "60000/train/"
    )
    assert is_known_variable("artifact_metadata.rows") and not is_known_variable("artifact_metadata.")
    assert variables_in("${a}-${artifact_metadata.k}") == ["a", "artifact_metadata.k"]


def test_secrets_come_only_from_the_secrets_mapping():
    ctx = {"ACCESS_TOKEN": "from-context-must-not-be-used", "run_name": "r"}
    assert render_text("${ACCESS_TOKEN}|${CI_HMAC}", ctx, {"ACCESS_TOKEN": "tok", "CI_HMAC": "h"}) == "tok|h"
    assert render_text("${ACCESS_TOKEN}", ctx) == ""


def test_payload_escapes_quotes_newlines_and_backslashes():
    ctx = ctx_for("run_metric_threshold")
    body = render_payload({"run": "${run_name}", "text": "run ${run_name}!", "${run_name}": 1}, ctx)
    parsed = json.loads(body)
    assert parsed == {"run": NASTY, "text": f"run {NASTY}!", NASTY: 1}
    assert b"\n" not in body  # the newline is escaped, not raw


def test_payload_keeps_non_string_values_and_renders_nested_ones():
    ctx = ctx_for("run_metric_threshold")
    payload = {
        "n": 3,
        "ok": True,
        "none": None,
        "list": ["${metric_name}", 1.5],
        "obj": {"step": "${metric_step}"},
    }
    assert json.loads(render_payload(payload, ctx)) == {
        "n": 3,
        "ok": True,
        "none": None,
        "list": ["accuracy", 1.5],
        "obj": {"step": "7"},
    }


def test_metric_values_alone_is_a_json_list_and_text_inside_a_string():
    ctx = ctx_for("run_metric_threshold")
    parsed = json.loads(render_payload({"w": "${metric_values}", "s": "w=${metric_values}"}, ctx))
    assert parsed["w"] == [0.5, 0.66, 0.7]
    assert parsed["s"] == "w=[0.5, 0.66, 0.7]"
    # Not applicable (artifact event): the empty string, like any other variable.
    assert json.loads(render_payload({"w": "${metric_values}"}, ctx_for("artifact_tag_added"))) == {"w": ""}


@pytest.mark.parametrize("kind", sorted(RULES))
def test_every_variable_renders_for_every_event_kind(kind):
    ctx = ctx_for(kind)
    parsed = json.loads(render_payload(ALL_VARIABLES_PAYLOAD, ctx, {"ACCESS_TOKEN": "tok"}))
    assert set(parsed) == set(VARIABLES)
    assert parsed["event_type"] == WANDB_EVENT_TYPES[kind]
    assert parsed["automation_name"] == RULES[kind]["name"]
    assert parsed["entity_name"] == "acme" and parsed["project_name"] == "vision"
    assert parsed["trigger_id"] == "42" and parsed["fired_at"] == "2024-05-01T12:00:00+00:00"
    assert parsed["ACCESS_TOKEN"] == "tok"
    applies = set(APPLIES[WANDB_EVENT_TYPES[kind]])
    # Variables that apply have a value here; the others are empty strings.
    for name in VARIABLES:
        if name == "ACCESS_TOKEN":
            continue
        if name in applies:
            assert parsed[name] != "", name
        else:
            assert parsed[name] == "", name


def test_run_metric_threshold_values():
    ctx = ctx_for("run_metric_threshold")
    assert ctx["run_id"] == "r1" and ctx["run_name"] == NASTY and ctx["run_status"] == "running"
    assert ctx["run_url"] == "engine://acme/vision/runs/r1"
    assert (ctx["metric_name"], ctx["metric_value"], ctx["metric_step"]) == ("accuracy", "0.62", "7")
    assert json.loads(ctx["metric_values"]) == [0.5, 0.66, 0.7]
    assert ctx["metric_filter"] == "avg(accuracy) over 3 > 0.6"
    assert ctx["event_author"] == "alice"  # the run's user when the event names nobody


def test_run_metric_change_values():
    ctx = ctx_for("run_metric_change")
    assert ctx["metric_value"] == "-0.4"  # the change d
    assert ctx["metric_filter"] == "avg(loss) over 2 vs prior 3 decreased by ≥ 25%"


def test_run_state_reports_the_state_entered():
    ctx = ctx_for("run_state", run_state="running")  # resumed since: the trigger still says failed
    assert ctx["run_status"] == "failed"
    assert ctx["metric_name"] == ""
    assert (
        ctx["metric_filter"] == "run state in (failed)"
    )  # the rule's event in words, as the evaluator records it


def test_artifact_values():
    ctx = ctx_for("artifact_alias_added")
    assert ctx["artifact_version"] == "artifact://11"
    assert ctx["artifact_version_string"] == "acme/vision/mnist:v3"
    assert ctx["artifact_version_index"] == "3"
    assert ctx["artifact_collection_name"] == "mnist"
    assert ctx["alias"] == "production" and ctx["event_author"] == "carol"
    assert ctx["run_id"] == "" and ctx["run_url"] == ""


def test_registry_values_use_the_registry_collection():
    ctx = ctx_for("registry_version_linked", event_author=None)
    assert ctx["artifact_version_string"] == "model/resnet:v1"
    assert ctx["artifact_version_index"] == "1"
    assert ctx["artifact_collection_name"] == "resnet"
    assert ctx["registry_name"] == "model"
    assert ctx["event_author"] == "dave"  # who linked it


def test_trigger_details_override_computed_values():
    ctx = ctx_for(
        "run_metric_threshold",
        details={"metric_filter": "avg(accuracy) over 5 > 0.6", "event_author": "eve", "other": "x"},
    )
    assert ctx["metric_filter"] == "avg(accuracy) over 5 > 0.6"
    assert ctx["event_author"] == "eve"
    assert "other" not in ctx


def test_run_url_uses_the_base_url():
    ctx = compose(row_for("run_state"), Settings(base_url="https://engine.example.com/"))
    assert ctx["run_url"] == "https://engine.example.com/acme/vision/runs/r1"


@pytest.mark.parametrize("kind", sorted(RULES))
def test_default_payload_has_every_applicable_variable_and_no_secret(kind):
    ctx = ctx_for(kind)
    parsed = json.loads(render_payload(None, ctx, {"ACCESS_TOKEN": "tok", "CI_HMAC": "h"}))
    assert set(APPLIES[WANDB_EVENT_TYPES[kind]]) <= set(parsed)
    assert "ACCESS_TOKEN" not in parsed and "tok" not in json.dumps(parsed) and "CI_HMAC" not in parsed
    if kind == "run_metric_threshold":
        assert parsed["metric_values"] == [0.5, 0.66, 0.7]
        assert "alias" not in parsed
    if kind == "artifact_version_created":
        assert parsed["artifact_metadata.rows"] == "60000"


def test_default_payload_includes_extra_values_that_exist():
    # An artifact produced by a run: the run's variables have values, so they are included.
    ctx = ctx_for("artifact_version_created", run_id="r9", run_name="maker")
    assert default_payload(ctx)["run_name"] == "maker"


def test_the_condition_comes_from_the_rule_when_the_trigger_has_none():
    threshold = {
        "type": "run_metric_threshold",
        "metric": "loss",
        "window": 1,
        "aggregation": "min",
        "operator": "<=",
        "threshold": 2,
    }
    ctx = ctx_for("run_metric_threshold", rule={"name": "low", "event": threshold})
    assert ctx["metric_filter"] == "min(loss) over 1 <= 2"
    # A stored rule this version cannot read leaves it empty rather than failing the delivery.
    assert ctx_for("run_metric_threshold", rule={"event": {"type": "gone"}})["metric_filter"] == ""


def test_every_event_kind_has_its_variable_list():
    assert set(WANDB_EVENT_TYPES) == set(EVENT_TYPES)
    assert set(WANDB_EVENT_TYPES.values()) == set(APPLIES)


def sample_rule(kind: str) -> Automation:
    scope = {"project": "acme/vision"} if kind != "registry_version_linked" else {"registry": "model"}
    return Automation.model_validate(RULES[kind] | {"scope": scope, "action": {"type": "no_op"}})


@pytest.mark.parametrize("kind", sorted(RULES))
def test_sample_context_applies_to_the_kind(kind):
    ctx = sample_context(sample_rule(kind), Settings())
    assert ctx["event_type"] == WANDB_EVENT_TYPES[kind]
    for name in APPLIES[ctx["event_type"]]:
        assert ctx[name] != "", name
