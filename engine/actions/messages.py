"""What a message about a trigger says, whichever service carries it (Slack, Discord, Teams,
e-mail, PagerDuty): its default title and sentence, and the facts listed under it.

Each sender lays these out for its service and escapes them for its markup; the defaults
here are templates (rendered by `templates.render_text`) in Slack's mrkdwn, which `plain`
turns into text for the services that read other markup or none.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from engine.actions.http import Attempt, post_json
from engine.actions.secrets import REDACTED
from engine.settings import Settings

DEFAULT_TITLE = "${automation_name}"
# By `${event_type}`; used when the action has no `message`.
DEFAULT_MESSAGES = {
    "RUN_METRIC": "`${metric_filter}` held for run *${run_name}* in ${entity_name}/${project_name}.",
    "RUN_METRIC_CHANGE": "`${metric_filter}` held for run *${run_name}* in ${entity_name}/${project_name}.",
    "RUN_STATE": "Run *${run_name}* in ${entity_name}/${project_name} is now *${run_status}*.",
    "CREATE_ARTIFACT": "New artifact version *${artifact_version_string}*.",
    "ADD_ARTIFACT_ALIAS": "Alias *${alias}* added to *${artifact_version_string}*.",
    "ADD_ARTIFACT_TAG": "Tag *${tag}* added to *${artifact_version_string}*.",
    "LINK_ARTIFACT": "*${artifact_version_string}* linked into registry *${registry_name}*.",
    "RUN_ALERT": "Alert *${alert_title}* (${alert_level}) from run *${run_name}* in ${entity_name}/${project_name}: ${alert_text}",
    "REMOVE_ARTIFACT_TAG": "Tag *${tag}* removed from *${artifact_version_string}*.",
    "UNLINK_ARTIFACT": "*${artifact_version_string}* unlinked from registry *${registry_name}*.",
    "ADD_COLLECTION_TAG": "Tag *${tag}* added to collection *${artifact_collection_name}*.",
    "REMOVE_COLLECTION_TAG": "Tag *${tag}* removed from collection *${artifact_collection_name}*.",
}
_MARKUP = re.compile(r"[*`]")


def default_message(event_type: str) -> str:
    """The default sentence (a template, in Slack mrkdwn) of an event kind."""
    return DEFAULT_MESSAGES.get(event_type, "${event_type}")


def plain(template: str) -> str:
    """A default template without its mrkdwn emphasis (the `*` and backticks of the template
    itself; values substituted later are not touched)."""
    return _MARKUP.sub("", template)


def facts(ctx: Mapping[str, str]) -> list[tuple[str, str]]:
    """(label, value) of what applies to the trigger, in the order messages show them: the
    automation, run, artifact, metric (with its step), value, window, condition, run status,
    alias, tag and registry. Values are raw text; those that do not apply are left out."""
    metric = ctx.get("metric_name", "")
    if metric and ctx.get("metric_step"):
        metric = f"{metric} (step {ctx['metric_step']})"
    found = [
        ("Automation", ctx.get("automation_name", "")),
        ("Run", ctx.get("run_name") or ctx.get("run_id") or ""),
        ("Artifact", ctx.get("artifact_version_string", "")),
        ("Metric", metric),
        ("Value", ctx.get("metric_value", "")),
        ("Window values", ctx.get("metric_values", "")),
        ("Condition", ctx.get("metric_filter", "")),
        ("Run status", ctx.get("run_status", "") if ctx.get("event_type") == "RUN_STATE" else ""),
        ("Alias", ctx.get("alias", "")),
        ("Tag", ctx.get("tag", "")),
        ("Registry", ctx.get("registry_name", "")),
        ("Alert", ctx.get("alert_title", "")),
        ("Level", ctx.get("alert_level", "")),
    ]
    return [(label, value) for label, value in found if value]


def link(ctx: Mapping[str, str]) -> str | None:
    """The run's page when ENGINE_BASE_URL makes it a web address, else None."""
    url = ctx.get("run_url", "")
    return url if url.startswith(("http://", "https://")) else None


def trigger_link(ctx: Mapping[str, str]) -> str | None:
    """The trigger's "why it fired" page when ENGINE_BASE_URL makes it a web address, else None."""
    url = ctx.get("trigger_url", "")
    return url if url.startswith(("http://", "https://")) else None


def footer(ctx: Mapping[str, str]) -> str:
    """`trigger #12 · 2026-…Z · RUN_METRIC`: which trigger, when, what kind."""
    parts = (
        f"trigger #{ctx['trigger_id']}" if ctx.get("trigger_id") else "",
        ctx.get("fired_at", ""),
        ctx.get("event_type", ""),
    )
    return " · ".join(part for part in parts if part)


def cut(text: str, limit: int) -> str:
    """`text` within `limit` characters, an ellipsis marking a cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def post_message(
    delivery_id: str, message: Any, url: str, url_env: str, *, timeout: float, settings: Settings
) -> Attempt:
    """POST a message to an incoming webhook whose URL is a secret (Slack, Discord, Teams):
    the same request code as webhooks (address policy, redirects, capped answer); the attempt
    log shows `$NAME [redacted]` instead of the URL."""
    return post_json(
        url,
        json.dumps(message, ensure_ascii=False, allow_nan=False).encode("utf-8"),
        {"Content-Type": "application/json", "X-Automation-Delivery": delivery_id},
        timeout=timeout,
        allow_hosts=settings.webhook_allow_hosts,
        log_url=f"${url_env} {REDACTED}",
    )
