"""Pure parts of the senders: the SMTP URL, Discord's webhook URL and markdown, PagerDuty's
dedup key, and rendered addresses."""

from __future__ import annotations

import pytest

from engine.actions import discord, pagerduty, smtp
from engine.actions.templates import render_address
from engine.actions.webhook import url_escape
from engine.exceptions import PermanentDeliveryError
from engine.rules.actions import channel_problem, mailbox_problem, url_problem


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("smtp://mail.example.com", ("smtp", "mail.example.com", 25, None, False)),
        ("smtp://bot@mail.example.com:587?starttls=required", ("smtp", "mail.example.com", 587, "bot", True)),
        (
            "smtps://alerts%40example.com@mail.example.com",
            ("smtps", "mail.example.com", 465, "alerts@example.com", False),
        ),
    ],
)
def test_smtp_urls(url, expected):
    server = smtp.parse_server(url)
    assert (server.scheme, server.host, server.port, server.user, server.starttls_required) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "ENGINE_SMTP_URL is not set (needed by email actions)"),
        (
            "smtp://bot:hunter2@mail.example.com",
            "ENGINE_SMTP_URL must not hold a password: set ENGINE_SMTP_PASSWORD",
        ),
        ("http://mail.example.com", "ENGINE_SMTP_URL must be smtp://[user@]host[:port] or smtps://"),
        ("smtp://mail.example.com?tls=yes", "ENGINE_SMTP_URL: the only query parameter is starttls=required"),
        ("smtps://mail.example.com?starttls=required", "ENGINE_SMTP_URL: smtps:// is TLS from the start"),
        ("smtp://mail.example.com:99999", "ENGINE_SMTP_URL is not a valid URL"),
    ],
)
def test_smtp_url_problems_are_named_without_the_password(url, message):
    with pytest.raises(PermanentDeliveryError) as exc:
        smtp.parse_server(url)
    assert str(exc.value).startswith(message)
    assert "hunter2" not in str(exc.value)


def test_discord_wait_and_markdown():
    assert (
        discord.with_wait("https://discord.com/api/webhooks/1/tok")
        == "https://discord.com/api/webhooks/1/tok?wait=true"
    )
    assert (
        discord.with_wait("https://d/api/webhooks/1/tok?thread_id=5")
        == "https://d/api/webhooks/1/tok?thread_id=5&wait=true"
    )
    assert discord.with_wait("https://d/api/webhooks/1/tok?wait=false").endswith("?wait=false")
    assert (
        discord.escape_markdown("*a*_b_ [x](https://evil) `c`")
        == "\\*a\\*\\_b\\_ [x]\\(https://evil) \\`c\\`"
    )


def test_pagerduty_dedup_key():
    assert pagerduty.dedup_key({"automation_name": "nan-loss", "run_id": "3f9a"}) == "nan-loss/3f9a"
    artifact = {"automation_name": "new-data", "artifact_version": "artifact://7"}
    assert pagerduty.dedup_key(artifact) == "new-data/artifact://7"
    long = pagerduty.dedup_key({"automation_name": "a" * 128, "run_id": "r" * 200})
    assert long.startswith("sha256:") and len(long) <= 255
    assert long == pagerduty.dedup_key({"automation_name": "a" * 128, "run_id": "r" * 200})


def test_rendered_addresses_are_judged_again():
    ctx = {"project_name": "vision", "run_name": "a/b c", "event_author": "alice"}
    assert render_address("#ml-${project_name}", "channel", ctx, channel_problem) == "#ml-vision"
    assert (
        render_address(
            "https://ci.example.com/${project_name}/${run_name}", "url", ctx, url_problem, escape=url_escape
        )
        == "https://ci.example.com/vision/a%2Fb%20c"
    )
    assert render_address("${event_author}@example.com", "to", ctx, mailbox_problem) == "alice@example.com"
    with pytest.raises(PermanentDeliveryError) as exc:
        render_address("#${run_name}", "channel", ctx, channel_problem)
    assert str(exc.value).startswith("channel '#a/b c' (rendered from '#${run_name}') must be a channel name")
    # a written address is the loader's to judge: returned as it is
    assert render_address("#ml-alerts", "channel", ctx, channel_problem) == "#ml-alerts"


@pytest.mark.parametrize("address", ["a@b", "first.last+tag@example.co.uk", "o'brien@example.com"])
def test_mailboxes(address):
    assert mailbox_problem(address) is None


@pytest.mark.parametrize(
    "address",
    ["", "a", "a@", "@b", "a@b, c@d", "A <a@b>", "a@b\r\nBcc: x@y", "a b@c", "a@-b", "a@b..c", "a@b@c"],
)
def test_not_mailboxes(address):
    assert mailbox_problem(address) is not None
