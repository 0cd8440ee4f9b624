"""Slack deliveries against a local server speaking the incoming-webhook and chat.postMessage
protocols (https://api.slack.com/messaging/webhooks, https://api.slack.com/methods/chat.postMessage)."""

from __future__ import annotations

import json

import pytest
from actions_helpers import attempts, delivery, fire, history, make_automation, make_run, settle

from engine.actions.dispatcher import Dispatcher
from engine.settings import Settings
from tests.receiver import Received, Receiver, Reply

BOT_TOKEN = "xoxb-1111-2222-secret"


class FakeSlack:
    """Answers like Slack: `ok` (text) on /services/…, JSON with ok/error on /api/chat.postMessage."""

    def __init__(self, *, rate_limit_first: bool = False, channel_exists: bool = True):
        self.rate_limit_first = rate_limit_first
        self.channel_exists = channel_exists

    def __call__(self, request: Received) -> Reply:
        limited = self.rate_limit_first
        self.rate_limit_first = False
        if request.path.startswith("/services/"):
            if limited:
                return Reply(429, b"rate_limited", {"Retry-After": "1"})
            body = request.json()
            if not body.get("blocks") and not body.get("text"):
                return Reply(400, b"no_text")
            return Reply(200, b"ok", {"Content-Type": "text/html"})
        if request.path == "/api/chat.postMessage":

            def answer(status: int, data: dict, headers: dict | None = None) -> Reply:
                return Reply(
                    status, json.dumps(data).encode(), {"Content-Type": "application/json"} | (headers or {})
                )

            if request.headers.get("Authorization") != f"Bearer {BOT_TOKEN}":
                return answer(200, {"ok": False, "error": "invalid_auth"})
            if limited:
                return answer(429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "1"})
            body = request.json()
            if not self.channel_exists:
                return answer(200, {"ok": False, "error": "channel_not_found"})
            return answer(
                200,
                {
                    "ok": True,
                    "channel": "C024BE91L",
                    "ts": "1714564800.000100",
                    "message": {"text": body["text"]},
                },
            )
        return Reply(404, b"unknown path")


@pytest.fixture
def fake_slack():
    def make(**kwargs) -> Receiver:
        return Receiver(FakeSlack(**kwargs))

    return make


def slack_settings(database_url: str, rx: Receiver) -> Settings:
    return Settings(
        database_url=database_url,
        webhook_allow_hosts="127.0.0.1",
        retry_base_seconds=0.05,
        slack_api_url=rx.url("/api/"),
    )


def test_incoming_webhook_message_shows_what_fired_and_why(conn, database_url, fake_slack, monkeypatch):
    with fake_slack() as rx:
        monkeypatch.setenv("SLACK_HOOK", rx.url("/services/T000/B000/hooksecretpart"))
        action = {
            "type": "slack",
            "webhook_url": {"env": "SLACK_HOOK"},
            "token": None,
            "channel": None,
            "title": "Accuracy is up on ${run_name}",
            "message": None,
            "severity": "warn",
        }
        automation = make_automation(conn, "acc-slack", [action])
        trigger_id, (delivery_id,) = fire(
            conn, automation, [action], run_pk=make_run(conn, name="resnet<50>")
        )
        with Dispatcher(database_url, slack_settings(database_url, rx)) as d:
            settle(d, conn, [delivery_id])
    (request,) = rx.requests
    assert request.path == "/services/T000/B000/hooksecretpart"
    assert request.headers["X-Automation-Delivery"] == str(delivery_id)
    message = request.json()
    header, section, fields, context = message["blocks"]
    assert header["text"]["text"] == ":warning: Accuracy is up on resnet<50>"
    assert (
        "avg(accuracy) over 3 &gt; 0.6" in section["text"]["text"]
        and "resnet&lt;50&gt;" in section["text"]["text"]
    )
    shown = "\n".join(f["text"] for f in fields["fields"])
    for piece in (
        "*Automation*\nacc-slack",
        "*Run*\nresnet&lt;50&gt;",
        "*Metric*\naccuracy (step 7)",
        "*Window values*\n[0.5, 0.66, 0.7]",
        "*Condition*\navg(accuracy) over 3 &gt; 0.6",
    ):
        assert piece in shown
    assert f"trigger #{trigger_id}" in context["elements"][0]["text"]
    assert history(conn, trigger_id)["delivery_status"] == "succeeded"
    (attempt,) = attempts(conn, delivery_id)
    assert attempt["request"]["url"] == "$SLACK_HOOK [redacted]" and attempt["response_body"] == "ok"
    assert "hooksecretpart" not in json.dumps(attempt, default=str)


def test_chat_post_message_with_bot_token(conn, database_url, fake_slack, monkeypatch):
    monkeypatch.setenv("SLACK_BOT", BOT_TOKEN)
    with fake_slack() as rx:
        action = {
            "type": "slack",
            "webhook_url": None,
            "token": {"env": "SLACK_BOT"},
            "channel": "#ml-alerts",
            "title": None,
            "message": "Run *${run_name}* hit ${metric_value}",
            "severity": "info",
        }
        automation = make_automation(conn, "bot", [action])
        _, (delivery_id,) = fire(conn, automation, [action], run_pk=make_run(conn))
        with Dispatcher(database_url, slack_settings(database_url, rx)) as d:
            settle(d, conn, [delivery_id])
    (request,) = rx.requests
    assert request.path == "/api/chat.postMessage"
    body = request.json()
    assert body["channel"] == "#ml-alerts"
    assert body["blocks"][0]["text"]["text"] == ":information_source: bot"
    assert body["blocks"][1]["text"]["text"] == f"Run *resnet-50* hit {(0.5 + 0.66 + 0.7) / 3!r}"
    row = delivery(conn, delivery_id)
    assert (row["status"], row["last_http_status"]) == ("succeeded", 200)
    (attempt,) = attempts(conn, delivery_id)
    assert json.loads(attempt["response_body"])["ok"] is True
    assert attempt["request"]["headers"] == {"Authorization": "[redacted]"}
    assert attempt["request"]["url"] == rx.url("/api/chat.postMessage")


@pytest.mark.parametrize("way", ["webhook_url", "token"])
def test_rate_limit_honours_retry_after(conn, database_url, fake_slack, monkeypatch, way):
    with fake_slack(rate_limit_first=True) as rx:
        monkeypatch.setenv("SLACK_HOOK", rx.url("/services/T/B/x"))
        monkeypatch.setenv("SLACK_BOT", BOT_TOKEN)
        action = {
            "type": "slack",
            "webhook_url": None,
            "token": None,
            "channel": None,
            "title": None,
            "message": None,
            "severity": "error",
        }
        action |= (
            {"webhook_url": {"env": "SLACK_HOOK"}}
            if way == "webhook_url"
            else {"token": {"env": "SLACK_BOT"}, "channel": "C1"}
        )
        automation = make_automation(conn, f"limited-{way}", [action])
        _, (delivery_id,) = fire(conn, automation, [action], run_pk=make_run(conn))
        with Dispatcher(database_url, slack_settings(database_url, rx)) as d:
            settle(d, conn, [delivery_id])
    first, second = rx.requests
    assert second.at - first.at >= 1.0
    log = attempts(conn, delivery_id)
    assert [a["http_status"] for a in log] == [429, 200]
    assert delivery(conn, delivery_id)["status"] == "succeeded"


def test_unknown_channel_is_final(conn, database_url, fake_slack, monkeypatch):
    monkeypatch.setenv("SLACK_BOT", BOT_TOKEN)
    with fake_slack(channel_exists=False) as rx:
        action = {
            "type": "slack",
            "webhook_url": None,
            "token": {"env": "SLACK_BOT"},
            "channel": "#nope",
            "title": None,
            "message": None,
            "severity": "info",
        }
        automation = make_automation(conn, "nochannel", [action])
        trigger_id, (delivery_id,) = fire(conn, automation, [action])
        with Dispatcher(database_url, slack_settings(database_url, rx)) as d:
            settle(d, conn, [delivery_id])
    assert len(rx.requests) == 1
    h = history(conn, trigger_id)
    assert (
        h["delivery_status"] == "failed" and h["last_error"] == "Slack API error: HTTP 200 channel_not_found"
    )


def test_slack_api_down_is_retried(conn, database_url, monkeypatch):
    from tests.receiver import free_port

    monkeypatch.setenv("SLACK_BOT", BOT_TOKEN)
    settings = Settings(
        database_url=database_url,
        retry_base_seconds=0.05,
        slack_api_url=f"http://127.0.0.1:{free_port()}/api/",
    )
    action = {
        "type": "slack",
        "webhook_url": None,
        "token": {"env": "SLACK_BOT"},
        "channel": "C1",
        "title": None,
        "message": None,
        "severity": "info",
    }
    automation = make_automation(conn, "slack-down", [action])
    _, (delivery_id,) = fire(conn, automation, [action])
    with Dispatcher(database_url, settings) as d:
        d.run_once()
    row = delivery(conn, delivery_id)
    assert row["status"] == "pending" and row["last_error"].startswith("connection to the Slack API failed")


def test_a_templated_channel_is_rendered_and_checked(conn, database_url, fake_slack, monkeypatch):
    monkeypatch.setenv("SLACK_BOT", BOT_TOKEN)
    with fake_slack() as rx:
        routed = {
            "type": "slack",
            "webhook_url": None,
            "token": {"env": "SLACK_BOT"},
            "channel": "#ml-${project_name}",
            "title": None,
            "message": None,
            "severity": "info",
        }
        by_run = routed | {"channel": "#${run_name}"}
        a1, a2 = make_automation(conn, "routed", [routed]), make_automation(conn, "by-run", [by_run])
        _, (ok,) = fire(conn, a1, [routed], run_pk=make_run(conn, run_id="c1"))
        _, (bad,) = fire(conn, a2, [by_run], run_pk=make_run(conn, run_id="c2", name="two words"))
        with Dispatcher(database_url, slack_settings(database_url, rx)) as d:
            settle(d, conn, [ok, bad])
    (request,) = rx.requests
    assert request.json()["channel"] == "#ml-vision"
    assert delivery(conn, ok)["status"] == "succeeded"
    row = delivery(conn, bad)
    assert row["status"] == "failed" and row["last_error"].startswith(
        "channel '#two words' (rendered from '#${run_name}') must be a channel name"
    )
