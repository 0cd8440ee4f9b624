"""With ENGINE_BASE_URL set, a notification links to the console: `${run_url}` is the run's
page, `${trigger_url}` the trigger's "why it fired" page, and the Slack, email and chat layouts
carry the trigger's link."""

from __future__ import annotations

from pydantic import TypeAdapter

from engine.actions import discord, pagerduty, slack, smtp, teams
from engine.actions.context import compose
from engine.rules.actions import Action
from engine.settings import Settings
from tests.unit.test_templates import row_for

BASE = "https://engine.example.com/"
WHY = "https://engine.example.com/triggers/"


def ctx(base_url: str = BASE) -> dict[str, str]:
    return compose(row_for("run_metric_threshold"), Settings(base_url=base_url))


def action(**fields):
    return TypeAdapter(Action).validate_python(fields)


def test_run_url_and_trigger_url_are_console_pages():
    found = ctx()
    assert found["run_url"] == "https://engine.example.com/acme/vision/runs/r1"
    assert found["trigger_url"] == WHY + found["trigger_id"]
    assert ctx("")["trigger_url"] == f"engine://triggers/{found['trigger_id']}"  # no web address: no link


def test_every_layout_carries_the_trigger_link():
    c = ctx()
    url = c["trigger_url"]
    message = slack.build_message(action(type="slack", webhook_url={"env": "HOOK"}), c)
    assert f"<{url}|why it fired>" in message["blocks"][-1]["elements"][0]["text"]
    mail = smtp.build_message(
        "d1", action(type="email", to=["a@example.com"]), c, "e@example.com", ["a@example.com"], []
    )
    assert f"Why it fired: {url}" in mail.get_content()
    embed = discord.build_message(action(type="discord", webhook_url={"env": "HOOK"}), c)["embeds"][0]
    assert {"name": "Why it fired", "value": url, "inline": False} in embed["fields"]
    card = teams.build_card(action(type="teams", webhook_url={"env": "HOOK"}), c)
    assert {"type": "Action.OpenUrl", "title": "Why it fired", "url": url} in card["actions"]
    event = pagerduty.build_event(action(type="pagerduty", routing_key={"env": "KEY"}), c, "rk")
    assert {"href": url, "text": "Why it fired"} in event["links"]
    # without a web address there is nothing to click: no link
    plain = slack.build_message(action(type="slack", webhook_url={"env": "HOOK"}), ctx(""))
    assert "why it fired" not in str(plain)
