"""Rule files: every problem reported at once, each with file, line and field."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.exceptions import RuleIssue, RuleValidationError
from engine.rules import lint, load_rules, parse_rules_text

REPO = Path(__file__).resolve().parents[2]

GOOD = """\
name: accuracy-above-0.6
scope:
  project: acme/vision
event:
  type: run_metric_threshold
  metric: accuracy
  operator: ">"
  threshold: 0.6
action:
  type: no_op
"""


def issues_of(text: str, file: str = "rules/x.yaml") -> list[str]:
    with pytest.raises(RuleValidationError) as exc:
        parse_rules_text(textwrap.dedent(text), file)
    return [str(issue) for issue in exc.value.issues]


def with_event(event: str, extra: str = "") -> str:
    """A valid rule around an `event:` block (starting at line 4)."""
    return f"name: r\nscope:\n  project: acme/vision\nevent:\n{textwrap.indent(textwrap.dedent(event), '  ')}action:\n  type: no_op\n{extra}"


# -- the example rules ----------------------------------------------------------------------
def test_example_rules_are_valid():
    loaded = load_rules([REPO / "rules"])
    names = {rule.automation.name for rule in loaded}
    assert names == {
        "accuracy-above-0.6", "loss-down-25pct", "run-failed", "cpu-above-90",
        "production-alias", "europe-tag", "model-registry-link", "dataset-latest",
        "loss-spike-zscore", "loss-nan", "run-stalled",
        "training-alert", "europe-tag-removed", "registry-unlinked", "dataset-golden", "dataset-reviewed",
    }  # fmt: skip
    assert all(rule.line >= 1 and rule.file.endswith(".yaml") for rule in loaded)
    assert [w for rule in loaded for w in lint(rule.automation)] == []


def test_issue_text_format():
    assert (
        str(RuleIssue("rules/x.yaml", 12, "event.window", "must be ≥ 1"))
        == "rules/x.yaml:12: event.window: must be ≥ 1"
    )


# -- one clear message per mistake --------------------------------------------------------------
def test_unknown_key_points_at_the_key():
    text = with_event('type: run_metric_threshold\nmetric: loss\nwindw: 3\noperator: "<"\nthreshold: 1\n')
    assert issues_of(text) == ["rules/x.yaml:7: event.windw: unknown key 'windw' (did you mean 'window'?)"]


def test_unknown_top_level_key():
    assert issues_of(GOOD + "descripton: x\n") == [
        "rules/x.yaml:11: descripton: unknown key 'descripton' (did you mean 'description'?)"
    ]


def test_wrong_type():
    text = with_event('type: run_metric_threshold\nmetric: loss\nwindow: five\noperator: "<"\nthreshold: 1\n')
    assert issues_of(text) == ["rules/x.yaml:7: event.window: must be a whole number"]


def test_window_zero():
    text = with_event('type: run_metric_threshold\nmetric: loss\nwindow: 0\noperator: "<"\nthreshold: 1\n')
    assert issues_of(text) == ["rules/x.yaml:7: event.window: must be ≥ 1"]


def test_missing_threshold_points_at_the_parent_mapping():
    text = with_event('type: run_metric_threshold\nmetric: loss\noperator: "<"\n')
    assert issues_of(text) == ["rules/x.yaml:4: event.threshold: field required"]


def test_missing_top_level_keys():
    assert issues_of("name: r\n") == [
        "rules/x.yaml:1: scope: field required",
        "rules/x.yaml:1: event: field required",
        "rules/x.yaml:1: action: field required",
    ]


def test_bad_operator_and_unknown_event_type():
    text = with_event('type: run_metric_threshold\nmetric: loss\noperator: "=>"\nthreshold: 1\n')
    assert issues_of(text) == ["rules/x.yaml:7: event.operator: must be '>', '>=', '<', '<=', '==' or '!='"]
    assert issues_of(with_event("type: run_metrik\n")) == [
        "rules/x.yaml:5: event.type: unknown type 'run_metrik': must be one of 'run_metric_threshold', "
        "'run_metric_change', 'run_metric_zscore', 'run_metric_nonfinite', 'run_state', 'run_stalled', "
        "'artifact_version_created', 'artifact_alias_added', "
        "'artifact_tag_added', 'registry_version_linked', 'run_alert', 'artifact_tag_removed', "
        "'artifact_unlinked', 'collection_tag_added', 'collection_tag_removed'"
    ]


def test_a_regex_is_judged_by_postgres_not_here():
    # PostgreSQL refuses it on apply and `validate --check-db` (tests/integration/test_rule_regex.py)
    (loaded,) = parse_rules_text(with_event("type: artifact_alias_added\nalias_regex: '(prod'\n"))
    assert loaded.automation.event.alias_regex == "(prod"
    text = with_event('type: artifact_alias_added\nalias_regex: "a\\0b"\n')
    assert issues_of(text) == [
        "rules/x.yaml:6: event.alias_regex: invalid regular expression: NUL characters are not allowed"
    ]


def test_killed_is_refused_at_its_list_item():
    text = with_event("type: run_state\nstates:\n  - failed\n  - killed\n")
    assert issues_of(text) == [
        "rules/x.yaml:8: event.states[1]: killed runs never trigger an automation: remove `killed`"
    ]


def test_unknown_template_variable():
    text = """\
    name: r
    scope: {project: acme/vision}
    event: {type: run_state, states: [failed]}
    action:
      type: webhook
      url: https://ci.example.com/hook
      payload:
        run: "${run_nme}"
    """
    assert issues_of(text) == [
        "rules/x.yaml:8: action.payload.run: unknown template variable ${run_nme} (did you mean ${run_name}?)"
    ]


def test_run_event_with_registry_scope():
    text = """\
    name: r
    scope:
      registry: model
    event: {type: run_state, states: [failed]}
    action: {type: no_op}
    """
    assert issues_of(text) == [
        "rules/x.yaml:3: scope.registry: run_state events need a project scope (scope: {project: entity/project}) "
        "or an entity scope (scope: {entity: NAME})"
    ]


def test_literal_secret():
    text = """\
    name: r
    scope: {project: acme/vision}
    event: {type: run_state, states: [failed]}
    action:
      type: webhook
      url: https://ci.example.com/hook
      access_token: s3cr3t-token
    """
    issues = issues_of(text)
    assert issues == [
        "rules/x.yaml:7: action.access_token: secrets come from the environment: write {env: NAME}, never the secret itself"
    ]
    assert "s3cr3t" not in "".join(issues)


def test_cooldown_on_an_artifact_event():
    text = """\
    name: r
    scope: {project: acme/vision}
    event: {type: artifact_tag_added, tag_regex: ^europe}
    cooldown: 1h
    action: {type: no_op}
    """
    assert issues_of(text) == ["rules/x.yaml:4: cooldown: cooldown applies to run events only"]


def test_yaml_syntax_error_has_a_line():
    assert issues_of("name: r\nscope: {project: acme/vision\nevent: x\n") == [
        "rules/x.yaml:3: YAML syntax error: expected ',' or '}', but got ':'"
    ]


def test_several_errors_in_one_file_are_all_reported():
    text = """\
    name: "bad/name"
    scope:
      project: acme
    event:
      type: run_metric_change
      metric: loss
      current_window: 0
      direction: down
    cooldown: soon
    action:
      type: slack
      token: {env: SLACK_TOKEN}
      title: 3
    extra: 1
    """
    assert issues_of(text) == [
        "rules/x.yaml:1: name: must be 1–128 characters: letters, digits, space, - _ .",
        "rules/x.yaml:3: scope.project: must be entity/project, each part 1–128 characters: letters, digits, - _ .",
        "rules/x.yaml:7: event.current_window: must be ≥ 1",
        "rules/x.yaml:8: event.direction: must be 'increase', 'decrease' or 'any'",
        "rules/x.yaml:4: event.amount: field required",
        "rules/x.yaml:9: cooldown: 'soon' is not a duration: write e.g. 90s, 1m, 24h, 7d or 1h30m",
        "rules/x.yaml:13: action.title: must be text (quote it if YAML reads it as a number, date or boolean)",
        "rules/x.yaml:14: extra: unknown key 'extra'",
    ]


def test_errors_of_several_documents_and_files(tmp_path):
    (tmp_path / "a.yaml").write_text(GOOD + "---\nname: [\n")
    (tmp_path / "b.yml").write_text(
        "---\n# only a comment\n---\n" + GOOD.replace("threshold: 0.6", "threshold: high")
    )
    with pytest.raises(RuleValidationError) as exc:
        load_rules([tmp_path])
    assert [str(i) for i in exc.value.issues] == [
        f"{tmp_path}/a.yaml:12: YAML syntax error: expected the node content, but found '<stream end>'",
        f"{tmp_path}/b.yml:11: event.threshold: must be a number",
    ]


def test_duplicate_names_across_files_name_both_places(tmp_path):
    (tmp_path / "one.yaml").write_text(GOOD)
    (tmp_path / "two.yaml").write_text("# the same rule again\n" + GOOD)
    with pytest.raises(RuleValidationError) as exc:
        load_rules([tmp_path / "one.yaml", tmp_path / "two.yaml"])
    assert [str(i) for i in exc.value.issues] == [
        f"{tmp_path}/two.yaml:2: name: duplicate automation name 'accuracy-above-0.6' (also at {tmp_path}/one.yaml:1)"
    ]


def test_file_not_found_and_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RuleValidationError) as exc:
        load_rules([tmp_path / "missing.yaml", tmp_path / "empty"])
    assert [str(i) for i in exc.value.issues] == [
        f"{tmp_path}/missing.yaml: rule file not found: {tmp_path}/missing.yaml",
        f"{tmp_path}/empty: no rule files (*.yaml, *.yml) in {tmp_path}/empty",
    ]


def test_not_a_mapping_aliases_and_python_tags_are_refused():
    text = "- a list\n---\nname: &n r\ndescription: *n\n---\nname: !!python/object/apply:os.system [echo]\n---\n? [a, b]\n: c\n"
    assert issues_of(text) == [
        "rules/x.yaml:1: a rule must be a mapping of keys (name:, scope:, event:, action:)",
        "rules/x.yaml:4: description: YAML aliases (*name) are not supported: write the value out",
        "rules/x.yaml:6: name: unsupported YAML tag !!python/object/apply:os.system",
        "rules/x.yaml:8: keys must be plain text, not a mapping or a list",
    ]


def test_duplicate_keys_and_non_text_keys():
    assert issues_of(GOOD + "name: again\n") == ["rules/x.yaml:11: duplicate key 'name' (first at line 1)"]
    assert issues_of(
        GOOD.replace(
            "action:\n  type: no_op",
            "action:\n  type: webhook\n  url: https://x.example\n  headers: {200: ok}",
        )
    ) == ["rules/x.yaml:12: action.headers: key '200' is read as int: quote it"]


# -- what loads ----------------------------------------------------------------------------------
def test_several_rules_per_file_with_lines(tmp_path):
    path = tmp_path / "many.yaml"
    path.write_text("# header comment\n" + GOOD + "---\n---\n" + GOOD.replace("accuracy-above-0.6", "second"))
    loaded = load_rules([path])
    assert [(r.automation.name, r.file, r.line) for r in loaded] == [
        ("accuracy-above-0.6", str(path), 2),
        ("second", str(path), 14),
    ]


def test_folders_are_read_recursively_and_sorted(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.yml").write_text(GOOD.replace("accuracy-above-0.6", "b"))
    (tmp_path / "a.yaml").write_text(GOOD.replace("accuracy-above-0.6", "a"))
    (tmp_path / "notes.txt").write_text("not a rule")
    assert [r.automation.name for r in load_rules([tmp_path])] == ["a", "b"]


def test_crashed_and_system_dot_are_normalised_from_yaml():
    text = with_event("type: run_state\nstates: [crashed, failed]\n")
    assert parse_rules_text(text)[0].automation.event.states == ("failed",)
    text = with_event('type: run_metric_threshold\nmetric: system.cpu\noperator: ">"\nthreshold: 90\n')
    assert parse_rules_text(text)[0].automation.event.metric == "system/cpu"


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("1h30m", 5400), ("7d", 604800), ("120", 120)])
def test_cooldown_from_yaml(text, seconds):
    loaded = parse_rules_text(GOOD + f"cooldown: {text}\n")
    assert loaded[0].automation.cooldown.total_seconds() == seconds


def test_dates_stay_text():
    loaded = parse_rules_text(GOOD + "description: 2024-05-01\n")
    assert loaded[0].automation.description == "2024-05-01"


# -- linter ----------------------------------------------------------------------------------------
def test_lint_warnings():
    exact = parse_rules_text(
        with_event('type: run_metric_threshold\nmetric: m\nwindow: 1\noperator: "=="\nthreshold: 0.3\n')
    )
    assert [str(w) for w in lint(exact[0].automation)] == [
        "event.operator: == compares floating-point values exactly; a logged 0.1 + 0.2 is not 0.3 (use >= or <=)"
    ]
    change = parse_rules_text(
        with_event("type: run_metric_change\nmetric: m\nprior_window: 5\ndirection: any\namount: 1\n")
    )
    assert [str(w) for w in lint(change[0].automation)] == [
        "event.prior_window: the prior window (5) is shorter than the current one (10); usually it is the longer, steadier baseline"
    ]
    remote = parse_rules_text(
        "name: r\nscope: {project: a/b}\nevent: {type: artifact_alias_added, alias_regex: '\\bprod'}\n"
        "action: {type: webhook, url: 'http://ci.example.com/x'}\n"
    )
    assert [str(w) for w in lint(remote[0].automation)] == [
        "event.alias_regex: in PostgreSQL \\b is a backspace, not a word boundary (use \\y)",
        "action.url: plain http:// to a remote host sends the payload unencrypted (use https://)",
    ]
    assert [(w.field, remote[0].line_of(w.field)) for w in lint(remote[0].automation)] == [
        ("event.alias_regex", 3),
        ("action.url", 4),
    ]
    unanchored = parse_rules_text(
        "name: r\nscope: {project: a/b}\nevent: {type: artifact_alias_added, alias_regex: production}\naction: {type: no_op}\n"
    )
    assert [str(w) for w in lint(unanchored[0].automation)] == [
        "event.alias_regex: 'production' matches anywhere (e.g. also 'preproduction'); write '^production$' for exactly this name"
    ]


# -- robustness: bad input only ever gives RuleValidationError -------------------------------------
YAML_BITS = st.sampled_from(
    ["name: r\n", "scope:\n", "  project: acme/vision\n", "event:\n", "  type: run_state\n", "  states: [killed]\n",
     "action: {type: no_op}\n", "---\n", "- x\n", "&a x\n", "*a\n", "!!python/object:os.system\n", "? [a]\n: b\n",
     "  window: 99999999999999999999999999999999\n", "threshold: .nan\n", "{", "]", ": :", "\t", "'", '"\\x00"', "\x07",
     "<<: {a: 1}\n", "cooldown: 1:30\n", "payload: ${x}\n", "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\n", "!!binary x\n"]
)  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(YAML_BITS | st.text(max_size=20), max_size=12))
def test_random_yaml_never_escapes_as_another_exception(parts):
    text = "".join(parts)
    try:
        parse_rules_text(text, "fuzz.yaml")
    except RuleValidationError as exc:
        assert exc.issues and all(issue.file == "fuzz.yaml" and issue.message for issue in exc.issues)


def test_deep_nesting_is_an_issue_not_a_crash():
    issues = issues_of("a: " + "[" * 5000 + "]" * 5000 + "\n")
    assert len(issues) == 1 and ("nested" in issues[0] or "YAML" in issues[0])


# -- the message actions and templated addresses ---------------------------------------------
def with_action(action: str) -> str:
    """A valid rule around an `action:` block (starting at line 4)."""
    return (
        "name: r\nscope: {project: acme/vision}\nevent: {type: run_state, states: [failed]}\naction:\n"
        + textwrap.indent(textwrap.dedent(action), "  ")
    )


def test_email_discord_teams_and_pagerduty_rules_load():
    for action in (
        "type: email\nto: ['${event_author}@example.com', ml@example.com]\nsubject: '${run_name} failed'\n",
        "type: discord\nwebhook_url: {env: DISCORD_HOOK}\nseverity: error\n",
        "type: teams\nwebhook_url: {env: TEAMS_HOOK}\ntitle: '${automation_name}'\n",
        "type: pagerduty\nrouting_key: {env: PD_KEY}\nseverity: critical\nsummary: '${run_name} failed'\n",
        "type: slack\ntoken: {env: SLACK_BOT}\nchannel: '#ml-${project_name}'\n",
        "type: webhook\nurl: 'https://ci.example.com/hooks/${entity_name}/${project_name}'\n",
    ):
        (loaded,) = parse_rules_text(with_action(action), "rules/x.yaml")
        assert loaded.automation.action.type == action.split("\n")[0].split(": ")[1]


def test_errors_of_the_new_actions_name_file_line_and_field():
    assert issues_of(with_action("type: email\nto: [ml@example.com, 'two words']\n")) == [
        "rules/x.yaml:6: action.to[1]: must be one e-mail address, local@domain (no name, no list)"
    ]
    assert issues_of(with_action("type: email\nto: ml@example.com\nbcc: x@example.com\n")) == [
        "rules/x.yaml:7: action.bcc: unknown key 'bcc' (did you mean 'cc'?)"
    ]
    assert issues_of(with_action("type: discord\nwebhook_url: https://discord.com/api/webhooks/1/x\n")) == [
        "rules/x.yaml:6: action.webhook_url: secrets come from the environment: write {env: NAME}, never the secret itself"
    ]
    assert issues_of(with_action("type: pagerduty\nrouting_key: {env: PD}\nseverity: high\n")) == [
        "rules/x.yaml:7: action.severity: must be 'critical', 'error', 'warning' or 'info'"
    ]
    assert issues_of(with_action("type: slack\ntoken: {env: T}\nchannel: '#ml-${projet_name}'\n")) == [
        "rules/x.yaml:7: action.channel: unknown template variable ${projet_name} (did you mean ${project_name}?)"
    ]
    assert issues_of(
        with_action(
            "type: webhook\nurl: 'https://ci.example.com/${CI_TOKEN}'\naccess_token: {env: CI_TOKEN}\n"
        )
    ) == [
        "rules/x.yaml:6: action.url: ${CI_TOKEN} is a secret: an address is logged, so it must not hold one"
    ]
