"""The `teams` action: an Adaptive Card posted to a Microsoft Teams incoming webhook.

Why an Adaptive Card and not the older MessageCard: Microsoft is retiring the Office 365
connectors (the "Incoming Webhook" connector) in favour of Workflows, whose "when a Teams
webhook request is received" trigger posts Adaptive Cards only; the legacy connectors accept
the same envelope. So one body works with both kinds of URL:

    {"type": "message",
     "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive",
                      "contentUrl": null,
                      "content": {"$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                                  "type": "AdaptiveCard", "version": "1.4", "body": [...], "actions": [...]}}]}

The card: the title as a heading (red for `error`, amber for `warn`), the message, the
trigger's facts as a FactSet, a small footer naming the trigger, and an "Open run" button
when ENGINE_BASE_URL makes the run a web address. Workflows answer 202, connectors 200.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.actions.http import Attempt
from engine.actions.messages import (
    DEFAULT_TITLE,
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
from engine.rules.actions import TeamsAction
from engine.settings import Settings

CARD_VERSION = "1.4"  # rendered by Teams on desktop, web and mobile
TITLE_COLOR = {"info": "Default", "warn": "Warning", "error": "Attention"}


def build_card(action: TeamsAction, ctx: Mapping[str, str]) -> dict[str, Any]:
    """The Adaptive Card (the `content` of the message's attachment)."""
    title = render_text(action.title or DEFAULT_TITLE, ctx).strip() or "automation fired"
    message = render_text(action.message or plain(default_message(ctx.get("event_type", ""))), ctx).strip()
    body: list[dict[str, Any]] = [
        {
            "type": "TextBlock",
            "text": title,
            "style": "heading",
            "size": "Large",
            "weight": "Bolder",
            "color": TITLE_COLOR[action.severity],
            "wrap": True,
        }
    ]
    if message:
        body.append({"type": "TextBlock", "text": message, "wrap": True})
    shown = facts(ctx)
    if shown:
        body.append(
            {"type": "FactSet", "facts": [{"title": label, "value": value} for label, value in shown]}
        )
    if footer(ctx):
        body.append(
            {"type": "TextBlock", "text": footer(ctx), "isSubtle": True, "size": "Small", "wrap": True}
        )
    card: dict[str, Any] = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": CARD_VERSION,
        "body": body,
    }
    if link(ctx):
        card["actions"] = [{"type": "Action.OpenUrl", "title": "Open run", "url": link(ctx)}]
    if trigger_link(ctx):
        card.setdefault("actions", []).append(
            {"type": "Action.OpenUrl", "title": "Why it fired", "url": trigger_link(ctx)}
        )
    return card


def build_message(action: TeamsAction, ctx: Mapping[str, str]) -> dict[str, Any]:
    """The webhook body: a message with the card as its one attachment."""
    return {
        "type": "message",
        "attachments": [
            {
                "contentType": "application/vnd.microsoft.card.adaptive",
                "contentUrl": None,
                "content": build_card(action, ctx),
            }
        ],
    }


def send(
    delivery_id: str, action: TeamsAction, ctx: Mapping[str, str], secrets: Secrets, settings: Settings
) -> Attempt:
    return post_message(
        delivery_id,
        build_message(action, ctx),
        secrets.by_field["webhook_url"],
        action.webhook_url.env,
        timeout=action.timeout,
        settings=settings,
    )
