"""The `slack` action (SPEC section 3): a Block Kit message that says what fired and why.

Two ways to post, as the action says:
* `webhook_url: {env: NAME}` — an incoming webhook: the JSON message is POSTed with the same
  code as webhooks (`http.post_json`: address check, capped response, redirects). The URL is
  itself a secret, so the attempt log records `$NAME` instead of it.
* `token: {env: NAME}` + `channel` — `chat.postMessage` through the official slack_sdk
  WebClient, against ENGINE_SLACK_API_URL (default https://slack.com/api/). The SDK's own
  retry handlers are disabled: retries are the outbox's job, so that each one is recorded.

The message: a header (severity emoji + title), the message text, fields with the
automation, the run or artifact, the metric, its value, the window's values and the
condition, and a context line with the trigger id, time and event type. Fields that do not
apply are left out. Variables substituted into mrkdwn are escaped (&, <, >).
"""

from __future__ import annotations

import json
import logging
import urllib.error
from collections.abc import Mapping
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from engine import clock
from engine.actions.http import RESPONSE_BODY_LIMIT, Attempt, post_json
from engine.actions.retry import is_retryable_status, parse_retry_after
from engine.actions.secrets import REDACTED, Secrets
from engine.actions.templates import render_text
from engine.exceptions import PermanentDeliveryError
from engine.rules.actions import SlackAction
from engine.settings import Settings

TIMEOUT = 10.0
# slack_sdk logs response bodies (at DEBUG, and unexpected ones at ERROR), which may echo a
# token back. Its logger is kept silent; each outcome is in the attempt log, scrubbed.
_SDK_LOG = logging.getLogger("engine.actions.slack.sdk")
_SDK_LOG.setLevel(logging.CRITICAL)
_SDK_LOG.propagate = False
SEVERITY_EMOJI = {"info": ":information_source:", "warn": ":warning:", "error": ":rotating_light:"}
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
}
# Slack's limits (Block Kit reference): header 150 chars, section text 3000, field 2000, 10 fields.
_HEADER_MAX, _TEXT_MAX, _FIELD_MAX, _FIELDS_MAX = 150, 3000, 2000, 10
# Error codes of chat.postMessage that a later try may fix; any other `ok: false` is final
# (channel_not_found, invalid_auth, not_in_channel, ...).
_TRANSIENT_ERRORS = frozenset(
    {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)


def escape_mrkdwn(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def build_message(
    action: SlackAction, ctx: Mapping[str, str], secrets: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The chat.postMessage / incoming-webhook body: {"text": fallback, "blocks": [...]}."""
    emoji = SEVERITY_EMOJI[action.severity]
    title = render_text(action.title or DEFAULT_TITLE, ctx, secrets).strip() or "automation fired"
    template = action.message or DEFAULT_MESSAGES.get(ctx.get("event_type", ""), "${event_type}")
    if ctx.get("digest"):
        return _digest_message(action, ctx, secrets, f"{emoji} {title}")
    message = render_text(template, ctx, secrets, escape=escape_mrkdwn).strip()

    run = ctx.get("run_name") or ctx.get("run_id") or ""
    if run and ctx.get("run_url", "").startswith(("http://", "https://")):
        run_field = f"<{ctx['run_url']}|{escape_mrkdwn(run)}>"
    else:
        run_field = escape_mrkdwn(run)
    metric = ctx.get("metric_name", "")
    if metric and ctx.get("metric_step"):
        metric = f"{metric} (step {ctx['metric_step']})"
    fields = [
        ("Automation", escape_mrkdwn(ctx.get("automation_name", ""))),
        ("Run", run_field),
        ("Artifact", escape_mrkdwn(ctx.get("artifact_version_string", ""))),
        ("Metric", escape_mrkdwn(metric)),
        ("Value", ctx.get("metric_value", "")),
        ("Window values", ctx.get("metric_values", "")),
        ("Condition", escape_mrkdwn(ctx.get("metric_filter", ""))),
        ("Run status", ctx.get("run_status", "") if ctx.get("event_type") == "RUN_STATE" else ""),
        ("Alias", escape_mrkdwn(ctx.get("alias", ""))),
        ("Tag", escape_mrkdwn(ctx.get("tag", ""))),
        ("Registry", escape_mrkdwn(ctx.get("registry_name", ""))),
    ]
    shown = [
        {"type": "mrkdwn", "text": _cut(f"*{label}*\n{value}", _FIELD_MAX)}
        for label, value in fields
        if value
    ][:_FIELDS_MAX]

    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": _cut(f"{emoji} {title}", _HEADER_MAX), "emoji": True},
        }
    ]
    if message:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _cut(message, _TEXT_MAX)}})
    if shown:
        blocks.append({"type": "section", "fields": shown})
    context = " · ".join(
        part
        for part in (
            f"trigger #{ctx['trigger_id']}" if ctx.get("trigger_id") else "",
            ctx.get("fired_at", ""),
            ctx.get("event_type", ""),
        )
        if part
    )
    if context:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": escape_mrkdwn(context)}]})
    fallback = f"{emoji} {title}" + (f": {message}" if message else "")
    return {"text": _cut(fallback, _TEXT_MAX), "blocks": blocks}


DIGEST_LINES = 20  # a digest's message lists this many triggers, then says how many more


def _digest_message(
    action: SlackAction, ctx: Mapping[str, str], secrets: Mapping[str, str] | None, header: str
) -> dict[str, Any]:
    """A digest's message: what its triggers share, then one line per trigger (the first
    DIGEST_LINES of them). The fields of one trigger (run, value, ...) are in its line."""
    items = json.loads(ctx["digest"])
    if action.message:
        intro = render_text(action.message, ctx, secrets, escape=escape_mrkdwn).strip()
    else:
        condition = ctx.get("metric_filter", "")
        project = "/".join(p for p in (ctx.get("entity_name", ""), ctx.get("project_name", "")) if p)
        intro = f"*{len(items)} triggers*" + (f" of `{escape_mrkdwn(condition)}`" if condition else "")
        intro += f" in {escape_mrkdwn(project)}:" if project else ":"
    lines = []
    for item in items[:DIGEST_LINES]:
        what = item.get("run_name") or item.get("run_id") or item.get("artifact_version_string") or ""
        detail = (
            item.get("metric_value") or item.get("run_status") or item.get("alias") or item.get("tag") or ""
        )
        lines.append(f"• {escape_mrkdwn(str(what))}" + (f": {escape_mrkdwn(str(detail))}" if detail else ""))
    if len(items) > DIGEST_LINES:
        lines.append(f"… and {len(items) - DIGEST_LINES} more")
    text = _cut("\n".join([intro, *lines]).strip(), _TEXT_MAX)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _cut(header, _HEADER_MAX), "emoji": True}},
        {"type": "section", "text": {"type": "mrkdwn", "text": text}},
        {
            "type": "context",
            "elements": [
                {
                    "type": "mrkdwn",
                    "text": escape_mrkdwn(f"digest of {len(items)} · {ctx.get('event_type', '')}"),
                }
            ],
        },
    ]
    return {"text": _cut(f"{header}: {intro}", _TEXT_MAX), "blocks": blocks}


def send(
    delivery_id: str, action: SlackAction, ctx: Mapping[str, str], secrets: Secrets, settings: Settings
) -> Attempt:
    message = build_message(action, ctx, secrets.values)
    if action.webhook_url is not None and "webhook_url" in secrets.by_field:
        return post_json(
            secrets.by_field["webhook_url"],
            json.dumps(message, ensure_ascii=False).encode("utf-8"),
            {"Content-Type": "application/json", "X-Automation-Delivery": delivery_id},
            timeout=TIMEOUT,
            allow_hosts=settings.webhook_allow_hosts,
            log_url=f"${action.webhook_url.env} {REDACTED}",
        )
    if "token" in secrets.by_field:
        if not action.channel:
            raise PermanentDeliveryError("a Slack action with a token needs a channel")
        return _post_message(secrets.by_field["token"], action.channel, message, settings)
    raise PermanentDeliveryError("a Slack action needs webhook_url or token + channel")


def _post_message(token: str, channel: str, message: dict[str, Any], settings: Settings) -> Attempt:
    api_url = settings.slack_api_url.rstrip("/") + "/"
    record = {"url": api_url + "chat.postMessage", "channel": channel, "headers": {"Authorization": REDACTED}}
    client = WebClient(
        token=token, base_url=api_url, timeout=int(TIMEOUT), retry_handlers=[], logger=_SDK_LOG
    )
    try:
        response = client.chat_postMessage(channel=channel, text=message["text"], blocks=message["blocks"])
    except SlackApiError as exc:
        status = exc.response.status_code
        data = exc.response.data if isinstance(exc.response.data, dict) else {}
        code = str(data.get("error") or "")
        headers = {k.lower(): v for k, v in (exc.response.headers or {}).items()}
        return Attempt(
            record,
            http_status=status,
            response_body=_body(exc.response.data),
            error=f"Slack API error: HTTP {status}" + (f" {code}" if code else ""),
            retryable=is_retryable_status(status) or code in _TRANSIENT_ERRORS,
            retry_after=parse_retry_after(headers.get("retry-after"), clock.now()),
        )
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return Attempt(record, error=f"connection to the Slack API failed: {reason}", retryable=True)
    return Attempt(record, http_status=response.status_code, response_body=_body(response.data))


def _body(data: Any) -> str:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else json.dumps(data)
    return text[:RESPONSE_BODY_LIMIT]
