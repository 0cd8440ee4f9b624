"""The rule models from Python: defaults, normalisation, cross-field rules, JSON round trip."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import ValidationError

from engine.rules import (
    ArtifactAliasAdded,
    ArtifactVersionCreated,
    Automation,
    EnvSecret,
    NoOpAction,
    RegistryVersionLinked,
    RunMetricChange,
    RunMetricThreshold,
    RunState,
    Scope,
    SlackAction,
    WebhookAction,
    format_duration,
    parse_duration,
)
from engine.rules.events import EVENT_CLASSES, RUN_EVENT_TYPES
from engine.rules.regex import RegexError, check_regex

PROJECT = {"project": "acme/vision"}


def rule(**overrides):
    data = {
        "name": "r",
        "scope": PROJECT,
        "event": {"type": "run_metric_threshold", "metric": "accuracy", "operator": ">", "threshold": 0.6},
        "action": {"type": "no_op"},
    }
    data.update(overrides)
    return Automation.model_validate(data)


def messages(exc: pytest.ExceptionInfo[ValidationError]) -> list[tuple[tuple, str]]:
    return [(e["loc"], e["msg"]) for e in exc.value.errors()]


# -- defaults (SPEC section 2) ----------------------------------------------------------------
def test_threshold_defaults():
    event = rule().event
    assert isinstance(event, RunMetricThreshold)
    assert (event.window, event.aggregation) == (5, "avg")


def test_change_defaults():
    event = rule(
        event={"type": "run_metric_change", "metric": "loss", "direction": "decrease", "amount": 0.25}
    ).event
    assert isinstance(event, RunMetricChange)
    assert (event.current_window, event.prior_window, event.aggregation, event.change) == (
        10,
        50,
        "avg",
        "relative",
    )


def test_automation_defaults():
    automation = rule()
    assert automation.enabled is True
    assert automation.description == ""
    assert automation.run_filter is None
    assert automation.cooldown == timedelta(hours=24)


def test_webhook_defaults():
    action = WebhookAction(type="webhook", url="https://ci.example.com/hook")
    assert (action.timeout, action.max_attempts, action.headers, action.payload) == (
        10.0,
        16,
        {},
        None,
    )  # over an hour


def test_event_class_metadata():
    assert {cls.wandb_name for cls in EVENT_CLASSES} == {
        "RUN_METRIC", "RUN_METRIC_CHANGE", "RUN_STATE", "CREATE_ARTIFACT",
        "ADD_ARTIFACT_ALIAS", "ADD_ARTIFACT_TAG", "LINK_ARTIFACT",
        "RUN_METRIC_ZSCORE", "RUN_METRIC_NONFINITE", "RUN_STALLED",
        "RUN_ALERT", "REMOVE_ARTIFACT_TAG", "UNLINK_ARTIFACT", "ADD_COLLECTION_TAG", "REMOVE_COLLECTION_TAG",
    }  # fmt: skip
    assert {
        "run_metric_threshold", "run_metric_change", "run_state", "run_metric_zscore", "run_metric_nonfinite",
        "run_stalled", "run_alert",
    } == RUN_EVENT_TYPES  # fmt: skip
    assert RunState.is_run_event and not ArtifactAliasAdded.is_run_event


# -- normalisation ------------------------------------------------------------------------------
def test_crashed_is_failed_deduplicated_and_sorted():
    event = rule(event={"type": "run_state", "states": ["running", "crashed", "failed", "running"]}).event
    assert event.states == ("failed", "running")


def test_killed_is_refused_with_its_reason():
    with pytest.raises(ValidationError) as exc:
        rule(event={"type": "run_state", "states": ["failed", "killed"]})
    assert messages(exc) == [
        (("event", "run_state", "states", 1), "killed runs never trigger an automation: remove `killed`")
    ]


def test_system_dot_metric_becomes_system_slash():
    event = rule(
        event={"type": "run_metric_threshold", "metric": "system.cpu", "operator": ">", "threshold": 90}
    ).event
    assert event.metric == "system/cpu"
    assert event.is_system_metric and event.metric_key == "cpu"
    assert rule().event.is_system_metric is False


@pytest.mark.parametrize("written", ["system/gpu.0.temp", "system.gpu.0.temp"])
def test_the_sdk_the_rules_and_the_compiler_agree_on_system_metrics(written):
    from engine.compiler import metric_table
    from engine.sdk.validate import check_key

    # What a rule reads from system_metrics is exactly what a user's run.log may not write.
    metric = rule(
        event={"type": "run_metric_threshold", "metric": written, "operator": ">", "threshold": 90}
    ).event.metric
    assert metric_table(metric) == "system_metrics"
    with pytest.raises(ValueError, match="reserved for system metrics"):
        check_key(written)
    assert check_key(metric, system=True) == metric


def test_metric_name_limits():
    for bad in ("", "a" * 257, "loss\nx", "system."):
        with pytest.raises(ValidationError):
            rule(event={"type": "run_metric_threshold", "metric": bad, "operator": ">", "threshold": 1})


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("1m", 60),
        ("24h", 86_400),
        ("7d", 604_800),
        ("1h30m", 5_400),
        ("1d2h3m4s", 93_784),
        (120, 120),
        # the grammar of `--since` too: weeks, and a decimal number of a unit
        ("2w", 1_209_600),
        ("1w1d", 691_200),
        ("1.5h", 5_400),
        ("1h 30m", 5_400),
    ],
)
def test_cooldown_parsing(text, seconds):
    assert rule(cooldown=text).cooldown == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("30s", "must be at least 1m"),
        (59, "must be at least 1m"),
        ("1x", "'1x' is not a duration: write e.g. 90s, 1m, 24h, 7d or 1h30m"),
        ("30m1h", "'30m1h' is not a duration: write e.g. 90s, 1m, 24h, 7d or 1h30m"),
        ("", "'' is not a duration: write e.g. 90s, 1m, 24h, 7d or 1h30m"),
        (10**12, "is too long (at most 3650d)"),
        ("999999999999w", "is too long (at most 3650d)"),
        ("1.0000005m", "must be a whole number of seconds"),
        (True, "must be a duration such as 90s, 1m, 24h, 7d or 1h30m"),
    ],
)
def test_bad_cooldowns(value, message):
    with pytest.raises(ValidationError) as exc:
        rule(cooldown=value)
    assert messages(exc) == [(("cooldown",), message)]


def test_duration_format_is_the_inverse_of_parse():
    for text in ("1m", "90s", "1h30m", "1d", "7d", "1d2h3m4s", "2w", "1.5h"):
        assert parse_duration(format_duration(parse_duration(text))) == parse_duration(text)
    assert format_duration(timedelta(seconds=90)) == "1m30s"


# -- cross-field rules --------------------------------------------------------------------------
def test_run_event_needs_a_project_scope():
    with pytest.raises(ValidationError) as exc:
        rule(scope={"registry": "model"})
    assert messages(exc) == [
        (
            ("scope", "registry"),
            "run_metric_threshold events need a project scope (scope: {project: entity/project}) "
            "or an entity scope (scope: {entity: NAME})",
        )
    ]


def test_registry_link_needs_a_registry_scope():
    with pytest.raises(ValidationError) as exc:
        rule(event={"type": "registry_version_linked"})
    assert messages(exc) == [
        (("scope", "project"), "registry_version_linked needs a registry scope (scope: {registry: NAME})")
    ]
    assert isinstance(
        rule(scope={"registry": "model"}, event={"type": "registry_version_linked"}).event,
        RegistryVersionLinked,
    )


def test_alias_events_work_in_both_scopes():
    event = {"type": "artifact_alias_added", "alias_regex": "^production$"}
    assert rule(scope=PROJECT, event=event).scope.project == "acme/vision"
    assert rule(scope={"registry": "model", "collection": "resnet"}, event=event).scope.collection == "resnet"


def test_run_filter_and_cooldown_are_for_run_events_only():
    artifact = {"type": "artifact_version_created"}
    with pytest.raises(ValidationError) as exc:
        rule(event=artifact, run_filter={"user": "alice"}, cooldown="1h")
    assert messages(exc) == [
        (
            ("run_filter",),
            "run_filter applies to run events only (run_metric_threshold, run_metric_change, run_state)",
        ),
        (("cooldown",), "cooldown applies to run events only"),
    ]
    assert isinstance(rule(event=artifact).event, ArtifactVersionCreated)


def test_collection_narrows_artifact_events_only():
    with pytest.raises(ValidationError) as exc:
        rule(scope={"project": "acme/vision", "collection": "mnist"})
    assert messages(exc) == [
        (("scope", "collection"), "collection narrows artifact events only, not run_metric_threshold")
    ]


@pytest.mark.parametrize(
    ("scope", "loc", "message"),
    [
        ({}, ("scope",), "give exactly one of project (entity/project), entity or registry"),
        (
            {"project": "a/b", "registry": "m"},
            ("scope", "registry"),
            "give exactly one of project (entity/project), entity or registry",
        ),
        (
            {"project": "a/b", "collection": "x", "collection_regex": "^x"},
            ("scope", "collection_regex"),
            "give collection or collection_regex, not both",
        ),
        (
            {"registry": "m", "collection_regex": "^x"},
            ("scope", "collection_regex"),
            "collection_regex narrows a project scope only; a registry uses collection",
        ),
        (
            {"project": "acme"},
            ("scope", "project"),
            "must be entity/project, each part 1–128 characters: letters, digits, - _ .",
        ),
        (
            {"project": "a/b/c"},
            ("scope", "project"),
            "must be entity/project, each part 1–128 characters: letters, digits, - _ .",
        ),
        ({"registry": "no space"}, ("scope", "registry"), "must be 1–128 characters: letters, digits, - _ ."),
    ],
)
def test_scope_rules(scope, loc, message):
    with pytest.raises(ValidationError) as exc:
        rule(scope=scope, event={"type": "artifact_version_created"})
    assert messages(exc) == [(loc, message)]


@pytest.mark.parametrize(
    ("scope", "event", "loc", "message"),
    [
        ({"project": "a/b"}, {"type": "artifact_unlinked"}, ("scope", "project"),
         "artifact_unlinked needs a registry scope (scope: {registry: NAME})"),
        ({"entity": "a"}, {"type": "artifact_unlinked"}, ("scope", "entity"),
         "artifact_unlinked needs a registry scope (scope: {registry: NAME})"),
        ({"registry": "m"}, {"type": "artifact_tag_removed", "tag_regex": "x"}, ("scope", "registry"),
         "artifact_tag_removed events happen in projects: use a project scope (scope: {project: entity/project})"),
        ({"registry": "m"}, {"type": "run_alert"}, ("scope", "registry"),
         "run_alert events need a project scope (scope: {project: entity/project}) "
         "or an entity scope (scope: {entity: NAME})"),
        ({"project": "a/b", "entity": "a"}, {"type": "run_alert"}, ("scope", "entity"),
         "give exactly one of project (entity/project), entity or registry"),
        ({"entity": "a b"}, {"type": "run_alert"}, ("scope", "entity"),
         "must be 1–128 characters: letters, digits, - _ ."),
        ({"project": "a/b"}, {"type": "run_alert", "levels": ["fatal"]}, ("event", "run_alert", "levels", 0),
         "Input should be 'info', 'warn' or 'error'"),
        ({"project": "a/b"}, {"type": "run_alert", "levels": []}, ("event", "run_alert", "levels"),
         "Value should have at least 1 item after validation, not 0"),
    ],
)  # fmt: skip
def test_new_event_rules(scope, event, loc, message):
    with pytest.raises(ValidationError) as exc:
        rule(scope=scope, event=event)
    assert messages(exc) == [(loc, message)]


def test_new_event_defaults_and_scopes():
    alert = rule(scope={"entity": "acme"}, event={"type": "run_alert", "levels": ["ERROR", "warn", "error"]})
    assert alert.event.levels == ("error", "warn") and alert.event.title_regex is None
    assert (
        alert.event.describe() == "alert level in (error, warn)" and alert.scope.describe() == "entity:acme"
    )
    for scope in ({"entity": "acme"}, {"project": "a/b"}, {"registry": "m"}):
        tagged = rule(scope=scope, event={"type": "collection_tag_added", "tag_regex": "^gold"})
        assert tagged.event.wandb_name == "ADD_COLLECTION_TAG"
    assert rule(scope={"registry": "m"}, event={"type": "artifact_unlinked"}).event.alias_regex is None


def test_a_scope_without_entity_dumps_as_before_entity_scopes_existed():
    # the stored JSON (and so the rule's hash) of a project rule does not change on upgrade
    assert "entity" not in Scope(project="acme/vision").model_dump(mode="json")
    assert Scope(entity="acme").model_dump(mode="json")["entity"] == "acme"
    assert Scope.model_validate(Scope(entity="acme").model_dump(mode="json")) == Scope(entity="acme")


def test_scope_parts():
    scope = Scope(project="acme/vision")
    assert (scope.entity_name, scope.project_name) == ("acme", "vision")
    assert (Scope(entity="acme").entity_name, Scope(entity="acme").describe()) == ("acme", "entity:acme")


# -- actions ----------------------------------------------------------------------------------
def test_literal_secret_is_refused_without_echoing_it():
    with pytest.raises(ValidationError) as exc:
        WebhookAction(type="webhook", url="https://x.example", access_token="hunter2")
    assert messages(exc) == [
        (("access_token",), "secrets come from the environment: write {env: NAME}, never the secret itself")
    ]
    assert "hunter2" not in str(exc.value)


def test_secret_variables_are_known_only_when_named_on_the_action():
    action = WebhookAction.model_validate(
        {
            "type": "webhook",
            "url": "https://x.example",
            "secret": {"env": "CI_HMAC"},
            "payload": {"sig": "${CI_HMAC}"},
        }
    )
    assert action.secret_names == {"CI_HMAC"}
    with pytest.raises(ValidationError) as exc:
        WebhookAction.model_validate(
            {"type": "webhook", "url": "https://x.example", "payload": {"sig": "${CI_HMAC}"}}
        )
    assert messages(exc)[0][0] == ("payload", "sig")


def test_unknown_template_variables_everywhere():
    with pytest.raises(ValidationError) as exc:
        WebhookAction.model_validate(
            {
                "type": "webhook",
                "url": "https://x.example",
                "headers": {"X-Run": "${run_nam}"},
                "payload": {"list": ["ok ${run_name}", {"${nope}": "${metric_value}"}]},
            }
        )
    assert messages(exc) == [
        (("payload", "list", 1, "${nope}"), "unknown template variable ${nope}"),
        (("headers", "X-Run"), "unknown template variable ${run_nam} (did you mean ${run_name}?)"),
    ]


def test_metadata_variables_are_known():
    action = SlackAction.model_validate(
        {
            "type": "slack",
            "webhook_url": {"env": "HOOK"},
            "message": "${artifact_metadata.rows} rows, ${ACCESS_TOKEN}",
        }
    )
    assert action.message.startswith("${artifact_metadata.rows}")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "give exactly one of webhook_url ({env: NAME}) or token ({env: NAME}) with channel"),
        ({"token": {"env": "T"}}, "a token needs a channel"),
        (
            {"webhook_url": {"env": "H"}, "channel": "#x"},
            "an incoming webhook posts to its own channel: remove channel, or use token",
        ),
    ],
)
def test_slack_needs_one_way_in(data, message):
    with pytest.raises(ValidationError) as exc:
        SlackAction.model_validate({"type": "slack", **data})
    assert [m for _, m in messages(exc)] == [message]


def test_env_secret_accepts_only_env_names():
    assert EnvSecret(env="CI_TOKEN").env == "CI_TOKEN"
    for bad in ({"env": "1BAD"}, {"env": "has space"}, {"name": "X"}):
        with pytest.raises(ValidationError):
            EnvSecret.model_validate(bad)


@pytest.mark.parametrize("url", ["ftp://x.example/a", "https://", "not a url", "http://x.example:99999/"])
def test_webhook_url_must_be_http(url):
    with pytest.raises(ValidationError):
        WebhookAction(type="webhook", url=url)


def test_reserved_headers_are_refused():
    with pytest.raises(ValidationError) as exc:
        WebhookAction.model_validate(
            {
                "type": "webhook",
                "url": "https://x.example",
                "access_token": {"env": "T"},
                "headers": {"Authorization": "x"},
            }
        )
    assert messages(exc) == [(("headers", "Authorization"), "the engine sets Authorization itself")]


def test_payload_must_be_finite_json():
    with pytest.raises(ValidationError) as exc:
        WebhookAction.model_validate(
            {"type": "webhook", "url": "https://x.example", "payload": {"x": float("nan")}}
        )
    assert messages(exc) == [(("payload", "x"), "numbers must be finite (JSON has no NaN or infinity)")]


# -- JSON round trip and hashes -----------------------------------------------------------------
ROUND_TRIP = [
    rule(cooldown="1h30m", run_filter={"user": "alice", "name_regex": "^sweep-"}),
    rule(
        event={
            "type": "run_metric_change",
            "metric": "system.cpu",
            "direction": "any",
            "amount": 2,
            "change": "absolute",
        }
    ),
    rule(event={"type": "run_state", "states": ["crashed"]}, cooldown=90),
    rule(
        scope={"project": "a/b", "collection_regex": "^mn"},
        event={"type": "artifact_version_created", "collection_type": "dataset"},
    ),
    rule(scope={"registry": "model"}, event={"type": "registry_version_linked", "alias_regex": "^prod"}),
    rule(
        event={"type": "artifact_tag_added", "tag_regex": "^europe"},
        action={
            "type": "webhook",
            "url": "http://127.0.0.1:8765/x",
            "headers": {"X-A": "${run_id}"},
            "secret": {"env": "S"},
            "payload": {"a": [1, 2.5, None, True, {"b": "${S}"}]},
            "timeout": 2,
            "max_attempts": 1,
        },
    ),
    rule(
        action={"type": "slack", "token": {"env": "T"}, "channel": "#ml", "title": "t", "severity": "error"}
    ),
]


@pytest.mark.parametrize("automation", ROUND_TRIP, ids=lambda a: a.event.type)
def test_json_round_trip(automation):
    data = automation.to_json()
    again = Automation.model_validate(data)
    assert again == automation
    assert again.rule_hash() == automation.rule_hash()
    assert Automation.model_validate(automation.model_dump()) == automation


def test_cooldown_is_written_as_text_and_left_out_for_artifact_events():
    assert rule(cooldown=5400).to_json()["cooldown"] == "1h30m"
    assert "cooldown" not in rule(event={"type": "artifact_version_created"}).to_json()


def test_condition_hash_ignores_description_action_and_cooldown():
    base = rule()
    for changed in (
        rule(description="x"),
        rule(action={"type": "webhook", "url": "https://x.example"}),
        rule(cooldown="1h"),
    ):
        assert changed.condition_hash() == base.condition_hash()
        assert changed.rule_hash() != base.rule_hash()
    for changed in (
        rule(scope={"project": "acme/other"}),
        rule(event={"type": "run_metric_threshold", "metric": "accuracy", "operator": ">", "threshold": 0.7}),
        rule(run_filter={"user": "bob"}),
    ):
        assert changed.condition_hash() != base.condition_hash()


def test_models_are_frozen():
    automation = rule()
    with pytest.raises(ValidationError):
        automation.name = "other"  # type: ignore[misc]
    assert NoOpAction(type="no_op").secret_names == frozenset()


# -- regexes: PostgreSQL judges them (tests/integration/test_rule_regex.py); only NUL is refused here --
@pytest.mark.parametrize(
    "pattern",
    [
        r"^sweep-\d+$",
        r"\y(prod|staging)\y",
        r"[[:alpha:]]+",
        r"(?<=a+)b",
        r"(?i)^latest$",
        r"***=(",
        "(",
        "(?P<n>x)",
    ],
)
def test_regexes_are_left_to_postgres(pattern):
    check_regex(pattern)
    assert rule(run_filter={"name_regex": pattern}).run_filter.name_regex == pattern


def test_a_regex_with_nul_is_refused_without_a_database():
    with pytest.raises(RegexError, match="NUL characters are not allowed"):
        check_regex("a\x00b")
    with pytest.raises(ValidationError, match="invalid regular expression: NUL characters are not allowed"):
        rule(run_filter={"name_regex": "a\x00b"})
