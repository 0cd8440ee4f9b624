"""The `slack` action: a Block Kit message that says what fired and why.

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
from engine.actions.http import RESPONSE_BODY_LIMIT, Attempt
from engine.actions.messages import (
    DEFAULT_TITLE,
    cut,
    default_message,
    facts,
    footer,
    link,
    post_message,
    trigger_link,
)
from engine.actions.retry import is_retryable_status, parse_retry_after
from engine.actions.secrets import REDACTED, Secrets
from engine.actions.templates import render_address, render_text
from engine.exceptions import PermanentDeliveryError
from engine.rules.actions import SlackAction, channel_problem
from engine.settings import Settings

TIMEOUT = 10.0
# slack_sdk logs response bodies (at DEBUG, and unexpected ones at ERROR), which may echo a
# token back. Its logger is kept silent; each outcome is in the attempt log, scrubbed.
_SDK_LOG = logging.getLogger("engine.actions.slack.sdk")
_SDK_LOG.setLevel(logging.CRITICAL)
_SDK_LOG.propagate = False
SEVERITY_EMOJI = {"info": ":information_source:", "warn": ":warning:", "error": ":rotating_light:"}
# Slack's limits (Block Kit reference): header 150 chars, section text 3000, field 2000, 10 fields.
_HEADER_MAX, _TEXT_MAX, _FIELD_MAX, _FIELDS_MAX = 150, 3000, 2000, 10
# Error codes of chat.postMessage that a later try may fix; any other `ok: false` is final
# (channel_not_found, invalid_auth, not_in_channel, ...).
_TRANSIENT_ERRORS = frozenset(
    {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)


def escape_mrkdwn(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _field_text(label: str, value: str, run_link: str | None) -> str:
    if label == "Run" and run_link:
        return f"<{run_link}|{escape_mrkdwn(value)}>"
    return escape_mrkdwn(value)


def build_message(
    action: SlackAction, ctx: Mapping[str, str], secrets: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The chat.postMessage / incoming-webhook body: {"text": fallback, "blocks": [...]}."""
    emoji = SEVERITY_EMOJI[action.severity]
    title = render_text(action.title or DEFAULT_TITLE, ctx, secrets).strip() or "automation fired"
    template = action.message or default_message(ctx.get("event_type", ""))
    if ctx.get("digest"):
        return _digest_message(action, ctx, secrets, f"{emoji} {title}")
    message = render_text(template, ctx, secrets, escape=escape_mrkdwn).strip()

    run_link = link(ctx)
    shown = [
        {"type": "mrkdwn", "text": cut(f"*{label}*\n{_field_text(label, value, run_link)}", _FIELD_MAX)}
        for label, value in facts(ctx)
    ][:_FIELDS_MAX]

    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": cut(f"{emoji} {title}", _HEADER_MAX), "emoji": True},
        }
    ]
    if message:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": cut(message, _TEXT_MAX)}})
    if shown:
        blocks.append({"type": "section", "fields": shown})
    context = footer(ctx)
    why = trigger_link(ctx)
    if context or why:
        text = escape_mrkdwn(context) + (f" · <{why}|why it fired>" if why else "")
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": text.lstrip(" ·")}]})
    fallback = f"{emoji} {title}" + (f": {message}" if message else "")
    return {"text": cut(fallback, _TEXT_MAX), "blocks": blocks}


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
    text = cut("\n".join([intro, *lines]).strip(), _TEXT_MAX)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": cut(header, _HEADER_MAX), "emoji": True}},
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
    return {"text": cut(f"{header}: {intro}", _TEXT_MAX), "blocks": blocks}


def send(
    delivery_id: str, action: SlackAction, ctx: Mapping[str, str], secrets: Secrets, settings: Settings
) -> Attempt:
    message = build_message(action, ctx, secrets.values)
    if action.webhook_url is not None and "webhook_url" in secrets.by_field:
        return post_message(
            delivery_id,
            message,
            secrets.by_field["webhook_url"],
            action.webhook_url.env,
            timeout=TIMEOUT,
            settings=settings,
        )
    if "token" in secrets.by_field:
        if not action.channel:
            raise PermanentDeliveryError("a Slack action with a token needs a channel")
        channel = render_address(action.channel, "channel", ctx, channel_problem)
        return _post_message(secrets.by_field["token"], channel, message, settings)
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
