"""Pure parts of the actions: address policy, retry timing, request and message building."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import random
import threading
from datetime import UTC, datetime, timedelta

import pytest

from engine.actions import retry, ssrf
from engine.actions.outbox import delivery_rows
from engine.actions.secrets import Secrets, resolve
from engine.actions.slack import build_message
from engine.actions.webhook import build_request, signature
from engine.exceptions import DeliveryError, PermanentDeliveryError
from engine.rules import SlackAction, WebhookAction, parse_rules_text
from engine.settings import Settings

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "169.254.1.1",
        "0.0.0.0",
        "100.64.0.1",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "fd00:ec2::254",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "64:ff9b::a00:1",
        "2002:7f00:1::",
    ],
)
def test_non_public_addresses_are_forbidden(address):
    assert ssrf.why_forbidden(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_are_allowed(address):
    assert ssrf.why_forbidden(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "2130706433", "0x7f000001", "017700000001", "127.1", "localhost", "[::1]"]
)
def test_loopback_in_any_spelling_is_refused(host):
    with pytest.raises(PermanentDeliveryError, match=r"private address .*ENGINE_WEBHOOK_ALLOW_HOSTS"):
        ssrf.check_target(host, 80, "")


def test_allow_list_by_address_cidr_or_host_name(localhost_layout):
    loopback = [ipaddress.ip_address("127.0.0.1")]
    assert ssrf.check_target("2130706433", 80, "127.0.0.1") == loopback
    assert ssrf.check_target("127.0.0.1", 80, "10.0.0.0/8, 127.0.0.0/8") == loopback
    assert ssrf.check_target("localhost", 80, "LOCALHOST.") == localhost_layout  # host names: case and dot
    assert ssrf.check_target("[::ffff:127.0.0.1]", 80, "127.0.0.1") == [
        ipaddress.ip_address("::ffff:127.0.0.1")
    ]
    with pytest.raises(PermanentDeliveryError):
        ssrf.check_target("127.0.0.1", 80, "10.0.0.0/8, otherhost")


def test_retry_backoff_doubles_with_jitter_never_below_and_caps():
    rng = random.Random(1)
    for attempt in range(1, 40):
        nominal = min(retry.BACKOFF_CAP_SECONDS, 1.0 * 2 ** (attempt - 1))
        for _ in range(50):
            assert nominal <= retry.backoff(attempt, 1.0, rng) <= nominal * (1 + retry.JITTER)
    assert retry.backoff(30, 1.0, rng) <= retry.BACKOFF_CAP_SECONDS * (1 + retry.JITTER)
    assert retry.backoff(5000, 1.0, rng) <= retry.BACKOFF_CAP_SECONDS * (
        1 + retry.JITTER
    )  # redelivered often: no overflow
    delays = {round(retry.backoff(8, 1.0, rng), 3) for _ in range(20)}
    assert len(delays) > 10  # jittered: deliveries failing together come back apart


def schedule(max_attempts: int, base: float) -> list[float]:
    """When each attempt is made, in seconds after the first, at the earliest (jitter adds
    up to 20 % to each wait, a `Retry-After` may add more). The last one is how long a
    receiver may be down before the delivery is `failed`."""
    times = [0.0]
    for attempt in range(1, max_attempts):
        times.append(times[-1] + retry.nominal_backoff(attempt, base))
    return times


def test_the_default_schedule_spans_over_an_hour_of_outage():
    base = Settings.model_fields["retry_base_seconds"].default
    times = schedule(retry.DEFAULT_MAX_ATTEMPTS, base)
    assert len(times) == retry.DEFAULT_MAX_ATTEMPTS and times[0] == 0
    assert times[-1] >= 3600  # at the earliest: jitter only adds
    assert schedule(retry.DEFAULT_MAX_ATTEMPTS - 1, base)[-1] < 3600  # and not many more attempts than that
    assert times[-1] * (1 + retry.JITTER) < 2 * 3600  # a dead receiver is `failed` within two hours
    assert times[1] == base and times[2] == 3 * base  # quick first retries: a blip costs a second or two
    # as docs/actions.md lists them
    assert [round(t) for t in times] == [
        0,
        1,
        3,
        7,
        15,
        31,
        63,
        127,
        255,
        511,
        1023,
        1623,
        2223,
        2823,
        3423,
        4023,
    ]
    # The actual waits follow it: a delivery failing every time is retried no sooner than this.
    rng, elapsed = random.Random(7), 0.0
    for attempt, earliest in enumerate(times[1:], start=1):
        elapsed += retry.next_delay(attempt, base, None, rng)
        assert earliest <= elapsed <= earliest * (1 + retry.JITTER)


def test_max_attempts_defaults_to_the_schedule_and_an_explicit_one_wins():
    rule = "name: r\nscope: {project: a/b}\nevent: {type: run_state, states: [failed]}\naction: {type: webhook, url: 'https://ci.example/x'%s}\n"
    (default,) = parse_rules_text(rule % "")
    assert default.automation.action.max_attempts == retry.DEFAULT_MAX_ATTEMPTS
    assert delivery_rows(1, [default.automation.action])[0]["max_attempts"] == retry.DEFAULT_MAX_ATTEMPTS
    (explicit,) = parse_rules_text(rule % ", max_attempts: 3")
    assert delivery_rows(1, [explicit.automation.action])[0]["max_attempts"] == 3
    slack = {"type": "slack", "webhook_url": {"env": "SLACK_URL"}}  # slack actions have no max_attempts field
    assert delivery_rows(1, [slack])[0]["max_attempts"] == retry.DEFAULT_MAX_ATTEMPTS


def test_retry_after_seconds_and_http_date_and_cap():
    assert retry.parse_retry_after("3", NOW) == 3.0
    http_date = (NOW + timedelta(seconds=90)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert retry.parse_retry_after(http_date, NOW) == pytest.approx(90.0)
    assert retry.parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", NOW) == 0.0  # in the past
    assert retry.parse_retry_after("soon", NOW) is None
    assert retry.parse_retry_after(None, NOW) is None
    assert retry.next_delay(1, 0.05, 2.0) >= 2.0  # never sooner than asked
    assert retry.next_delay(1, 0.05, 10**9) <= retry.RETRY_AFTER_CAP_SECONDS


@pytest.mark.parametrize(
    "status,retryable",
    [
        (408, True),
        (429, True),
        (500, True),
        (503, True),
        (400, False),
        (401, False),
        (404, False),
        (410, False),
    ],
)
def test_retryable_statuses(status, retryable):
    assert retry.is_retryable_status(status) is retryable


def test_missing_secret_names_the_variable(monkeypatch):
    monkeypatch.delenv("CI_TOKEN_X", raising=False)
    with pytest.raises(PermanentDeliveryError, match="environment variable CI_TOKEN_X is not set"):
        resolve(WebhookAction(type="webhook", url="http://x", access_token={"env": "CI_TOKEN_X"}))


def test_scrub_removes_every_secret_value():
    s = Secrets({"ACCESS_TOKEN": "tok-123", "CI": "tok-123"}, {"secret": "hmac-key"})
    assert s.scrub("Bearer tok-123 and hmac-key") == "Bearer [redacted] and [redacted]"
    assert s.scrub_json({"h": ["tok-123"], "tok-123": 1}) == {"h": ["[redacted]"], "[redacted]": 1}


def test_webhook_request_headers_signature_and_header_injection():
    secrets = Secrets(
        {"ACCESS_TOKEN": "tok", "CI_TOKEN": "tok", "CI_HMAC": "key"}, {"access_token": "tok", "secret": "key"}
    )
    action = WebhookAction.model_validate(
        {
            "type": "webhook",
            "url": "http://127.0.0.1/",
            "headers": {"X-Run": "${run_name}", "X-Key": "k=${CI_HMAC}", "content-type": "text/plain"},
            "access_token": {"env": "CI_TOKEN"},
            "secret": {"env": "CI_HMAC"},
            "payload": {"run": "${run_name}"},
        }
    )
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
        "automation_name": "acc <high>",
        "event_type": "RUN_METRIC",
        "run_name": "r&1",
        "run_url": "https://e.example/acme/v/runs/r1",
        "entity_name": "acme",
        "project_name": "v",
        "metric_name": "accuracy",
        "metric_step": "7",
        "metric_value": "0.62",
        "metric_values": "[0.5, 0.66, 0.7]",
        "metric_filter": "avg(accuracy) over 3 > 0.6",
        "trigger_id": "42",
        "fired_at": "2024-05-01T12:00:00+00:00",
        "run_status": "running",
    }
    action = SlackAction(
        type="slack", webhook_url={"env": "SLACK_URL"}, severity="error", title="${automation_name} fired"
    )
    message = build_message(action, ctx)
    header, text, fields, context = message["blocks"]
    assert header["type"] == "header" and header["text"]["text"] == ":rotating_light: acc <high> fired"
    assert "avg(accuracy) over 3 &gt; 0.6" in text["text"]["text"] and "r&amp;1" in text["text"]["text"]
    shown = "\n".join(f["text"] for f in fields["fields"])
    for piece in (
        "acc &lt;high&gt;",
        "<https://e.example/acme/v/runs/r1|r&amp;1>",
        "accuracy (step 7)",
        "0.62",
        "[0.5, 0.66, 0.7]",
        "avg(accuracy) over 3 &gt; 0.6",
    ):
        assert piece in shown
    assert "Run status" not in shown  # only for run-state events
    assert "trigger #42" in context["elements"][0]["text"]
    assert message["text"].startswith(":rotating_light: acc <high> fired")
    json.dumps(message)  # serialisable as is


def test_refused_urls_judges_literals_and_names_that_resolve_now(localhost_layout):
    urls = ["http://10.0.0.5/x", "https://93.184.216.34/x", "http://169.254.169.254/latest", "http://localhost:8080/",
            "http://127.0.0.1:8765/hook", "http://[::1]:9/"]  # fmt: skip
    refused = ssrf.refused_urls(urls, "")
    assert set(refused) == set(urls) - {"https://93.184.216.34/x"}
    assert refused["http://10.0.0.5/x"].endswith(
        "10.0.0.5 (private); allow it with ENGINE_WEBHOOK_ALLOW_HOSTS"
    )
    assert (
        "cloud metadata" in refused["http://169.254.169.254/latest"]
        and "allow it" not in refused["http://169.254.169.254/latest"]
    )
    # With 127.0.0.1 allowed, localhost is still refused where it also means ::1.
    refused = ssrf.refused_urls(urls, "127.0.0.1, 0.0.0.0/0")
    two_addresses = len(localhost_layout) == 2
    assert set(refused) == {"http://169.254.169.254/latest", "http://[::1]:9/"} | (
        {"http://localhost:8080/"} if two_addresses else set()
    )


def test_refused_urls_leaves_what_it_cannot_judge_now_to_the_send(monkeypatch):
    release = threading.Event()
    real = ssrf.resolve

    def resolve(host, port):
        if host == "slow.example":
            release.wait(30)  # a resolver that does not answer within the check's budget
        if host in ("slow.example", "down.example"):
            raise DeliveryError(f"cannot resolve webhook host {host}")
        return real(host, port)

    monkeypatch.setattr(ssrf, "resolve", resolve)
    try:
        urls = [
            "http://down.example/x",
            "http://slow.example/x",
            "http://${host}/x",
            "http://[::1/x",
            "http://10.0.0.1/",
        ]
        assert list(ssrf.refused_urls(urls, "", timeout=1.0)) == ["http://10.0.0.1/"]
    finally:
        release.set()
