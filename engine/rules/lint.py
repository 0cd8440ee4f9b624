"""Probable mistakes in valid rules (warnings, never errors): kept apart from validation,
which refuses impossible rules. Each warning names its field, so that the command line can
point at the field's line (`LoadedRule.line_of`)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from engine.rules.actions import WebhookAction
from engine.rules.automation import Automation
from engine.rules.events import ArtifactAliasAdded, ArtifactTagAdded, RunMetricChange, RunMetricThreshold
from engine.rules.regex import regexes_of

_LOCAL_NAMES = {"localhost", "localhost.localdomain"}


@dataclass(frozen=True)
class LintWarning:
    """One warning about a field of a rule: `event.operator: == compares ...`."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def lint(automation: Automation) -> list[LintWarning]:
    """Warnings about a rule that loads but probably does not do what its author wants.

    >>> from engine.rules import parse_rules_text
    >>> rule = parse_rules_text('''
    ... name: exact
    ... scope: {project: acme/vision}
    ... event: {type: run_metric_threshold, metric: loss, window: 1, operator: "==", threshold: 0.1}
    ... action: {type: no_op}
    ... ''')[0].automation
    >>> [str(warning) for warning in lint(rule)]  # doctest: +ELLIPSIS
    ['event.operator: == compares floating-point values exactly...']
    """
    warnings: list[LintWarning] = []

    def warn(field: str, message: str) -> None:
        warnings.append(LintWarning(field, message))

    event = automation.event
    if isinstance(event, RunMetricThreshold) and event.operator in ("==", "!=") and event.window == 1:
        warn(
            "event.operator",
            f"{event.operator} compares floating-point values exactly; a logged 0.1 + 0.2 is not 0.3 (use >= or <=)",
        )
    if isinstance(event, RunMetricChange):
        if event.prior_window < event.current_window:
            warn(
                "event.prior_window",
                f"the prior window ({event.prior_window}) is shorter than the current one "
                f"({event.current_window}); usually it is the longer, steadier baseline",
            )
        if event.change == "relative" and event.direction == "decrease" and event.amount >= 1:
            warn(
                "event.amount",
                f"a relative decrease of {event.amount:g} (≥ 100 %) needs the metric to reach "
                "zero or change sign; relative amounts are fractions (0.25 = 25 %)",
            )
    if isinstance(event, (ArtifactAliasAdded, ArtifactTagAdded)):
        field = "alias_regex" if isinstance(event, ArtifactAliasAdded) else "tag_regex"
        pattern = getattr(event, field)
        if (
            not pattern.startswith("^")
            and not pattern.endswith("$")
            and pattern.replace("-", "").replace("_", "").isalnum()
        ):
            warn(
                f"event.{field}",
                f"{pattern!r} matches anywhere (e.g. also 'pre{pattern}'); write '^{pattern}$' for exactly this name",
            )
    for loc, pattern in regexes_of(automation):
        if _has_backslash_b(pattern):
            warn(".".join(loc), "in PostgreSQL \\b is a backspace, not a word boundary (use \\y)")
    action = automation.action
    if isinstance(action, WebhookAction):
        parts = urlsplit(action.url)
        if parts.scheme == "http" and not _is_local(parts.hostname or ""):
            warn("action.url", "plain http:// to a remote host sends the payload unencrypted (use https://)")
    return warnings


def _has_backslash_b(pattern: str) -> bool:
    i = 0
    while i < len(pattern) - 1:
        if pattern[i] == "\\":
            if pattern[i + 1] == "b":
                return True
            i += 2
        else:
            i += 1
    return False


def _is_local(host: str) -> bool:
    if host.lower() in _LOCAL_NAMES:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_private or address.is_link_local
