"""The stop_run action in rule files: run events only, nothing to digest or rate-limit."""

from __future__ import annotations

import textwrap

import pytest

from engine.exceptions import RuleValidationError
from engine.rules import StopRunAction, parse_rules_text


def issues_of(text: str, file: str = "rules/stop.yaml") -> list[str]:
    with pytest.raises(RuleValidationError) as exc:
        parse_rules_text(textwrap.dedent(text), file)
    return [str(issue) for issue in exc.value.issues]


def test_a_loss_rule_may_stop_its_runs():
    (loaded,) = parse_rules_text(
        textwrap.dedent(
            """\
            name: stop-on-divergence
            scope: {project: acme/vision}
            event: {type: run_metric_threshold, metric: loss, window: 1, operator: ">", threshold: 1000000}
            action: {type: stop_run}
            """
        ),
        "rules/stop.yaml",
    )
    assert isinstance(loaded.automation.action, StopRunAction)
    assert loaded.automation.to_json()["action"] == {"type": "stop_run"}  # nothing unset is written


@pytest.mark.parametrize(
    ("scope", "event"),
    [
        ("{project: acme/vision}", "{type: artifact_version_created}"),
        ("{project: acme/vision}", "{type: artifact_alias_added, alias_regex: prod}"),
        ("{registry: models}", "{type: registry_version_linked}"),
    ],
)
def test_stop_run_on_an_artifact_or_registry_event_is_refused_at_its_line(scope, event):
    issues = issues_of(
        f"""\
        name: stop-on-artifact
        scope: {scope}
        event: {event}
        action:
          type: stop_run
        """
    )
    kind = event.split("type: ")[1].split(",")[0].rstrip("}")
    assert issues == [
        f"rules/stop.yaml:5: action.type: stop_run stops a run: it needs a run event, and {kind} is not one"
    ]


def test_digest_and_rate_limit_do_not_apply_to_stop_run():
    issues = issues_of(
        """\
        name: stop-digest
        scope: {project: acme/vision}
        event: {type: run_state, states: [failed]}
        action:
          type: stop_run
          digest: 10m
          rate_limit: {count: 1, per: 1h}
        """
    )
    assert issues == [
        "rules/stop.yaml:6: action.digest: stop_run stops each run it fires for, at once: digest does not apply",
        "rules/stop.yaml:7: action.rate_limit: stop_run stops each run it fires for, at once: rate_limit does not "
        "apply",
    ]
