"""The `discord` action: a message with one embed, POSTed to a channel webhook
(https://discord.com/developers/docs/resources/webhook#execute-webhook).

The body: `content` (severity emoji and title, the line a notification shows), one embed
(title linked to the run when ENGINE_BASE_URL is a web address, the message as its
description, the trigger's facts as fields, the severity as its colour, the trigger's time
and a footer naming the trigger), and `allowed_mentions: {parse: []}` so that a run named
`@everyone` pings nobody. Substituted values are escaped for Discord's markdown.

`?wait=true` is added to the URL: Discord then answers 200 with the message it created
(instead of 204 before it is posted), so an error is the answer to this request. 429 answers
carry Retry-After, which the outbox honours.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from engine.actions.http import Attempt
from engine.actions.messages import (
    DEFAULT_TITLE,
    cut,
    default_message,
    facts,
    footer,
    link,
    plain,
    post_message,
    trigger_link,
)
from engine.actions.secrets import Secrets
from engine.actions.templates import render_text
from engine.rules.actions import DiscordAction
from engine.settings import Settings

SEVERITY_EMOJI = {"info": ":information_source:", "warn": ":warning:", "error": ":rotating_light:"}
SEVERITY_COLOR = {"info": 0x3498DB, "warn": 0xF1C40F, "error": 0xE74C3C}
# Discord's limits (Embed Limits in its docs): content 2000, title 256, description 4096,
# 25 fields of name 256 / value 1024, footer 2048.
_CONTENT_MAX, _TITLE_MAX, _DESCRIPTION_MAX, _FIELDS_MAX, _NAME_MAX, _VALUE_MAX, _FOOTER_MAX = (
    2000,
    256,
    4096,
    25,
    256,
    1024,
    2048,
)
_MARKDOWN = re.compile(r"([\\*_~`|>])")


def escape_markdown(text: str) -> str:
    """A value shown as written: Discord's markdown characters backslash-escaped, and
    `](` broken so that a value cannot become a masked link."""
    return _MARKDOWN.sub(r"\\\1", text).replace("](", "]\\(")


def build_message(action: DiscordAction, ctx: Mapping[str, str]) -> dict[str, Any]:
    """The execute-webhook body: {"content", "embeds": [one], "allowed_mentions"}."""
    title = render_text(action.title or DEFAULT_TITLE, ctx).strip() or "automation fired"
    template = action.message or plain(default_message(ctx.get("event_type", "")))
    message = render_text(template, ctx, escape=escape_markdown).strip()
    embed: dict[str, Any] = {
        "title": cut(title, _TITLE_MAX),
        "color": SEVERITY_COLOR[action.severity],
        "fields": [
            {
                "name": cut(label, _NAME_MAX),
                "value": cut(escape_markdown(value), _VALUE_MAX),
                "inline": len(value) <= 40,
            }
            for label, value in facts(ctx)
        ][:_FIELDS_MAX],
    }
    if trigger_link(ctx) and len(embed["fields"]) < _FIELDS_MAX:
        embed["fields"].append({"name": "Why it fired", "value": trigger_link(ctx), "inline": False})
    if message:
        embed["description"] = cut(message, _DESCRIPTION_MAX)
    if link(ctx):
        embed["url"] = link(ctx)
    if ctx.get("fired_at"):
        embed["timestamp"] = ctx["fired_at"]
    if footer(ctx):
        embed["footer"] = {"text": cut(footer(ctx), _FOOTER_MAX)}
    content = f"{SEVERITY_EMOJI[action.severity]} **{escape_markdown(title)}**"
    return {"content": cut(content, _CONTENT_MAX), "embeds": [embed], "allowed_mentions": {"parse": []}}


def with_wait(url: str) -> str:
    """The webhook URL with `wait=true` (kept as it is when the URL says wait already)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if not any(key == "wait" for key, _ in query):
        query.append(("wait", "true"))
    return urlunsplit(parts._replace(query=urlencode(query)))


def send(
    delivery_id: str, action: DiscordAction, ctx: Mapping[str, str], secrets: Secrets, settings: Settings
) -> Attempt:
    return post_message(
        delivery_id,
        build_message(action, ctx),
        with_wait(secrets.by_field["webhook_url"]),
        action.webhook_url.env,
        timeout=action.timeout,
        settings=settings,
    )
