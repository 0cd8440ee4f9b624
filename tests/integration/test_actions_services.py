"""Discord, Microsoft Teams and PagerDuty deliveries against local servers that check each
body against the service's documented shape and answer as the service does:

* Discord, execute webhook: https://discord.com/developers/docs/resources/webhook#execute-webhook
  and the embed limits of https://discord.com/developers/docs/resources/message#embed-object-embed-limits
* Teams, an Adaptive Card in a message envelope, as Workflows' "when a Teams webhook request
  is received" and incoming webhooks take it:
  https://learn.microsoft.com/en-us/microsoftteams/platform/webhooks-and-connectors/how-to/connectors-using
* PagerDuty Events API v2: https://developer.pagerduty.com/docs/events-api-v2/trigger-events/
"""

from __future__ import annotations

import itertools
import json
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from actions_helpers import attempts, delivery, fire, make_automation, make_run, settle

from engine.actions.dispatcher import Dispatcher
from engine.settings import Settings
from tests.receiver import Received, Receiver, Reply

ROUTING_KEY = "R0UT1NGKEY0000000000000000000abc"  # 32 characters, as PagerDuty's are
_serial = itertools.count(1)


def _json_reply(status: int, data: Any) -> Reply:
    return Reply(status, json.dumps(data).encode(), {"Content-Type": "application/json"})


def _is_time(text: Any) -> bool:
    try:
        datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return False
    return True


def discord_problems(body: Any) -> list[str]:
    """Where `body` breaks Discord's execute-webhook rules (empty: a valid message)."""
    problems = []
    if not isinstance(body, dict) or not (body.get("content") or body.get("embeds")):
        return ["one of content or embeds is required"]
    if len(body.get("content") or "") > 2000:
        problems.append("content over 2000")
    embeds = body.get("embeds") or []
    if len(embeds) > 10:
        problems.append("more than 10 embeds")
    total = 0
    for embed in embeds:
        for key, limit in (("title", 256), ("description", 4096)):
            if key in embed and (not isinstance(embed[key], str) or len(embed[key]) > limit):
                problems.append(f"embed.{key}")
            total += len(embed.get(key) or "")
        if not isinstance(embed.get("color", 0), int) or not 0 <= embed.get("color", 0) <= 0xFFFFFF:
            problems.append("embed.color")
        if "timestamp" in embed and not _is_time(embed["timestamp"]):
            problems.append("embed.timestamp")
        if "url" in embed and not str(embed["url"]).startswith(("http://", "https://")):
            problems.append("embed.url")
        fields = embed.get("fields") or []
        if len(fields) > 25:
            problems.append("more than 25 fields")
        for f in fields:
            if not f.get("name") or not f.get("value") or len(f["name"]) > 256 or len(f["value"]) > 1024:
                problems.append(f"field {f.get('name')!r}")
            if not isinstance(f.get("inline", False), bool):
                problems.append("field.inline")
            total += len(f.get("name") or "") + len(f.get("value") or "")
        footer = embed.get("footer")
        if footer is not None and (not footer.get("text") or len(footer["text"]) > 2048):
            problems.append("embed.footer")
        total += len((footer or {}).get("text") or "")
    if total > 6000:
        problems.append("embeds over 6000 characters in all")
    mentions = body.get("allowed_mentions")
    if mentions is not None and not isinstance(mentions.get("parse"), list):
        problems.append("allowed_mentions.parse")
    return problems


def fake_discord(request: Received) -> Reply:
    if not request.path.startswith("/api/webhooks/"):
        return _json_reply(404, {"message": "Unknown Webhook", "code": 10015})
    problems = discord_problems(request.json())
    if problems:
        return _json_reply(400, {"message": "Invalid Form Body", "code": 50035, "errors": problems})
    if parse_qs(urlsplit(request.path).query).get("wait") == ["true"]:
        return _json_reply(
            200, {"id": "1180000000000000000", "type": 0, "content": request.json()["content"]}
        )
    return Reply(204, b"")


ADAPTIVE = "application/vnd.microsoft.card.adaptive"


def teams_problems(body: Any) -> list[str]:
    """Where `body` is not a message carrying one Adaptive Card."""
    if body.get("type") != "message" or not isinstance(body.get("attachments"), list):
        return ["not a message with attachments"]
    problems = []
    for attachment in body["attachments"]:
        card = attachment.get("content") or {}
        if attachment.get("contentType") != ADAPTIVE:
            problems.append("contentType")
        if card.get("type") != "AdaptiveCard" or not card.get("version") or not card.get("body"):
            problems.append("not an AdaptiveCard with a version and a body")
        for element in card.get("body") or []:
            if element.get("type") == "TextBlock":
                if not isinstance(element.get("text"), str) or not element["text"]:
                    problems.append("TextBlock.text")
            elif element.get("type") == "FactSet":
                if not all(
                    isinstance(f.get("title"), str) and isinstance(f.get("value"), str)
                    for f in element["facts"]
                ):
                    problems.append("FactSet.facts")
            else:
                problems.append(f"element {element.get('type')!r}")
        for act in card.get("actions") or []:
            if act.get("type") != "Action.OpenUrl" or not str(act.get("url", "")).startswith("http"):
                problems.append("action")
    return problems


def fake_teams(request: Received) -> Reply:
    problems = teams_problems(request.json())
    if problems:
        return Reply(400, json.dumps(problems).encode())
    return Reply(202, b"")


SEVERITIES = {"critical", "error", "warning", "info"}


def pagerduty_problems(event: Any) -> list[str]:
    problems = []
    if not isinstance(event.get("routing_key"), str) or len(event["routing_key"]) != 32:
        problems.append("routing_key must be 32 characters")
    if event.get("event_action") not in ("trigger", "acknowledge", "resolve"):
        problems.append("event_action")
    if not event.get("dedup_key") or len(event["dedup_key"]) > 255:
        problems.append("dedup_key")
    payload = event.get("payload") or {}
    if not payload.get("summary") or len(payload["summary"]) > 1024:
        problems.append("payload.summary")
    if not payload.get("source"):
        problems.append("payload.source")
    if payload.get("severity") not in SEVERITIES:
        problems.append("payload.severity")
    if "timestamp" in payload and not _is_time(payload["timestamp"]):
        problems.append("payload.timestamp")
    if not isinstance(payload.get("custom_details", {}), dict):
        problems.append("payload.custom_details")
    for link in event.get("links") or []:
        if not link.get("href"):
            problems.append("links.href")
    return problems


class FakePagerDuty:
    def __init__(self, *, throttle_first: bool = False):
        self.throttle_first = throttle_first

    def __call__(self, request: Received) -> Reply:
        if request.path != "/v2/enqueue":
            return _json_reply(404, {"status": "not found"})
        if self.throttle_first:
            self.throttle_first = False
            return _json_reply(
                429,
                {"status": "throttle event", "message": "Requests for this service are arriving too quickly"},
            )
        event = request.json()
        problems = pagerduty_problems(event)
        if problems:
            return _json_reply(
                400, {"status": "invalid event", "message": "Event object is invalid", "errors": problems}
            )
        return _json_reply(
            202, {"status": "success", "message": "Event processed", "dedup_key": event["dedup_key"]}
        )


def settings(database_url: str, **more) -> Settings:
    return Settings(
        database_url=database_url, webhook_allow_hosts="127.0.0.1", retry_base_seconds=0.05, **more
    )


def deliver(conn, database_url, spec, *, run_name="resnet-50", run_id=None, automation=None, **more):
    n = next(_serial)
    automation = automation or make_automation(conn, f"svc-{n}", [spec])
    run_pk = make_run(conn, run_id=run_id or f"r{n}", name=run_name)
    trigger_id, (delivery_id,) = fire(conn, automation, [spec], run_pk=run_pk, cause=f"c{n}")
    with Dispatcher(database_url, settings(database_url, **more)) as d:
        settle(d, conn, [delivery_id])
    return trigger_id, delivery_id


def message_action(kind: str, env: str, **fields) -> dict:
    return {
        "type": kind,
        "webhook_url": {"env": env},
        "title": None,
        "message": None,
        "severity": "info",
        "timeout": 5.0,
        "max_attempts": 3,
    } | fields


def test_discord_gets_an_embed_within_its_limits_that_pings_nobody(conn, database_url, monkeypatch):
    with Receiver(fake_discord) as rx:
        monkeypatch.setenv("DISCORD_HOOK", rx.url("/api/webhooks/1180/tok-discord-secret"))
        spec = message_action("discord", "DISCORD_HOOK", severity="error")
        trigger_id, delivery_id = deliver(
            conn, database_url, spec, run_name="@everyone res*net_50", base_url="https://ml.example.com"
        )
    (request,) = rx.requests
    assert parse_qs(urlsplit(request.path).query) == {"wait": ["true"]}
    body = request.json()
    assert discord_problems(body) == []
    assert body["allowed_mentions"] == {"parse": []}
    (embed,) = body["embeds"]
    assert embed["color"] == 0xE74C3C and embed["title"].startswith("svc-")
    assert "\\@everyone" not in embed["description"] and "res\\*net\\_50" in embed["description"]
    assert embed["url"].startswith("https://ml.example.com/acme/vision/runs/r")
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert fields["Run"] == "@everyone res\\*net\\_50" and fields["Window values"] == "[0.5, 0.66, 0.7]"
    assert embed["footer"]["text"].startswith(f"trigger #{trigger_id}")
    assert body["content"].startswith(":rotating_light: **svc-")
    (attempt,) = attempts(conn, delivery_id)
    assert attempt["http_status"] == 200 and attempt["request"]["url"] == "$DISCORD_HOOK [redacted]"
    assert "tok-discord-secret" not in json.dumps(attempt, default=str)


def test_teams_gets_an_adaptive_card(conn, database_url, monkeypatch):
    with Receiver(fake_teams) as rx:
        monkeypatch.setenv(
            "TEAMS_HOOK", rx.url("/workflows/abc/triggers/manual/paths/invoke?sig=teams-sig-secret")
        )
        spec = message_action(
            "teams", "TEAMS_HOOK", severity="warn", message="Run ${run_name} is at ${metric_value}"
        )
        _, delivery_id = deliver(conn, database_url, spec, base_url="https://ml.example.com")
    (request,) = rx.requests
    body = request.json()
    assert teams_problems(body) == []
    card = body["attachments"][0]["content"]
    title, text, facts, footer = card["body"]
    assert title["color"] == "Warning" and title["text"].startswith("svc-")
    assert text["text"] == "Run resnet-50 is at 0.62"
    assert {"title": "Condition", "value": "avg(accuracy) over 3 > 0.6"} in facts["facts"]
    assert footer["isSubtle"] is True
    assert card["actions"][0]["url"].startswith("https://ml.example.com/acme/vision/runs/")
    row = delivery(conn, delivery_id)
    assert row["status"] == "succeeded" and row["last_http_status"] == 202
    assert "teams-sig-secret" not in json.dumps(attempts(conn, delivery_id), default=str)


def test_pagerduty_opens_one_incident_per_automation_and_run(conn, database_url, monkeypatch):
    monkeypatch.setenv("PD_KEY", ROUTING_KEY)
    with Receiver(FakePagerDuty(throttle_first=True)) as rx:
        spec = {
            "type": "pagerduty",
            "routing_key": {"env": "PD_KEY"},
            "summary": None,
            "source": "${entity_name}/${project_name}",
            "severity": "critical",
            "url": rx.url("/v2/enqueue"),
            "timeout": 5.0,
            "max_attempts": 3,
        }
        automation = make_automation(conn, "loss-pager", [spec])
        run_1, run_2 = make_run(conn, run_id="pd-1"), make_run(conn, run_id="pd-2")
        with Dispatcher(database_url, settings(database_url)) as d:
            ids = []
            for cause, run_pk in (("a", run_1), ("b", run_2), ("c", run_1)):
                _, (delivery_id,) = fire(conn, automation, [spec], run_pk=run_pk, cause=cause)
                settle(d, conn, [delivery_id])
                ids.append(delivery_id)
    first, other, again = ids
    events = [r.json() for r in rx.requests]
    assert all(pagerduty_problems(e) == [] for e in events)
    # the first was throttled (429) and retried; then the run's second firing, then another run
    throttled, sent, other_run, second = events
    assert throttled == sent and sent["dedup_key"] == second["dedup_key"] == "loss-pager/pd-1"
    assert other_run["dedup_key"] == "loss-pager/pd-2"
    payload = sent["payload"]
    assert (
        payload["summary"] == "loss-pager: avg(accuracy) over 3 > 0.6 held for run resnet-50 in acme/vision."
    )
    assert payload["source"] == "acme/vision" and payload["severity"] == "critical"
    assert payload["custom_details"]["Condition"] == "avg(accuracy) over 3 > 0.6"
    assert [a["http_status"] for a in attempts(conn, first)] == [429, 202]
    assert delivery(conn, other)["status"] == delivery(conn, again)["status"] == "succeeded"
    assert ROUTING_KEY not in json.dumps([attempts(conn, i) for i in (first, again, other)], default=str)


def test_pagerduty_refuses_an_invalid_event_for_good(conn, database_url, monkeypatch):
    monkeypatch.setenv("PD_SHORT", "too-short")  # not a routing key: PagerDuty answers 400
    with Receiver(FakePagerDuty()) as rx:
        spec = {"type": "pagerduty", "routing_key": {"env": "PD_SHORT"}, "url": rx.url("/v2/enqueue")}
        _, delivery_id = deliver(conn, database_url, spec)
    row = delivery(conn, delivery_id)
    assert row["status"] == "failed" and row["attempts"] == 1 and row["last_http_status"] == 400
    assert "too-short" not in json.dumps(attempts(conn, delivery_id), default=str)


@pytest.mark.parametrize("kind", ["discord", "teams"])
def test_a_webhook_url_on_a_private_address_is_refused(conn, database_url, monkeypatch, kind):
    monkeypatch.setenv("PRIVATE_HOOK", "http://10.1.2.3/api/webhooks/1/x")
    _, delivery_id = deliver(conn, database_url, message_action(kind, "PRIVATE_HOOK"))
    row = delivery(conn, delivery_id)
    assert row["status"] == "failed" and "private address 10.1.2.3" in row["last_error"]
