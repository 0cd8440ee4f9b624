"""Webhook deliveries end to end: outbox rows -> dispatcher -> a real HTTP receiver."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from datetime import timedelta
from types import SimpleNamespace

import pytest
from actions_helpers import attempts, delivery, fire, history, make_automation, make_run, settle

from engine import clock
from engine.actions import dispatcher as dispatcher_module
from engine.actions.context import build_context
from engine.actions.dispatcher import Dispatcher
from engine.actions.send import send_action
from engine.settings import Settings, get_settings
from tests.receiver import Receiver, Reply, free_port

LEASE_MARGIN_SECONDS = Settings.model_fields["delivery_lease_margin"].default  # the default lease margin


@pytest.fixture
def settings(database_url) -> Settings:
    return Settings(
        database_url=database_url,
        webhook_allow_hosts="127.0.0.1",
        retry_base_seconds=0.05,
        delivery_workers=4,
    )


@pytest.fixture
def dispatcher(database_url, settings):
    d = Dispatcher(database_url, settings)
    yield d
    d.stop()


def webhook(url: str, **fields) -> dict:
    return {
        "type": "webhook",
        "url": url,
        "headers": {},
        "access_token": None,
        "secret": None,
        "payload": None,
        "timeout": 10.0,
        "max_attempts": 5,
    } | fields


def verify(secret: str, body: bytes, header: str) -> bool:
    """What a receiver does (README): recompute the HMAC over the raw body."""
    expected = base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()
    return hmac.compare_digest(expected, header)


def test_signed_webhook_with_bearer_token_carries_the_values_that_fired(conn, dispatcher, monkeypatch):
    monkeypatch.setenv("CI_TOKEN", "tok-5b1d")
    monkeypatch.setenv("CI_HMAC", "hmac-9f3e")
    with Receiver() as rx:
        action = webhook(
            rx.url(),
            access_token={"env": "CI_TOKEN"},
            secret={"env": "CI_HMAC"},
            headers={"X-Run": "${run_name}"},
            payload={
                "event_type": "${event_type}",
                "run": "${run_name}",
                "value": "${metric_value}",
                "window": "${metric_values}",
                "why": "${metric_filter}",
            },
        )
        automation = make_automation(conn, "acc-high", [action])
        run_pk = make_run(conn, name='resnet "50"\nbig')
        trigger_id, (delivery_id,) = fire(conn, automation, [action], run_pk=run_pk, values=[0.5, 0.66, 0.7])
        assert dispatcher.run_once() == 1
        (request,) = rx.requests

    assert request.method == "POST" and request.path == "/hook"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Authorization"] == "Bearer tok-5b1d"
    assert request.headers["X-Automation-Delivery"] == str(delivery_id)
    assert verify("hmac-9f3e", request.body, request.headers["X-Automation-Signature"])
    assert not verify("wrong", request.body, request.headers["X-Automation-Signature"])
    assert request.headers["X-Run"] == 'resnet "50" big'
    assert request.json() == {
        "event_type": "RUN_METRIC",
        "run": 'resnet "50"\nbig',
        "value": repr((0.5 + 0.66 + 0.7) / 3),
        "window": [0.5, 0.66, 0.7],
        "why": "avg(accuracy) over 3 > 0.6",
    }
    row = delivery(conn, delivery_id)
    assert (row["status"], row["attempts"], row["last_http_status"], row["last_error"]) == (
        "succeeded",
        1,
        200,
        None,
    )
    (attempt,) = attempts(conn, delivery_id)
    assert attempt["http_status"] == 200 and attempt["response_body"] == "ok" and attempt["duration_ms"] > 0
    assert attempt["request"]["url"] == rx.url()
    assert attempt["request"]["headers"]["Authorization"] == "[redacted]"
    assert attempt["request"]["headers"]["X-Automation-Signature"] == "[redacted]"
    assert (
        history(conn, trigger_id).items()
        >= {
            "delivery_status": "succeeded",
            "attempts": 1,
            "last_http_status": 200,
            "action_type": "webhook",
        }.items()
    )


def test_default_payload_when_none_is_given(conn, dispatcher):
    with Receiver() as rx:
        action = webhook(rx.url())
        automation = make_automation(conn, "default-payload", [action])
        trigger_id, _ = fire(conn, automation, [action], run_pk=make_run(conn))
        dispatcher.run_once()
    body = rx.requests[0].json()
    assert body["automation_name"] == "default-payload" and body["run_name"] == "resnet-50"
    assert body["metric_values"] == [0.5, 0.66, 0.7] and body["trigger_id"] == str(trigger_id)
    assert body["run_url"] == "engine://acme/vision/runs/r1"


def test_500_is_retried_then_succeeds_with_the_same_delivery_id(conn, dispatcher):
    with Receiver(Reply(500, b"boom"), Reply(502), Reply(200)) as rx:
        action = webhook(rx.url())
        automation = make_automation(conn, "retry", [action])
        trigger_id, (delivery_id,) = fire(conn, automation, [action])
        settle(dispatcher, conn, [delivery_id])
    assert [r.headers["X-Automation-Delivery"] for r in rx.requests] == [str(delivery_id)] * 3
    log = attempts(conn, delivery_id)
    assert [(a["attempt"], a["http_status"]) for a in log] == [(1, 500), (2, 502), (3, 200)]
    assert log[0]["response_body"] == "boom" and log[0]["error"].startswith("HTTP 500")
    assert log[2]["error"] is None
    assert history(conn, trigger_id)["delivery_status"] == "succeeded"
    assert history(conn, trigger_id)["attempts"] == 3


def test_429_waits_for_retry_after(conn, dispatcher):
    with Receiver(Reply(429, b"slow down", {"Retry-After": "1"}), Reply(200)) as rx:
        action = webhook(rx.url())
        automation = make_automation(conn, "limited", [action])
        _, (delivery_id,) = fire(conn, automation, [action])
        dispatcher.run_once()
        row = delivery(conn, delivery_id)
        assert row["status"] == "pending" and row["last_http_status"] == 429
        # Due no sooner than a second after the 429 (the backoff alone would be ~0.05 s).
        assert row["next_attempt_at"] - row["updated_at"] >= timedelta(seconds=1)
        assert dispatcher.run_once() == 0  # not due yet
        settle(dispatcher, conn, [delivery_id])
    first, second = rx.requests
    assert second.at - first.at >= 1.0
    assert delivery(conn, delivery_id)["status"] == "succeeded"


def test_400_is_final_without_retry(conn, dispatcher):
    with Receiver(Reply(400, b'{"error": "bad payload"}'), Reply(200)) as rx:
        action = webhook(rx.url())
        automation = make_automation(conn, "bad", [action])
        trigger_id, (delivery_id,) = fire(conn, automation, [action])
        settle(dispatcher, conn, [delivery_id])
        time.sleep(0.2)
        assert dispatcher.run_once() == 0
    assert len(rx.requests) == 1
    h = history(conn, trigger_id)
    assert (h["delivery_status"], h["attempts"], h["last_http_status"]) == ("failed", 1, 400)
    assert h["last_error"].startswith("HTTP 400") and "gave up" not in h["last_error"]
    assert attempts(conn, delivery_id)[0]["response_body"] == '{"error": "bad payload"}'


def test_timeout_is_retried(conn, dispatcher):
    with Receiver(Reply(200, hang=5.0), Reply(200)) as rx:
        action = webhook(rx.url(), timeout=0.5)
        automation = make_automation(conn, "slow", [action])
        _, (delivery_id,) = fire(conn, automation, [action])
        started = time.monotonic()
        settle(dispatcher, conn, [delivery_id])
        assert time.monotonic() - started < 4.0
    first, second = attempts(conn, delivery_id)
    assert first["http_status"] is None and first["error"].startswith("timed out after 0.5 s")
    assert second["http_status"] == 200 and delivery(conn, delivery_id)["status"] == "succeeded"


def test_endpoint_down_then_up(conn, dispatcher):
    port = free_port()
    action = webhook(f"http://127.0.0.1:{port}/hook")
    automation = make_automation(conn, "down", [action])
    _, (delivery_id,) = fire(conn, automation, [action])
    dispatcher.run_once()
    row = delivery(conn, delivery_id)
    assert row["status"] == "pending" and row["last_error"].startswith("connection failed")
    with Receiver(port=port) as rx:
        settle(dispatcher, conn, [delivery_id])
    assert len(rx.requests) == 1 and rx.requests[0].headers["X-Automation-Delivery"] == str(delivery_id)
    assert [a["http_status"] for a in attempts(conn, delivery_id)] == [None, 200]


def test_max_attempts_reached_is_failed_in_automation_history(conn, dispatcher):
    with Receiver(Reply(503, b"unavailable")) as rx:
        action = webhook(rx.url(), max_attempts=3)
        automation = make_automation(conn, "always-503", [action])
        trigger_id, (delivery_id,) = fire(conn, automation, [action])
        settle(dispatcher, conn, [delivery_id])
    assert len(rx.requests) == 3
    h = history(conn, trigger_id)
    assert (h["delivery_status"], h["attempts"], h["last_http_status"]) == ("failed", 3, 503)
    assert "gave up after 3 attempts" in h["last_error"]
    assert delivery(conn, delivery_id)["finished_at"] is not None


def test_redeliver_sends_again_with_the_same_id(conn, dispatcher):
    from engine.actions.outbox import redeliver

    with Receiver(Reply(404), Reply(200)) as rx:
        action = webhook(rx.url(), max_attempts=2)
        automation = make_automation(conn, "redo", [action])
        trigger_id, (delivery_id,) = fire(conn, automation, [action])
        settle(dispatcher, conn, [delivery_id])
        assert history(conn, trigger_id)["delivery_status"] == "failed"
        row = redeliver(conn, str(delivery_id)[:8])  # a prefix, as `engine deliveries` shows
        assert (row["status"], row["attempts"], row["max_attempts"]) == ("pending", 1, 3)
        settle(dispatcher, conn, [delivery_id])
    assert [r.headers["X-Automation-Delivery"] for r in rx.requests] == [str(delivery_id)] * 2
    assert [a["attempt"] for a in attempts(conn, delivery_id)] == [1, 2]
    assert history(conn, trigger_id)["delivery_status"] == "succeeded"


def test_a_hanging_endpoint_does_not_delay_another_automation(conn, database_url, settings):
    with Receiver(Reply(200, hang=30.0)) as slow, Receiver() as fast:
        slow_action, fast_action = webhook(slow.url(), timeout=20.0), webhook(fast.url())
        a_slow = make_automation(conn, "slow-endpoint", [slow_action])
        a_fast = make_automation(conn, "fast-endpoint", [fast_action])
        dispatcher = Dispatcher(database_url, settings)
        try:
            dispatcher.start()
            fire(conn, a_slow, [slow_action])
            dispatcher.wake()
            slow.wait_for(1)  # the slow one is in flight and hangs
            _, (fast_id,) = fire(conn, a_fast, [fast_action])
            t0 = time.monotonic()
            dispatcher.wake()  # as the evaluator does after committing a trigger
            fast.wait_for(1, timeout=5)
            assert time.monotonic() - t0 < 0.5  # handed over at once, not at the next tick
            deadline = time.monotonic() + 5
            while delivery(conn, fast_id)["status"] != "succeeded" and time.monotonic() < deadline:
                time.sleep(0.02)
            assert delivery(conn, fast_id)["status"] == "succeeded"
            assert len(slow.requests) == 1  # still hanging
            slow.release.set()
        finally:
            dispatcher.stop()


def test_redirects_are_followed_and_checked(conn, dispatcher, monkeypatch):
    # 307 to a path of the same host, then 308 to another receiver: both followed, body kept.
    with (
        Receiver() as target,
        Receiver(
            Reply(307, b"", {"Location": "/moved"}), Reply(308, b"", {"Location": target.url("/final")})
        ) as first,
    ):
        action = webhook(first.url(), payload={"x": 1})
        automation = make_automation(conn, "moved", [action])
        _, (delivery_id,) = fire(conn, automation, [action])
        dispatcher.run_once()
    assert [r.path for r in first.requests] == ["/hook", "/moved"]
    assert target.requests[0].path == "/final" and target.requests[0].json() == {"x": 1}
    assert delivery(conn, delivery_id)["status"] == "succeeded"
    assert attempts(conn, delivery_id)[0]["request"]["redirects"][-1] == target.url("/final")


def test_redirect_to_a_private_address_is_refused(conn, database_url):
    # Only 127.0.0.1 is allowed: a redirect to [::1] (loopback too) must be refused.
    settings = Settings(database_url=database_url, webhook_allow_hosts="127.0.0.1", retry_base_seconds=0.05)
    with (
        Receiver(Reply(302, b"", {"Location": "http://[::1]:9/x"})) as rx,
        Dispatcher(database_url, settings) as d,
    ):
        action = webhook(rx.url())
        automation = make_automation(conn, "bounce", [action])
        _, (delivery_id,) = fire(conn, automation, [action])
        d.run_once()
    row = delivery(conn, delivery_id)
    assert row["status"] == "failed"
    assert "resolves to a private address ::1" in row["last_error"]


@pytest.mark.parametrize("host", ["127.0.0.1", "2130706433", "0x7f000001", "localhost"])
def test_private_address_refused_unless_allowed(conn, database_url, monkeypatch, host):
    monkeypatch.delenv("ENGINE_WEBHOOK_ALLOW_HOSTS", raising=False)
    get_settings.cache_clear()
    settings = get_settings()
    assert settings.webhook_allow_hosts == ""
    with Receiver() as rx, Dispatcher(database_url, settings) as d:
        action = webhook(f"http://{host}:{rx.port}/hook")
        automation = make_automation(conn, "internal", [action])
        trigger_id, _ = fire(conn, automation, [action])
        d.run_once()
    assert rx.requests == []
    h = history(conn, trigger_id)
    assert h["delivery_status"] == "failed" and h["attempts"] == 1
    assert f"webhook target {host} resolves to a private address" in h["last_error"]
    assert "ENGINE_WEBHOOK_ALLOW_HOSTS" in h["last_error"]


def test_big_response_is_truncated_not_held(conn, dispatcher):
    with Receiver(Reply(200, b"x" * (10 * 1024 * 1024))) as rx:
        action = webhook(rx.url())
        automation = make_automation(conn, "big", [action])
        _, (delivery_id,) = fire(conn, automation, [action])
        dispatcher.run_once()
    (attempt,) = attempts(conn, delivery_id)
    assert attempt["http_status"] == 200 and len(attempt["response_body"]) == 4096


def test_missing_secret_fails_that_delivery_only(conn, dispatcher, monkeypatch):
    monkeypatch.delenv("NOT_SET_TOKEN", raising=False)
    with Receiver() as rx:
        broken = webhook(rx.url("/broken"), access_token={"env": "NOT_SET_TOKEN"})
        fine = webhook(rx.url("/fine"))
        a1 = make_automation(conn, "broken", [broken])
        a2 = make_automation(conn, "fine", [fine])
        t1, (d1,) = fire(conn, a1, [broken])
        t2, (d2,) = fire(conn, a2, [fine])
        settle(dispatcher, conn, [d1, d2])
    assert [r.path for r in rx.requests] == ["/fine"]
    assert history(conn, t1)["last_error"].startswith("environment variable NOT_SET_TOKEN is not set")
    assert history(conn, t1)["delivery_status"] == "failed"
    assert history(conn, t2)["delivery_status"] == "succeeded"


def test_no_op_is_skipped_and_several_actions_each_get_a_delivery(conn, dispatcher):
    with Receiver() as rx:
        actions = [{"type": "no_op"}, webhook(rx.url())]
        automation = make_automation(conn, "two-actions", actions)
        trigger_id, (noop_id, hook_id) = fire(conn, automation, actions)
        assert delivery(conn, noop_id)["status"] == "skipped"
        assert history(conn, trigger_id)["delivery_status"] == "skipped"  # the first action
        settle(dispatcher, conn, [noop_id, hook_id])
    assert len(rx.requests) == 1
    assert attempts(conn, noop_id) == []
    assert delivery(conn, hook_id)["status"] == "succeeded"


def test_expired_lease_is_claimed_again_with_the_same_id(conn, database_url, settings):
    """A dispatcher that claimed and sent but died before recording: the delivery is sent
    again (same X-Automation-Delivery) once the lease expires; the old claimant, should it
    come back, can no longer change the outcome."""
    with Receiver() as rx:
        action = webhook(rx.url(), timeout=1.0)
        automation = make_automation(conn, "crashy", [action])
        trigger_id, (delivery_id,) = fire(conn, automation, [action])

        crashed = Dispatcher(database_url, settings)
        (claim,) = crashed._claim(10, None)
        lost = send_action(str(claim.id), claim.action, build_context(conn, trigger_id, settings), settings)
        assert lost.succeeded  # ...and then the process "dies" before _record
        row = delivery(conn, delivery_id)
        assert row["status"] == "sending" and row["claimed_until"] is not None

        with Dispatcher(database_url, settings) as d:
            assert d.run_once() == 0  # the lease still holds
            lease = LEASE_MARGIN_SECONDS + 6 * 1.0
            with clock.frozen(clock.now() + timedelta(seconds=lease + 1)):
                assert d.run_once() == 1
        assert delivery(conn, delivery_id)["status"] == "succeeded"
        crashed._record(claim, lost)  # the old claimant comes back late
        crashed.stop()
    assert [r.headers["X-Automation-Delivery"] for r in rx.requests] == [str(delivery_id)] * 2
    row = delivery(conn, delivery_id)
    assert (row["status"], row["attempts"]) == ("succeeded", 2)
    assert [a["attempt"] for a in attempts(conn, delivery_id)] == [1, 2]


def test_a_due_retry_is_sent_before_a_backlog_that_was_due_earlier(conn, database_url, settings):
    """A failed delivery is tried again once its backoff is over, not only after every
    delivery that became due before that (with a backlog, the backoff would otherwise become
    the backlog's length)."""
    slow_retries = settings.model_copy(update={"retry_base_seconds": 60.0})
    with Receiver(Reply(500), Reply(200)) as rx:
        action = webhook(rx.url())
        automation = make_automation(conn, "retried-first", [action])
        _, (retried,) = fire(conn, automation, [action])
        with Dispatcher(database_url, slow_retries) as d:
            assert d.run_once() == 1  # answered 500: due again in about a minute
            backlog = [fire(conn, automation, [action])[1][0] for _ in range(3)]  # due now
            due = delivery(conn, retried)["next_attempt_at"]
            assert all(delivery(conn, b)["next_attempt_at"] < due for b in backlog)
            with clock.frozen(due):
                assert d.run_once(limit=1) == 1
    assert [r.headers["X-Automation-Delivery"] for r in rx.requests] == [str(retried)] * 2
    assert [(a["attempt"], a["http_status"]) for a in attempts(conn, retried)] == [(1, 500), (2, 200)]
    assert [delivery(conn, b)["status"] for b in backlog] == ["pending"] * 3


def test_the_service_sends_a_due_retry_at_its_time_without_a_wake_up(
    conn, database_url, settings, monkeypatch
):
    """The wake thread sleeps until the next retry is due: with a poll interval of an hour and
    nothing waking it, a delivery answered 500 is still tried again after its backoff."""
    monkeypatch.setattr(dispatcher_module, "POLL_SECONDS", 3600.0)
    with Receiver(Reply(500), Reply(200)) as rx:
        action = webhook(rx.url())
        automation = make_automation(conn, "timed-retry", [action])
        d = Dispatcher(database_url, settings)
        try:
            _, (delivery_id,) = fire(conn, automation, [action])
            d.start()  # its first look finds the delivery; nothing wakes it after that
            rx.wait_for(2)
        finally:
            d.stop()  # waits for the outcome in flight to be recorded
    assert [(a["attempt"], a["http_status"]) for a in attempts(conn, delivery_id)] == [(1, 500), (2, 200)]
    assert delivery(conn, delivery_id)["status"] == "succeeded"


def test_outcomes_written_together_are_each_an_attempt_row_and_a_status(conn, database_url, settings):
    """The service's workers send at once and one writer records their outcomes in batches:
    every request is still one attempt row, numbered per delivery, and every delivery ends
    with the status of its last answer."""
    failures = 6
    with Receiver(*[Reply(500)] * failures, Reply(200)) as rx:
        action = webhook(rx.url())
        automation = make_automation(conn, "batched", [action])
        ids = [fire(conn, automation, [action])[1][0] for _ in range(30)]
        d = Dispatcher(database_url, settings)
        try:
            d.start()
            rx.wait_for(len(ids) + failures)
        finally:
            d.stop()
    sent: dict[str, int] = {}
    for request in rx.requests:
        key = request.headers["X-Automation-Delivery"]
        sent[key] = sent.get(key, 0) + 1
    for delivery_id in ids:
        rows = attempts(conn, delivery_id)
        assert [a["attempt"] for a in rows] == list(range(1, sent[str(delivery_id)] + 1))
        assert [a["http_status"] for a in rows] == [500] * (len(rows) - 1) + [200]
        assert (delivery(conn, delivery_id)["status"], delivery(conn, delivery_id)["attempts"]) == (
            "succeeded",
            len(rows),
        )
    assert sum(len(attempts(conn, i)) for i in ids) == len(rx.requests) == len(ids) + failures


def test_a_claim_that_waited_for_a_worker_renews_its_lease_or_is_not_sent(conn, database_url, caplog):
    """Deliveries are claimed ahead of the workers: one that waited for a worker gets its
    lease renewed before it is sent (here always: no margin), and one whose lease was taken
    over meanwhile is left to the new claimant instead of being sent twice at once."""
    settings = Settings(
        database_url=database_url,
        webhook_allow_hosts="127.0.0.1",
        delivery_workers=1,
        delivery_lease_margin=0.0,
    )
    with Receiver(Reply(200, hang=30.0), Reply(200)) as rx:
        action = webhook(rx.url(), timeout=1.0)
        automation = make_automation(conn, "claimed-ahead", [action, action])
        _, ids = fire(conn, automation, [action, action])
        d = Dispatcher(database_url, settings)
        try:
            assert d.run_once(wait=False) == 2  # one worker: one sent, one claimed ahead
            (first,) = rx.wait_for(1)
            sent = next(i for i in ids if str(i) == first.headers["X-Automation-Delivery"])
            (queued,) = [i for i in ids if i != sent]
            other = Dispatcher(database_url, settings)
            with clock.frozen(clock.now() + timedelta(seconds=6 * 1.0 + 1)):
                (taken,) = other._claim(10, queued)  # its lease ran out: another dispatcher takes it
            other.stop()
            rx.release.set()
        finally:
            d.stop()
    assert [r.headers["X-Automation-Delivery"] for r in rx.requests] == [str(sent)]
    assert delivery(conn, sent)["status"] == "succeeded"
    row = delivery(conn, queued)
    assert (row["status"], row["attempts"], taken.attempt) == ("sending", 2, 2)  # the new claimant's
    said = [r.getMessage() for r in caplog.records if r.name == "engine.actions.dispatcher"]
    assert f"delivery {queued}: its lease was taken over while it waited for a worker; not sent" in said


def test_run_once_works_from_a_subprocess(conn, database_url):
    import subprocess
    import sys

    with Receiver() as rx:
        action = webhook(rx.url())
        automation = make_automation(conn, "subprocess", [action])
        _, (delivery_id,) = fire(conn, automation, [action])
        code = (
            "from engine.actions.dispatcher import Dispatcher; from engine.settings import get_settings; "
            "s = get_settings(); d = Dispatcher(s.database_url, s); print(d.run_once()); d.stop()"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"
    assert rx.requests[0].headers["X-Automation-Delivery"] == str(delivery_id)
    assert delivery(conn, delivery_id)["status"] == "succeeded"


def test_deliveries_are_claimed_once_by_concurrent_dispatchers(conn, database_url, settings):
    with Receiver() as rx:
        action = webhook(rx.url())
        automation = make_automation(conn, "many", [action])
        ids = [fire(conn, automation, [action])[1][0] for _ in range(20)]
        import threading

        dispatchers = [Dispatcher(database_url, settings) for _ in range(3)]
        threads = [
            threading.Thread(target=lambda d=d: [d.run_once() for _ in range(10)]) for d in dispatchers
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for d in dispatchers:
            d.stop()
        with Dispatcher(database_url, settings) as d:
            settle(d, conn, ids)
    seen = [r.headers["X-Automation-Delivery"] for r in rx.requests]
    assert sorted(seen) == sorted(str(i) for i in ids)  # each exactly once
    assert json.loads(rx.requests[0].body)["automation_name"] == "many"


def test_database_down_is_an_error_for_run_once_and_quietly_retried_by_the_service(caplog, settings):
    from engine.exceptions import DatabaseUnavailable

    down = f"postgresql://127.0.0.1:{free_port()}/nothing?connect_timeout=1"
    # the connection is opened in the caller's thread: the refusal comes at once, with its reason
    with Dispatcher(down, settings) as d, pytest.raises(DatabaseUnavailable, match="no database reachable"):
        d.run_once()
    d = Dispatcher(down, settings)
    try:
        d.start()  # starts although the database is unreachable
        time.sleep(1.0)
    finally:
        d.stop()
    said = [r.getMessage() for r in caplog.records if r.name == "engine.actions.dispatcher"]
    assert len([m for m in said if m.startswith("dispatcher: cannot claim deliveries")]) == 1  # said once


def test_bounded_stop_leaves_a_hung_delivery_to_be_sent_again(conn, database_url, settings):
    with Receiver(Reply(200, hang=30.0), Reply(200)) as rx:
        action = webhook(rx.url(), timeout=20.0)
        automation = make_automation(conn, "hung-at-stop", [action])
        _, (delivery_id,) = fire(conn, automation, [action])
        d = Dispatcher(database_url, settings)
        d.run_once(wait=False)
        rx.wait_for(1)
        t0 = time.monotonic()
        d.stop(timeout=0.5)
        assert time.monotonic() - t0 < 3
        assert delivery(conn, delivery_id)["status"] == "sending"
        with Dispatcher(database_url, settings) as again:
            with clock.frozen(clock.now() + timedelta(seconds=LEASE_MARGIN_SECONDS + 6 * 20.0 + 1)):
                assert again.run_once() == 1
        rx.release.set()
    assert [r.headers["X-Automation-Delivery"] for r in rx.requests] == [str(delivery_id)] * 2
    assert delivery(conn, delivery_id)["status"] == "succeeded"


def test_a_binary_answer_is_stored(conn, dispatcher):
    with Receiver(Reply(200, b"bin\x00ary\xff")) as rx:
        action = webhook(rx.url())
        automation = make_automation(conn, "binary", [action])
        _, (delivery_id,) = fire(conn, automation, [action])
        dispatcher.run_once()
    assert delivery(conn, delivery_id)["status"] == "succeeded"
    assert attempts(conn, delivery_id)[0]["response_body"] == "bin\ufffdary\ufffd"


def readme_is_from_engine() -> dict:
    """The README's receiver check ("Verifying the signature", the same code the tour's
    receiver.py runs), executed as written; its namespace, so a test can move its clock."""
    from tests.acceptance.test_readme_commands import README, blocks

    snippet = next(
        b for b in blocks(README) if b.lang == "python" and "def is_from_engine" in b.body and not b.runnable
    )
    namespace: dict = {}
    exec(snippet.body, namespace)
    return namespace


def test_the_readme_receiver_accepts_a_signed_request_and_refuses_a_replay(conn, dispatcher, monkeypatch):
    monkeypatch.setenv("CI_HMAC", "hmac-replay-7c2a")
    with Receiver() as rx:
        action = webhook(rx.url(), secret={"env": "CI_HMAC"})
        automation = make_automation(conn, "signed", [action])
        _, (delivery_id,) = fire(conn, automation, [action], run_pk=make_run(conn))
        assert dispatcher.run_once() == 1
        (request,) = rx.requests
    timestamp = request.headers["X-Automation-Timestamp"]
    signature = request.headers["X-Automation-Signature-256"]
    assert signature.startswith(f"t={timestamp},v1=")
    receiver = readme_is_from_engine()
    is_from_engine = receiver["is_from_engine"]
    assert is_from_engine(request.body, signature)
    assert not is_from_engine(request.body + b" ", signature)  # another body
    # an old capture made to look fresh: the timestamp is signed too
    assert not is_from_engine(request.body, signature.replace(f"t={timestamp}", f"t={int(timestamp) + 600}"))
    assert not is_from_engine(request.body, "")
    # the same request replayed later: refused once it is older than five minutes
    receiver["time"] = SimpleNamespace(time=lambda: int(timestamp) + 299)
    assert is_from_engine(request.body, signature)
    receiver["time"] = SimpleNamespace(time=lambda: int(timestamp) + 301)
    assert not is_from_engine(request.body, signature)
    # W&B's header stays, over the body alone
    assert verify("hmac-replay-7c2a", request.body, request.headers["X-Automation-Signature"])
    (attempt,) = attempts(conn, delivery_id)
    assert attempt["request"]["headers"]["X-Automation-Signature-256"] == "[redacted]"
    assert attempt["request"]["headers"]["X-Automation-Timestamp"] == timestamp


def test_a_templated_url_is_rendered_with_encoded_values_and_checked_again(conn, dispatcher):
    with Receiver() as rx:
        routed = webhook(rx.url("/hooks/${project_name}/${run_name}"))
        a1 = make_automation(conn, "routed", [routed])
        _, (ok,) = fire(conn, a1, [routed], run_pk=make_run(conn, run_id="t1", name="a/b c?x=1"))
        private = webhook("http://${run_name}:9/hook")
        a2 = make_automation(conn, "routed-private", [private])
        _, (refused,) = fire(conn, a2, [private], run_pk=make_run(conn, run_id="t2", name="10.0.0.5"))
        hostless = webhook("http://${run_name}/x")
        a3 = make_automation(conn, "routed-hostless", [hostless])
        _, (broken,) = fire(conn, a3, [hostless], run_pk=make_run(conn, run_id="t3", name=""))
        settle(dispatcher, conn, [ok, refused, broken])
    (request,) = rx.requests
    assert request.path == "/hooks/vision/a%2Fb%20c%3Fx%3D1"  # a value cannot add a segment or a query
    assert delivery(conn, ok)["status"] == "succeeded"
    row = delivery(conn, refused)
    assert row["status"] == "failed" and row["attempts"] == 1
    assert row["last_error"].startswith(
        "url 'http://10.0.0.5:9/hook' (rendered from 'http://${run_name}:9/hook'): "
        "webhook target 10.0.0.5 resolves to a private address"
    )
    row = delivery(conn, broken)
    assert row["status"] == "failed" and row["last_error"] == (
        "url 'http:///x' (rendered from 'http://${run_name}/x') must be an http:// or https:// URL with a host"
    )
