"""Pure parts of the actions: address policy, retry timing, request and message building."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import random
from datetime import datetime, timedelta, timezone

import pytest

from engine.actions import retry, ssrf
from engine.actions.secrets import Secrets, resolve
from engine.actions.slack import build_message
from engine.actions.webhook import build_request, signature
from engine.exceptions import PermanentDeliveryError

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "169.254.1.1", "0.0.0.0",
        "100.64.0.1", "224.0.0.1", "240.0.0.1", "255.255.255.255", "::1", "::", "fe80::1", "fc00::1",
        "fd00:ec2::254", "ff02::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "64:ff9b::a00:1", "2002:7f00:1::",
    ],
)
def test_non_public_addresses_are_forbidden(address):
    assert ssrf.why_forbidden(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_are_allowed(address):
    assert ssrf.why_forbidden(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize("host", ["127.0.0.1", "2130706433", "0x7f000001", "017700000001", "127.1", "localhost", "[::1]"])
def test_loopback_in_any_spelling_is_refused(host):
    with pytest.raises(PermanentDeliveryError, match="private address .*ENGINE_WEBHOOK_ALLOW_HOSTS"):
        ssrf.check_target(host, 80, "")


def test_allow_list_by_address_cidr_or_host_name():
    assert str(ssrf.check_target("2130706433", 80, "127.0.0.1")) == "127.0.0.1"
    assert str(ssrf.check_target("127.0.0.1", 80, "10.0.0.0/8, 127.0.0.0/8")) == "127.0.0.1"
    assert ssrf.check_target("localhost", 80, "LOCALHOST.") is not None  # host names: case and dot
    assert ssrf.check_target("[::ffff:127.0.0.1]", 80, "127.0.0.1") == ipaddress.ip_address("::ffff:127.0.0.1")
    with pytest.raises(PermanentDeliveryError):
        ssrf.check_target("127.0.0.1", 80, "10.0.0.0/8, otherhost")


def test_retry_backoff_doubles_with_jitter_and_caps():
    rng = random.Random(1)
    for attempt in range(1, 20):
        full = min(retry.BACKOFF_CAP_SECONDS, 1.0 * 2 ** (attempt - 1))
        delay = retry.backoff(attempt, 1.0, rng)
        assert full / 2 <= delay <= full
    assert retry.backoff(30, 1.0, rng) <= retry.BACKOFF_CAP_SECONDS


def test_retry_after_seconds_and_http_date_and_cap():
    assert retry.parse_retry_after("3", NOW) == 3.0
    http_date = (NOW + timedelta(seconds=90)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert retry.parse_retry_after(http_date, NOW) == pytest.approx(90.0)
    assert retry.parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", NOW) == 0.0  # in the past
    assert retry.parse_retry_after("soon", NOW) is None
    assert retry.parse_retry_after(None, NOW) is None
    assert retry.next_delay(1, 0.05, 2.0) >= 2.0  # never sooner than asked
    assert retry.next_delay(1, 0.05, 10**9) <= retry.RETRY_AFTER_CAP_SECONDS


@pytest.mark.parametrize("status,retryable", [(408, True), (429, True), (500, True), (503, True), (400, False), (401, False), (404, False), (410, False)])
def test_retryable_statuses(status, retryable):
    assert retry.is_retryable_status(status) is retryable


def test_missing_secret_names_the_variable(monkeypatch):
    monkeypatch.delenv("CI_TOKEN_X", raising=False)
    with pytest.raises(PermanentDeliveryError, match="environment variable CI_TOKEN_X is not set"):
        resolve({"type": "webhook", "url": "http://x", "access_token": {"env": "CI_TOKEN_X"}})


def test_scrub_removes_every_secret_value():
    s = Secrets({"ACCESS_TOKEN": "tok-123", "CI": "tok-123"}, {"secret": "hmac-key"})
    assert s.scrub("Bearer tok-123 and hmac-key") == "Bearer [redacted] and [redacted]"
    assert s.scrub_json({"h": ["tok-123"], "tok-123": 1}) == {"h": ["[redacted]"], "[redacted]": 1}


def test_webhook_request_headers_signature_and_header_injection():
    secrets = Secrets({"ACCESS_TOKEN": "tok", "CI_TOKEN": "tok", "CI_HMAC": "key"}, {"access_token": "tok", "secret": "key"})
    action = {
        "type": "webhook",
        "url": "http://127.0.0.1/",
        "headers": {"X-Run": "${run_name}", "X-Key": "k=${CI_HMAC}", "content-type": "text/plain"},
        "access_token": {"env": "CI_TOKEN"},
        "secret": {"env": "CI_HMAC"},
        "payload": {"run": "${run_name}"},
    }
    body, headers, secret_headers = build_request("d-1", action, {"run_name": "a\r\nX-Evil: 1"}, secrets)
    assert headers["X-Run"] == "a X-Evil: 1"
    assert headers["Content-Type"] == "application/json" and "content-type" not in headers
    assert headers["Authorization"] == "Bearer tok"
    assert headers["X-Automation-Delivery"] == "d-1"
    expected = base64.b64encode(hmac.new(b"key", body, hashlib.sha256).digest()).decode()
    assert headers["X-Automation-Signature"] == expected == signature("key", body)
    assert {"X-Key", "Authorization", "X-Automation-Signature"} <= secret_headers
    assert "X-Run" not in secret_headers


def test_slack_message_shows_what_fired_and_why():
    ctx = {
        "automation_name": "acc <high>", "event_type": "RUN_METRIC", "run_name": "r&1", "run_url": "https://e.example/acme/v/runs/r1",
        "entity_name": "acme", "project_name": "v", "metric_name": "accuracy", "metric_step": "7", "metric_value": "0.62",
        "metric_values": "[0.5, 0.66, 0.7]", "metric_filter": "avg(accuracy) over 3 > 0.6", "trigger_id": "42",
        "fired_at": "2024-05-01T12:00:00+00:00", "run_status": "running",
    }
    message = build_message({"type": "slack", "severity": "error", "title": "${automation_name} fired"}, ctx)
    header, text, fields, context = message["blocks"]
    assert header["type"] == "header" and header["text"]["text"] == ":rotating_light: acc <high> fired"
    assert "avg(accuracy) over 3 &gt; 0.6" in text["text"]["text"] and "r&amp;1" in text["text"]["text"]
    shown = "\n".join(f["text"] for f in fields["fields"])
    for piece in ("acc &lt;high&gt;", "<https://e.example/acme/v/runs/r1|r&amp;1>", "accuracy (step 7)", "0.62", "[0.5, 0.66, 0.7]", "avg(accuracy) over 3 &gt; 0.6"):
        assert piece in shown
    assert "Run status" not in shown  # only for run-state events
    assert "trigger #42" in context["elements"][0]["text"]
    assert message["text"].startswith(":rotating_light: acc <high> fired")
    json.dumps(message)  # serialisable as is
