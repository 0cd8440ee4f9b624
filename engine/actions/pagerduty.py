"""The `pagerduty` action: a `trigger` event of the PagerDuty Events API v2
(https://developer.pagerduty.com/docs/events-api-v2/trigger-events/).

    {"routing_key": <secret>, "event_action": "trigger", "dedup_key": "<automation>/<run>",
     "payload": {"summary", "source", "severity", "timestamp", "component", "group", "class",
                 "custom_details"},
     "links": [{"href": <run page>, "text": "Run"}], "client": "engine-automations"}

`dedup_key` is the automation and the run (the artifact version for artifact events), so
every firing of one automation for one run updates one open incident instead of opening
another. PagerDuty answers 202; 400 (an invalid event) is final, 429 and 5xx are retried.
The routing key travels only in the body, which the attempt log does not store.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from engine.actions.http import USER_AGENT, Attempt, post_json
from engine.actions.messages import cut, default_message, facts, link, plain, trigger_link
from engine.actions.secrets import Secrets
from engine.actions.templates import render_address, render_text
from engine.actions.webhook import url_escape
from engine.rules.actions import PagerDutyAction, url_problem
from engine.settings import Settings

# The API's limits: summary 1024 characters, dedup_key 255.
_SUMMARY_MAX, _DEDUP_MAX = 1024, 255


def dedup_key(ctx: Mapping[str, str]) -> str:
    """`<automation>/<run id>` (or the artifact version, or the trigger for other events);
    a hash past 255 characters."""
    subject = ctx.get("run_id") or ctx.get("artifact_version") or f"trigger-{ctx.get('trigger_id', '')}"
    key = f"{ctx.get('automation_name', '')}/{subject}"
    if len(key) > _DEDUP_MAX:
        key = "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()
    return key


def build_event(action: PagerDutyAction, ctx: Mapping[str, str], routing_key: str) -> dict[str, Any]:
    sentence = render_text(plain(default_message(ctx.get("event_type", ""))), ctx).strip()
    name = ctx.get("automation_name", "")
    default = f"{name}: {sentence}" if sentence and name else sentence or name
    summary = render_text(action.summary, ctx).strip() if action.summary else default
    details = dict(facts(ctx)) | {
        name: ctx[name] for name in ("trigger_id", "fired_at", "run_url") if ctx.get(name)
    }
    payload: dict[str, Any] = {
        "summary": cut(summary or "automation fired", _SUMMARY_MAX),
        "source": render_text(action.source, ctx).strip() or "engine",
        "severity": action.severity,
        "component": ctx.get("run_name") or ctx.get("artifact_version_string") or "",
        "group": "/".join(p for p in (ctx.get("entity_name"), ctx.get("project_name")) if p),
        "class": ctx.get("event_type", ""),
        "custom_details": details,
    }
    if ctx.get("fired_at"):
        payload["timestamp"] = ctx["fired_at"]
    event: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": dedup_key(ctx),
        "payload": {k: v for k, v in payload.items() if v != ""},
        "client": USER_AGENT.split("/")[0],
    }
    if link(ctx):
        event["links"] = [{"href": link(ctx), "text": "Run"}]
    if trigger_link(ctx):
        event.setdefault("links", []).append({"href": trigger_link(ctx), "text": "Why it fired"})
    return event


def send(
    delivery_id: str, action: PagerDutyAction, ctx: Mapping[str, str], secrets: Secrets, settings: Settings
) -> Attempt:
    url = render_address(action.url, "url", ctx, url_problem, escape=url_escape)
    event = build_event(action, ctx, secrets.by_field["routing_key"])
    return post_json(
        url,
        json.dumps(event, ensure_ascii=False, allow_nan=False).encode("utf-8"),
        {"Content-Type": "application/json", "X-Automation-Delivery": delivery_id},
        timeout=action.timeout,
        allow_hosts=settings.webhook_allow_hosts,
    )
