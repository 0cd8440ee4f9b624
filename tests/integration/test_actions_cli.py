"""`engine deliveries`, `engine redeliver`, `engine actions test` (in-process CliRunner)."""

from __future__ import annotations

import pytest
from actions_helpers import delivery, fire, make_automation, make_run, settle
from typer.testing import CliRunner

from engine.actions.dispatcher import Dispatcher
from engine.cli import app
from engine.exceptions import NotFound
from engine.settings import Settings, get_settings
from tests.receiver import Receiver, Reply, SmtpReceiver, make_certificate, server_tls

runner = CliRunner()


def webhook(url: str, **fields) -> dict:
    return {
        "type": "webhook",
        "url": url,
        "headers": {},
        "access_token": None,
        "secret": None,
        "payload": None,
        "timeout": 5.0,
        "max_attempts": 1,
    } | fields


@pytest.fixture
def settings(database_url) -> Settings:
    return Settings(database_url=database_url, webhook_allow_hosts="127.0.0.1", retry_base_seconds=0.05)


def test_deliveries_lists_and_filters(conn, database_url, settings):
    with Receiver(lambda r: Reply(410, b"gone") if r.path == "/bad" else Reply(200)) as rx:
        bad, good = webhook(rx.url("/bad")), webhook(rx.url("/good"))
        a_bad, a_good = make_automation(conn, "cli-bad", [bad]), make_automation(conn, "cli-good", [good])
        _, (bad_id,) = fire(conn, a_bad, [bad])
        _, (good_id,) = fire(conn, a_good, [good])
        with Dispatcher(database_url, settings) as d:
            settle(d, conn, [bad_id, good_id])

    everything = runner.invoke(app, ["deliveries"])
    assert everything.exit_code == 0, everything.output
    assert str(bad_id)[:8] in everything.output and str(good_id)[:8] in everything.output
    assert "410" in everything.output

    failed = runner.invoke(app, ["deliveries", "--status", "failed"])
    assert str(bad_id)[:8] in failed.output and str(good_id)[:8] not in failed.output
    by_name = runner.invoke(app, ["deliveries", "--automation", "cli-good"])
    assert str(good_id)[:8] in by_name.output and str(bad_id)[:8] not in by_name.output
    bad_status = runner.invoke(app, ["deliveries", "--status", "lost"])
    assert bad_status.exit_code != 0


def test_redeliver_here_by_prefix_sends_now(conn, database_url, settings):
    with Receiver(Reply(503), Reply(200)) as rx:
        action = webhook(rx.url())
        automation = make_automation(conn, "cli-redo", [action])
        _, (delivery_id,) = fire(conn, automation, [action])
        with Dispatcher(database_url, settings) as d:
            settle(d, conn, [delivery_id])
        assert delivery(conn, delivery_id)["status"] == "failed"
        result = runner.invoke(app, ["redeliver", str(delivery_id)[:8], "--here"])
    assert result.exit_code == 0, result.output
    assert (
        "pending again; sending it from this shell" in result.output
        and "succeeded (HTTP 200)" in result.output
    )
    assert [r.headers["X-Automation-Delivery"] for r in rx.requests] == [str(delivery_id)] * 2
    assert delivery(conn, delivery_id)["status"] == "succeeded"


def test_redeliver_queues_for_the_service_by_default_and_unknown_ids(conn, database_url, settings):
    with Receiver(Reply(400)) as rx:
        action = webhook(rx.url())
        automation = make_automation(conn, "cli-queue", [action])
        _, (delivery_id,) = fire(conn, automation, [action])
        with Dispatcher(database_url, settings) as d:
            settle(d, conn, [delivery_id])
        queued = runner.invoke(app, ["redeliver", str(delivery_id)])
    assert queued.exit_code == 0 and len(rx.requests) == 1  # nothing sent from here
    assert (
        f"delivery {delivery_id} (cli-queue, webhook) queued: a running `engine serve` sends it within"
        in queued.output
    )
    row = delivery(conn, delivery_id)
    assert (row["status"], row["attempts"], row["max_attempts"]) == ("pending", 1, 2)  # a fresh budget
    assert row["next_attempt_at"] <= conn.execute("SELECT now()").fetchone()[0]  # due now
    missing = runner.invoke(app, ["redeliver", "ffffffff"])
    assert isinstance(missing.exception, NotFound) and "no delivery ffffffff" in str(missing.exception)


def test_actions_test_sends_a_sample_and_writes_nothing(conn, monkeypatch):
    monkeypatch.setenv("CLI_TOKEN", "tok-cli-secret")
    with Receiver(Reply(202, b'{"queued": true}')) as rx:
        action = webhook(
            rx.url(),
            access_token={"env": "CLI_TOKEN"},
            payload={"run": "${run_name}", "why": "${metric_filter}"},
        )
        make_automation(conn, "cli-test", [action])
        make_automation(conn, "cli-noop", [{"type": "no_op"}])
        make_run(conn)
        result = runner.invoke(app, ["actions", "test", "cli-test"])
        no_op = runner.invoke(app, ["actions", "test", "cli-noop"])
    assert result.exit_code == 0, result.output
    assert "HTTP 202" in result.output and '{"queued": true}' in result.output
    assert "Authorization: [redacted]" in result.output
    assert no_op.exit_code == 0 and "action 0 (no_op): nothing to send" in no_op.output
    assert "tok-cli-secret" not in result.output
    (request,) = rx.requests
    assert request.headers["Authorization"] == "Bearer tok-cli-secret"
    assert request.json() == {"run": "sample-run", "why": "avg(accuracy) over 3 > 0.6"}
    assert conn.execute("SELECT count(*) FROM triggers").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM deliveries").fetchone()[0] == 0


def test_actions_test_reports_a_failure(conn, monkeypatch):
    monkeypatch.delenv("ABSENT_TOKEN", raising=False)
    make_automation(
        conn, "cli-broken", [webhook("http://127.0.0.1:9/", access_token={"env": "ABSENT_TOKEN"})]
    )
    result = runner.invoke(app, ["actions", "test", "cli-broken"])
    assert result.exit_code == 1
    assert "environment variable ABSENT_TOKEN is not set" in result.output
    unknown = runner.invoke(app, ["actions", "test", "nobody"])
    assert isinstance(unknown.exception, NotFound)


def test_actions_test_previews_an_email_and_a_pagerduty_event(conn, monkeypatch, tmp_path):
    cert, key = make_certificate(tmp_path)
    monkeypatch.setenv("PD_CLI_KEY", "R0UT1NGKEY0000000000000000000cli")
    monkeypatch.setenv("ENGINE_SMTP_PASSWORD", "smtp-cli-secret")
    monkeypatch.setenv("ENGINE_SMTP_FROM", "engine@example.com")
    monkeypatch.setenv("ENGINE_SMTP_CA_FILE", str(cert))
    email = {
        "type": "email",
        "to": ["${event_author}@example.com"],
        "subject": "${run_name}: ${metric_filter}",
    }
    with (
        SmtpReceiver(tls=server_tls(cert, key), users={"bot": "smtp-cli-secret"}) as smtp,
        Receiver(Reply(202, b'{"status":"success"}')) as rx,
    ):
        monkeypatch.setenv("ENGINE_SMTP_URL", smtp.url("bot"))
        get_settings.cache_clear()
        pager = {"type": "pagerduty", "routing_key": {"env": "PD_CLI_KEY"}, "url": rx.url("/v2/enqueue")}
        make_automation(conn, "cli-mail", [email])
        make_automation(conn, "cli-pager", [pager])
        mailed = runner.invoke(app, ["actions", "test", "cli-mail"])
        paged = runner.invoke(app, ["actions", "test", "cli-pager"])
    assert mailed.exit_code == 0, mailed.output
    assert f"action 0 (email) → smtp://localhost:{smtp.port}" in mailed.output
    assert "to: sample-user@example.com" in mailed.output
    assert "subject: sample-run: avg(accuracy) over 3 > 0.6" in mailed.output
    assert "response: 250 " in mailed.output and "smtp-cli-secret" not in mailed.output
    (mail,) = smtp.mails
    assert mail.recipients == ["sample-user@example.com"] and mail.login == "bot"
    assert paged.exit_code == 0, paged.output
    assert "HTTP 202" in paged.output and "R0UT1NGKEY" not in paged.output
    (request,) = rx.requests
    assert request.json()["dedup_key"] == "cli-pager/sample-run"
    assert conn.execute("SELECT count(*) FROM deliveries").fetchone()[0] == 0
