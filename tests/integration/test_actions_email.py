"""The `email` action against a real SMTP server in the test process (aiosmtpd): STARTTLS
with a throwaway certificate, AUTH, implicit TLS, retried 4xx and final 5xx answers, and
recipients rendered from templates."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import pytest
from actions_helpers import attempts, delivery, fire, history, make_automation, make_run, settle

from engine.actions.dispatcher import Dispatcher
from engine.settings import Settings
from tests.receiver import SmtpReceiver, make_certificate, server_tls

PASSWORD = "smtp-pass-0f9e8d"
_serial = itertools.count(1)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    return make_certificate(tmp_path_factory.mktemp("smtp-tls"))


def email_settings(database_url: str, smtp_url: str, ca_file: Path | None, **more) -> Settings:
    return Settings(
        database_url=database_url,
        webhook_allow_hosts="localhost",
        retry_base_seconds=0.05,
        smtp_url=smtp_url,
        smtp_password=PASSWORD,
        smtp_from="ML alerts <engine@example.com>",
        smtp_ca_file=ca_file,
        **more,
    )


def action(**fields) -> dict:
    return {
        "type": "email",
        "to": ["ml-team@example.com"],
        "cc": None,
        "subject": None,
        "body": None,
    } | fields


def deliver(conn, database_url, settings, spec, *, user="alice"):
    n = next(_serial)
    automation = make_automation(conn, f"mail-{n}", [spec])
    run_pk = make_run(conn, run_id=f"r{n}", user=user)
    trigger_id, (delivery_id,) = fire(conn, automation, [spec], run_pk=run_pk)
    with Dispatcher(database_url, settings) as d:
        settle(d, conn, [delivery_id])
    return trigger_id, delivery_id


def test_starttls_and_auth_deliver_a_message_that_says_what_fired(conn, database_url, certificate):
    cert, key = certificate
    spec = action(cc=["${event_author}@example.com"])
    with SmtpReceiver(tls=server_tls(cert, key), users={"bot": PASSWORD}) as smtp:
        settings = email_settings(database_url, smtp.url("bot"), cert)
        trigger_id, delivery_id = deliver(conn, database_url, settings, spec)
    (mail,) = smtp.mails
    assert mail.tls and mail.login == "bot" and smtp.logins == [("bot", True)]
    assert mail.sender == "engine@example.com"
    assert mail.recipients == ["ml-team@example.com", "alice@example.com"]
    message = mail.message
    assert message["To"] == "ml-team@example.com" and message["Cc"] == "alice@example.com"
    assert message["From"] == "ML alerts <engine@example.com>"
    assert message["Subject"].startswith("mail-") and "avg(accuracy) over 3 > 0.6" in message["Subject"]
    assert message["Message-ID"] == f"<{delivery_id}@example.com>"
    assert message["X-Automation-Delivery"] == str(delivery_id)
    body = message.get_content()
    for line in ("Run: resnet-50", "Metric: accuracy (step 7)", "Window values: [0.5, 0.66, 0.7]"):
        assert line in body
    assert f"trigger #{trigger_id}" in body
    assert history(conn, trigger_id)["delivery_status"] == "succeeded"
    (attempt,) = attempts(conn, delivery_id)
    assert attempt["request"]["url"] == f"smtp://localhost:{smtp.port}"
    assert attempt["request"]["to"] == ["ml-team@example.com"] and attempt["request"]["cc"] == [
        "alice@example.com"
    ]
    assert attempt["response_body"].startswith("250 ")
    assert PASSWORD not in json.dumps(attempt, default=str)


def test_implicit_tls_with_the_ca_file(conn, database_url, certificate):
    cert, key = certificate
    with SmtpReceiver(tls=server_tls(cert, key), implicit=True, users={"bot": PASSWORD}) as smtp:
        settings = email_settings(database_url, smtp.url("bot"), cert)
        _, delivery_id = deliver(conn, database_url, settings, action(subject="run ${run_name} is up"))
    (mail,) = smtp.mails
    assert mail.tls and mail.login == "bot" and mail.message["Subject"] == "run resnet-50 is up"
    assert delivery(conn, delivery_id)["status"] == "succeeded"


def test_a_4xx_answer_is_retried_and_a_5xx_answer_fails(conn, database_url, certificate):
    cert, key = certificate
    with SmtpReceiver("451 4.3.0 queue full, try later", None, tls=server_tls(cert, key)) as smtp:
        _, retried = deliver(conn, database_url, email_settings(database_url, smtp.url(), cert), action())
    first, second = attempts(conn, retried)
    assert first["error"] == "SMTP 451 4.3.0 queue full, try later"
    assert second["error"] is None and delivery(conn, retried)["status"] == "succeeded"
    assert len(smtp.mails) == 2

    with SmtpReceiver("554 5.7.1 message refused", tls=server_tls(cert, key)) as smtp:
        _, refused = deliver(
            conn, database_url, email_settings(database_url, smtp.url(), cert), action(body="x")
        )
    row = delivery(conn, refused)
    assert row["status"] == "failed" and row["attempts"] == 1
    assert row["last_error"] == "SMTP 554 5.7.1 message refused"


def test_recipients_refused_with_4xx_are_retried_with_5xx_fail(conn, database_url, certificate):
    cert, key = certificate
    answers = iter(["450 4.2.1 mailbox busy"])
    with SmtpReceiver(tls=server_tls(cert, key), rcpt_answer=lambda a: next(answers, None)) as smtp:
        _, busy = deliver(conn, database_url, email_settings(database_url, smtp.url(), cert), action())
    assert [a["error"] is None for a in attempts(conn, busy)] == [False, True]
    with SmtpReceiver(tls=server_tls(cert, key), rcpt_answer=lambda a: "550 5.1.1 no such user") as smtp:
        _, gone = deliver(
            conn, database_url, email_settings(database_url, smtp.url(), cert), action(body="y")
        )
    row = delivery(conn, gone)
    assert (
        row["status"] == "failed"
        and "550" in row["last_error"]
        and "ml-team@example.com" in row["last_error"]
    )


def test_a_wrong_password_fails_without_showing_it(conn, database_url, certificate):
    cert, key = certificate
    with SmtpReceiver(tls=server_tls(cert, key), users={"bot": "another"}) as smtp:
        _, delivery_id = deliver(
            conn, database_url, email_settings(database_url, smtp.url("bot"), cert), action()
        )
    row = delivery(conn, delivery_id)
    assert row["status"] == "failed" and row["last_error"].startswith("SMTP 535")
    assert smtp.logins and not smtp.mails
    assert PASSWORD not in json.dumps(attempts(conn, delivery_id), default=str)


def test_a_server_without_starttls_is_refused_when_required_or_when_a_password_would_go_in_clear(
    conn, database_url
):
    with SmtpReceiver() as smtp:  # no TLS at all
        required = email_settings(database_url, smtp.url(query="starttls=required"), None)
        _, d1 = deliver(conn, database_url, required, action())
        with_user = email_settings(database_url, smtp.url("bot"), None)
        _, d2 = deliver(conn, database_url, with_user, action(body="z"))
        # without a user and without required, it is sent as the server allows (opportunistic TLS)
        _, d3 = deliver(conn, database_url, email_settings(database_url, smtp.url(), None), action(body="w"))
    assert "does not offer STARTTLS" in delivery(conn, d1)["last_error"]
    assert "password is not sent in clear" in delivery(conn, d2)["last_error"]
    assert delivery(conn, d1)["status"] == delivery(conn, d2)["status"] == "failed"
    assert delivery(conn, d3)["status"] == "succeeded" and not smtp.mails[0].tls
    assert len(smtp.mails) == 1


def test_an_untrusted_certificate_fails_and_names_the_ca_setting(conn, database_url, certificate):
    cert, key = certificate
    with SmtpReceiver(tls=server_tls(cert, key)) as smtp:
        _, delivery_id = deliver(conn, database_url, email_settings(database_url, smtp.url(), None), action())
    row = delivery(conn, delivery_id)
    assert row["status"] == "failed" and "ENGINE_SMTP_CA_FILE" in row["last_error"] and not smtp.mails


def test_the_smtp_host_passes_the_address_policy(conn, database_url, certificate):
    cert, key = certificate
    with SmtpReceiver(tls=server_tls(cert, key)) as smtp:
        settings = email_settings(database_url, smtp.url(), cert).model_copy(
            update={"webhook_allow_hosts": ""}
        )
        _, delivery_id = deliver(conn, database_url, settings, action())
    row = delivery(conn, delivery_id)
    assert row["status"] == "failed" and not smtp.mails
    assert row["last_error"].startswith("SMTP server (ENGINE_SMTP_URL): webhook target localhost resolves to")


def test_a_rendered_recipient_that_is_not_one_address_fails_naming_the_field(conn, database_url, certificate):
    cert, key = certificate
    spec = action(to=["ml-team@example.com", "${event_author}@example.com"])
    with SmtpReceiver(tls=server_tls(cert, key)) as smtp:
        settings = email_settings(database_url, smtp.url(), cert)
        _, delivery_id = deliver(conn, database_url, settings, spec, user="eve@evil.example, bob")
    row = delivery(conn, delivery_id)
    assert row["status"] == "failed" and not smtp.mails
    assert row["last_error"].startswith("to[1] 'eve@evil.example, bob@example.com' (rendered from")
