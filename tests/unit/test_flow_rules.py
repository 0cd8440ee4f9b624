"""`digest` and `rate_limit` in rule files: what is accepted, what each mistake says (file:line),
and what the outbox reads from a stored action."""

from __future__ import annotations

import json
import textwrap
from datetime import timedelta

import pytest

from engine.actions.flow import controls
from engine.actions.outbox import delivery_rows
from engine.actions.templates import default_payload, render_payload
from engine.exceptions import RuleValidationError
from engine.rules import parse_rules_text


def rule_with(action: str) -> str:
    return textwrap.dedent(
        """\
        name: r
        scope: {project: acme/vision}
        event: {type: run_state, states: [failed]}
        action:
        """
    ) + textwrap.indent(textwrap.dedent(action), "  ")


def issues_of(action: str) -> list[str]:
    with pytest.raises(RuleValidationError) as exc:
        parse_rules_text(rule_with(action), "rules/x.yaml")
    return [str(issue) for issue in exc.value.issues]


def test_digest_and_rate_limit_load_and_dump_back_unchanged():
    (loaded,) = parse_rules_text(
        rule_with(
            """\
            type: webhook
            url: https://ci.example.com/hook
            digest: 10m
            rate_limit: {count: 10, per: 1h}
            payload: {runs: "${digest}", n: "${digest_count}"}
            """
        )
    )
    action = loaded.automation.action
    assert action.digest == timedelta(minutes=10)
    assert (action.rate_limit.count, action.rate_limit.per) == (10, timedelta(hours=1))
    stored = loaded.automation.to_json()["action"]
    assert (stored["digest"], stored["rate_limit"]) == ("10m", {"count": 10, "per": "1h"})
    assert controls(stored) == {
        "digest_seconds": 600.0,
        "rate_count": 10,
        "rate_per_seconds": 3600.0,
        "rate_text": "10 per 1h",
    }
    assert delivery_rows(1, [stored])[0]["rate_count"] == 10


def test_an_action_without_controls_has_none():
    (loaded,) = parse_rules_text(rule_with("type: slack\nwebhook_url: {env: SLACK}\n"))
    assert controls(loaded.automation.to_json()["action"]) == {
        "digest_seconds": None,
        "rate_count": None,
        "rate_per_seconds": None,
        "rate_text": None,
    }


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ("type: webhook\nurl: https://x.example\ndigest: 30s\n", "rules/x.yaml:7: action.digest: must be at least 1m"),
        ("type: webhook\nurl: https://x.example\ndigest: soon\n", "rules/x.yaml:7: action.digest: 'soon' is not a duration"),
        ("type: webhook\nurl: https://x.example\nrate_limit: {count: 0, per: 1h}\n", "rules/x.yaml:7: action.rate_limit.count: must be ≥ 1"),
        ("type: webhook\nurl: https://x.example\nrate_limit: {count: 3}\n", "rules/x.yaml:7: action.rate_limit.per: field required"),
        ("type: webhook\nurl: https://x.example\nrate_limit: {count: 3, per: 0.5s}\n", "rules/x.yaml:7: action.rate_limit.per: must be a whole number of seconds"),
        ("type: no_op\ndigest: 10m\n", "rules/x.yaml:6: action.digest: no_op sends nothing: digest does not apply"),
        ("type: slack\nwebhook_url: {env: S}\nmessage: \"${digest_count} runs\"\n", "${digest_count} needs `digest:` on the action"),
    ],
)  # fmt: skip
def test_each_mistake_says_what_and_where(action, expected):
    issues = issues_of(action)
    assert any(expected in issue for issue in issues), issues


def test_a_digest_renders_as_a_list_and_its_default_payload_carries_every_trigger():
    items = [{"run_id": "a", "metric_value": "2.0"}, {"run_id": "b", "metric_value": "3.0"}]
    ctx = {
        "automation_name": "sweep",
        "event_type": "RUN_METRIC",
        "run_id": "a",
        "digest": '[{"run_id": "a", "metric_value": "2.0"}, {"run_id": "b", "metric_value": "3.0"}]',
        "digest_count": "2",
    }
    assert render_payload({"all": "${digest}", "text": "n=${digest_count}"}, ctx) == (
        b'{"all":[{"run_id":"a","metric_value":"2.0"},{"run_id":"b","metric_value":"3.0"}],"text":"n=2"}'
    )
    body = default_payload(ctx)
    assert body["digest"] == items and body["digest_count"] == 2 and body["automation_name"] == "sweep"
    assert "run_id" not in body  # one trigger's values are in the list, not on top


def test_a_slack_digest_lists_its_triggers_not_the_first_ones_fields():
    from engine.actions.slack import DIGEST_LINES, build_message
    from engine.rules.actions import SlackAction

    items = [{"run_name": f"run-<{i}>", "metric_value": f"{i}.5"} for i in range(DIGEST_LINES + 5)]
    ctx = {
        "automation_name": "sweep",
        "event_type": "RUN_METRIC",
        "metric_filter": "loss > 1",
        "entity_name": "acme",
        "project_name": "vision",
        "run_name": "run-<0>",
        "digest": json.dumps(items),
        "digest_count": str(len(items)),
    }
    action = SlackAction.model_validate({"type": "slack", "webhook_url": {"env": "S"}, "digest": "10m"})
    message = build_message(action, ctx)
    text = message["blocks"][1]["text"]["text"]
    assert text.splitlines()[0] == f"*{len(items)} triggers* of `loss &gt; 1` in acme/vision:"
    assert text.splitlines()[1] == "• run-&lt;0&gt;: 0.5"
    assert text.splitlines()[-1] == "… and 5 more" and len(text.splitlines()) == DIGEST_LINES + 2
    assert message["text"].startswith(":information_source: sweep: *25 triggers*")


def test_an_action_without_controls_dumps_as_before_so_stored_rules_keep_their_hash():
    (loaded,) = parse_rules_text(rule_with("type: webhook\nurl: https://ci.example.com/hook\n"))
    stored = loaded.automation.to_json()["action"]
    assert "digest" not in stored and "rate_limit" not in stored
