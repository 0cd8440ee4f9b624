"""The automation rule language: models, the YAML loader and the linter (storage: engine.automations).

from engine.rules import load_rules, parse_rules_text, Automation
"""

from engine.rules.actions import (
    Action,
    DiscordAction,
    EmailAction,
    EnvSecret,
    NoOpAction,
    PagerDutyAction,
    SlackAction,
    StopRunAction,
    TeamsAction,
    WebhookAction,
)
from engine.rules.automation import Automation
from engine.rules.duration import format_duration, parse_duration
from engine.rules.events import (
    ArtifactAliasAdded,
    ArtifactTagAdded,
    ArtifactTagRemoved,
    ArtifactUnlinked,
    ArtifactVersionCreated,
    CollectionTagAdded,
    CollectionTagRemoved,
    Event,
    RegistryVersionLinked,
    RunAlert,
    RunMetricChange,
    RunMetricNonfinite,
    RunMetricThreshold,
    RunMetricZscore,
    RunStalled,
    RunState,
)
from engine.rules.lint import lint
from engine.rules.loader import LoadedRule, load_rules, parse_rules_text
from engine.rules.run_filter import RunFilter
from engine.rules.scope import Scope

__all__ = [
    "Action",
    "ArtifactAliasAdded",
    "ArtifactTagAdded",
    "ArtifactTagRemoved",
    "ArtifactUnlinked",
    "ArtifactVersionCreated",
    "Automation",
    "CollectionTagAdded",
    "CollectionTagRemoved",
    "DiscordAction",
    "EmailAction",
    "EnvSecret",
    "Event",
    "LoadedRule",
    "NoOpAction",
    "PagerDutyAction",
    "RegistryVersionLinked",
    "RunAlert",
    "RunFilter",
    "RunMetricChange",
    "RunMetricNonfinite",
    "RunMetricThreshold",
    "RunMetricZscore",
    "RunStalled",
    "RunState",
    "Scope",
    "SlackAction",
    "StopRunAction",
    "TeamsAction",
    "WebhookAction",
    "format_duration",
    "lint",
    "load_rules",
    "parse_duration",
    "parse_rules_text",
]
