"""Secrets reach the receiver and nowhere else: not the database (a full pg_dump of it),
not the logs, not the CLI's output (SPEC section 3, "Secrets")."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import uuid
from pathlib import Path

from actions_helpers import fire, make_automation, make_run, settle
from typer.testing import CliRunner

from engine.actions.dispatcher import Dispatcher
from engine.cli import app
from engine.settings import Settings, get_settings
from tests.receiver import Received, Receiver, Reply

PG_DUMP = "/usr/lib/postgresql/15/bin/pg_dump"


def echo(status: int):
    """A receiver that sends every header it got back in its body (a careless one)."""

    def reply(request: Received) -> Reply:
        # "ok": Slack's chat.postMessage answer must say so.
        return Reply(
            status, json.dumps({"ok": True, "you_sent": request.headers, "path": request.path}).encode()
        )

    return reply


def test_secrets_are_absent_from_every_table_log_line_and_cli_output(conn, database_url, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    secrets = {
        "CI_TOKEN": "tok-" + uuid.uuid4().hex,
        "CI_HMAC": "hmac-" + uuid.uuid4().hex,
        "SLACK_BOT": "xoxb-" + uuid.uuid4().hex,
    }
    hook_secret = "hook" + uuid.uuid4().hex
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)

    with Receiver(echo(500), echo(200)) as rx, Receiver(echo(200)) as slack:
        monkeypatch.setenv("SLACK_HOOK", slack.url(f"/services/T/B/{hook_secret}"))
        settings = Settings(
            database_url=database_url,
            webhook_allow_hosts="127.0.0.1",
            retry_base_seconds=0.05,
            slack_api_url=slack.url("/api/"),
        )
        hook = {
            "type": "webhook",
            "url": rx.url(),
            "access_token": {"env": "CI_TOKEN"},
            "secret": {"env": "CI_HMAC"},
            "headers": {"X-Copy": "k=${CI_HMAC}", "X-Token": "${ACCESS_TOKEN}"},
            "payload": {"token": "${ACCESS_TOKEN}", "run": "${run_name}"},
            "timeout": 5.0,
            "max_attempts": 3,
        }
        by_url = {
            "type": "slack",
            "webhook_url": {"env": "SLACK_HOOK"},
            "token": None,
            "channel": None,
            "title": None,
            "message": None,
            "severity": "info",
        }
        by_token = {
            "type": "slack",
            "webhook_url": None,
            "token": {"env": "SLACK_BOT"},
            "channel": "C1",
            "title": None,
            "message": None,
            "severity": "info",
        }
        actions = [hook, by_url, by_token]
        automation = make_automation(conn, "secretive", actions)
        _, ids = fire(conn, automation, actions, run_pk=make_run(conn))
        with Dispatcher(database_url, settings) as d:
            settle(d, conn, ids)
        monkeypatch.setenv("ENGINE_SLACK_API_URL", slack.url("/api/"))
        get_settings.cache_clear()
        cli = "\n".join(
            runner_output
            for runner_output in (
                CliRunner().invoke(app, ["deliveries"]).output,
                CliRunner().invoke(app, ["actions", "test", "secretive"]).output,
            )
        )

    # Positive control: the secrets did travel, to the receivers only.
    assert rx.requests[0].headers["Authorization"] == f"Bearer {secrets['CI_TOKEN']}"
    assert rx.requests[0].json()["token"] == secrets["CI_TOKEN"]
    assert any(r.path.endswith(hook_secret) for r in slack.requests)
    assert any(r.headers.get("Authorization") == f"Bearer {secrets['SLACK_BOT']}" for r in slack.requests)
    statuses = [r[0] for r in conn.execute("SELECT status FROM deliveries ORDER BY action_index")]
    assert statuses == ["succeeded"] * 3

    dump = subprocess.run(
        [PG_DUMP if Path(PG_DUMP).exists() else shutil.which("pg_dump"), "--dbname", database_url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(ids[0]) in dump and "delivery_attempts" in dump  # the dump has the data
    assert "[redacted]" in dump  # echoed headers were scrubbed, not dropped
    logs = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    assert "delivery" in logs  # the dispatcher did log
    for value in [*secrets.values(), hook_secret]:
        assert value not in dump
        assert value not in logs
        assert value not in cli
