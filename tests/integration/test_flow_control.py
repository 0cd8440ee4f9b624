"""How much is sent: digests, rate limits and silences, against the real database, evaluators in
real processes, and a real receiver (tests/receiver.py)."""

from __future__ import annotations

import subprocess
import sys
import threading
from datetime import timedelta

import psycopg
import pytest
from actions_helpers import settle
from evaluation_helpers import apply_yaml, tick
from psycopg.types.json import Jsonb

import engine
from engine import clock, db
from engine.actions import flow, outbox, silences
from engine.actions.dispatcher import Dispatcher
from engine.evaluation.firing import Firing, trigger_row
from engine.exceptions import EngineError
from engine.settings import Settings
from tests.receiver import Receiver, Reply


def rule(name: str, url: str, *, project: str = "acme/vision", extra: str = "") -> str:
    """A rule that fires once per run whose `loss` is NaN-free above 1 (window 1)."""
    return (
        f"name: {name}\nscope: {{project: {project}}}\n"
        'event: {type: run_metric_threshold, metric: loss, window: 1, operator: ">", threshold: 1}\n'
        f"action: {{type: webhook, url: {url}, max_attempts: 2{extra}}}\n"
    )


def crossing_runs(count: int, project: str = "acme/vision", prefix: str = "sweep") -> list[str]:
    """`count` runs whose loss crosses the threshold once each; their run ids."""
    ids = []
    for i in range(count):
        run = engine.init(project=project, name=f"{prefix}-{i}", system_metrics_interval=0)
        run.log({"loss": 2.0 + i}, step=0)
        run.finish()
        ids.append(run.id)
    return ids


def tick_in_a_process(url: str) -> None:
    """One evaluation by a service process of its own (a restart of the evaluator, in effect)."""
    code = f"from engine.evaluation import Evaluator; r = Evaluator({url!r}).tick(); assert not r.failed, r.failed"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def statuses(conn: psycopg.Connection, automation: str) -> list[str]:
    rows = conn.execute(
        "SELECT delivery_status FROM automation_history WHERE automation = %s ORDER BY trigger_id",
        (automation,),
    ).fetchall()
    return [r[0] for r in rows]


def settings_for(url: str) -> Settings:
    return Settings(database_url=url, webhook_allow_hosts="127.0.0.1", retry_base_seconds=0.05)


# -- digest --------------------------------------------------------------------------------------
def test_a_digest_sends_one_delivery_with_every_trigger_of_its_window_across_a_restart(conn, database_url):
    with Receiver(Reply(200)) as rx, Dispatcher(database_url, settings_for(database_url)) as dispatcher:
        apply_yaml(conn, rule("sweep-digest", rx.url("/digest"), extra=", digest: 10m"))
        first = crossing_runs(30, prefix="a")
        tick_in_a_process(database_url)  # opens the window; that process is gone
        second = crossing_runs(20, prefix="b")
        tick_in_a_process(database_url)  # another process: its triggers join the same window
        assert statuses(conn, "sweep-digest") == ["pending"] * 50
        assert conn.execute("SELECT count(*) FROM deliveries").fetchone()[0] == 0
        closes_at, automation_id = conn.execute("SELECT closes_at, automation_id FROM digests").fetchone()

        # Not yet due: nothing closes.
        with clock.frozen(closes_at - timedelta(seconds=1)):
            assert flow.close_due_digests(conn) == []
        # A closing that dies before it commits leaves the window open.
        with clock.frozen(closes_at), pytest.raises(RuntimeError):
            with psycopg.connect(database_url, autocommit=True) as dying, dying.transaction():
                dying.execute(db.query("flow_claim_due_gates"), {"now": closes_at, "limit": 10})
                dying.execute(
                    db.query("flow_close_digests"),
                    {"now": closes_at, "automation_ids": [automation_id], "action_indexes": [0]},
                )
                raise RuntimeError("the service dies here")
        # Two services close at once: one of them closes it, once.
        with clock.frozen(closes_at + timedelta(seconds=1)):
            results: list[int] = []
            services = [Dispatcher(database_url, settings_for(database_url)) for _ in range(2)]
            threads = [
                threading.Thread(target=lambda d=d: results.append(d.close_digests())) for d in services
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for d in services:
                d.stop()
            assert sorted(results) == [0, 1]
            assert dispatcher.close_digests() == 0  # and never again
            (delivery_id,) = [r[0] for r in conn.execute("SELECT id FROM deliveries")]
            settle(dispatcher, conn, [delivery_id])

    (request,) = rx.requests
    body = request.json()
    assert body["digest_count"] == 50 and body["automation_name"] == "sweep-digest"
    assert [item["run_id"] for item in body["digest"]] == first + second
    assert all(
        item["metric_name"] == "loss" and item["event_type"] == "RUN_METRIC" for item in body["digest"]
    )
    assert statuses(conn, "sweep-digest") == ["succeeded"] * 50
    # A later trigger opens a new window.
    crossing_runs(1, prefix="c")
    tick(database_url)
    assert conn.execute("SELECT count(*) FROM digests WHERE closed_at IS NULL").fetchone()[0] == 1


def test_a_digest_payload_template_gets_the_list_and_the_count(conn, database_url):
    payload = ', payload: {n: "${digest_count}", runs: "${digest}", first: "${run_name}"}'
    with Receiver(Reply(200)) as rx, Dispatcher(database_url, settings_for(database_url)) as dispatcher:
        apply_yaml(conn, rule("templated", rx.url(), extra=", digest: 1m" + payload))
        crossing_runs(3)
        tick(database_url)
        with clock.frozen(clock.now() + timedelta(minutes=2)):
            assert dispatcher.close_digests() == 1
            settle(dispatcher, conn, [r[0] for r in conn.execute("SELECT id FROM deliveries")])
    body = rx.requests[0].json()
    assert body["n"] == "3" and body["first"] == "sweep-0"
    assert [item["run_name"] for item in body["runs"]] == ["sweep-0", "sweep-1", "sweep-2"]


# -- rate limit ----------------------------------------------------------------------------------
def test_a_rate_limit_holds_across_evaluator_processes_and_the_rest_is_suppressed(conn, database_url):
    with Receiver(Reply(200)) as rx, Dispatcher(database_url, settings_for(database_url)) as dispatcher:
        apply_yaml(conn, rule("limited", rx.url(), extra=", rate_limit: {count: 3, per: 1h}"))
        crossing_runs(2, prefix="a")
        tick_in_a_process(database_url)
        crossing_runs(3, prefix="b")
        tick_in_a_process(database_url)  # another process: the count survived
        assert statuses(conn, "limited") == ["pending"] * 3 + ["suppressed"] * 2
        settle(
            dispatcher,
            conn,
            [r[0] for r in conn.execute("SELECT id FROM deliveries WHERE status = 'pending'")],
        )
        assert dispatcher.run_once() == 0  # suppressed ones are never claimed
        assert len(rx.requests) == 3
        # An hour after the first three, the limit has room again (a rolling period).
        with clock.frozen(clock.now() + timedelta(hours=1, seconds=1)):
            crossing_runs(1, prefix="c")
            tick(database_url)
    assert statuses(conn, "limited") == ["succeeded"] * 3 + ["suppressed"] * 2 + ["pending"]
    rows = outbox.list_deliveries(conn, status="suppressed")
    assert len(rows) == 2 and all(r["last_error"] == "rate limit reached (3 per 1h)" for r in rows)
    with pytest.raises(EngineError, match="suppressed: it is never sent"):
        outbox.redeliver(conn, str(rows[0]["id"]))


def test_services_firing_at_once_never_pass_the_limit_together(conn, database_url):
    """Two services insert triggers of one rate-limited action at the same moment: the gate
    serialises the count, so exactly `count` deliveries are pending."""
    apply_yaml(conn, rule("shared", "http://127.0.0.1:9/", extra=", rate_limit: {count: 5, per: 1h}"))
    automation_id, version, action = conn.execute(
        "SELECT id, version, rule->'action' FROM automations WHERE name = 'shared'"
    ).fetchone()
    stored = type("Stored", (), {"id": automation_id, "version": version})
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def service(tag: str) -> None:
        try:
            with psycopg.connect(database_url, autocommit=True) as own:
                firings = [
                    trigger_row(stored, Firing("shared", "run_metric_threshold", f"{tag}:{i}", clock.now()))
                    | {"n": i}
                    for i in range(4)
                ]
                actions = outbox.delivery_rows(automation_id, [action])
                barrier.wait()
                with own.transaction():
                    flow.lock_gates(own, actions)
                    own.execute(
                        db.query("insert_triggers"),
                        {
                            "triggers": Jsonb(firings),
                            "actions": Jsonb(actions),
                            "now": clock.now(),
                            # no triggers inserted by a metric group's own statement
                            "fired_ids": [],
                            "fired_automations": [],
                            "fired_runs": [],
                        },
                    )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=service, args=(tag,)) for tag in ("one", "two")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    counts = dict(conn.execute("SELECT status, count(*) FROM deliveries GROUP BY status").fetchall())
    assert counts == {"pending": 5, "suppressed": 3}


def test_a_digest_with_a_rate_limit_counts_digests(conn, database_url):
    with Receiver(Reply(200)) as rx, Dispatcher(database_url, settings_for(database_url)) as dispatcher:
        apply_yaml(conn, rule("both", rx.url(), extra=", digest: 1m, rate_limit: {count: 1, per: 1h}"))
        start = clock.now()
        crossing_runs(2, prefix="a")
        with clock.frozen(start):
            tick(database_url)
        with clock.frozen(start + timedelta(minutes=2)):
            assert dispatcher.close_digests() == 1
            crossing_runs(2, prefix="b")
            tick(database_url)  # a second window
        with clock.frozen(start + timedelta(minutes=4)):
            assert dispatcher.close_digests() == 1
            settle(
                dispatcher,
                conn,
                [r[0] for r in conn.execute("SELECT id FROM deliveries WHERE status = 'pending'")],
            )
    assert len(rx.requests) == 1 and rx.requests[0].json()["digest_count"] == 2
    assert statuses(conn, "both") == ["succeeded"] * 2 + ["suppressed"] * 2


# -- silences ------------------------------------------------------------------------------------
def test_silences_by_automation_and_by_project_are_recorded_and_never_sent(conn, database_url):
    with Receiver(Reply(200)) as rx, Dispatcher(database_url, settings_for(database_url)) as dispatcher:
        apply_yaml(conn, rule("muted", rx.url("/muted")) + "---\n" + rule("other", rx.url("/other")))
        apply_yaml(conn, rule("elsewhere", rx.url("/elsewhere"), project="acme/audio"))
        by_name = silences.add(conn, automation="muted", duration=timedelta(hours=2), reason="noisy rule")
        silences.add(conn, project="acme/audio", duration=timedelta(hours=2), reason="sweep")
        crossing_runs(2)
        crossing_runs(1, project="acme/audio", prefix="audio")
        tick(database_url)
        settle(
            dispatcher,
            conn,
            [r[0] for r in conn.execute("SELECT id FROM deliveries WHERE status = 'pending'")],
        )
        assert sorted(r.path for r in rx.requests) == ["/other", "/other"]
        assert statuses(conn, "muted") == ["silenced"] * 2
        assert statuses(conn, "elsewhere") == ["silenced"]

        # Ending the silence sends nothing of what it silenced; later triggers go out.
        silences.end(conn, by_name)
        assert dispatcher.run_once() == 0
        silenced = outbox.list_deliveries(conn, status="silenced", automation="muted")
        assert (
            len(silenced) == 2 and silenced[0]["last_error"] == f"silenced by silence {by_name}: noisy rule"
        )
        with pytest.raises(EngineError, match="silenced: it is never sent"):
            outbox.redeliver(conn, str(silenced[0]["id"]))
        crossing_runs(1, prefix="after")
        tick(database_url)
        settle(
            dispatcher,
            conn,
            [r[0] for r in conn.execute("SELECT id FROM deliveries WHERE status = 'pending'")],
        )
    assert sorted(r.path for r in rx.requests) == ["/muted", "/other", "/other", "/other"]
    assert statuses(conn, "muted") == ["silenced", "silenced", "succeeded"]
    listed = {r["id"]: r for r in silences.list_silences(conn, include_ended=True)}
    assert listed[by_name]["silenced"] == 2 and not listed[by_name]["active"] and listed[by_name]["ended_at"]


def test_a_silence_needs_a_known_automation_a_reason_and_a_future_end(conn, database_url):
    with pytest.raises(EngineError, match="no automation named 'ghost'"):
        silences.add(conn, automation="ghost", duration=timedelta(hours=1), reason="x")
    with pytest.raises(EngineError, match="give a reason"):
        silences.add(conn, project="acme/vision", duration=timedelta(hours=1), reason="  ")
    with pytest.raises(EngineError, match="not in the future"):
        silences.add(conn, project="acme/vision", until=clock.now() - timedelta(minutes=1), reason="x")
    with pytest.raises(EngineError, match="not a project"):
        silences.add(conn, project="acme", duration=timedelta(hours=1), reason="x")
    silence = silences.add(conn, project="acme/vision", duration=timedelta(hours=1), reason="x")
    silences.end(conn, silence)
    with pytest.raises(EngineError, match="already ended"):
        silences.end(conn, silence)
    with pytest.raises(EngineError, match="no silence 999"):
        silences.end(conn, 999)


def test_actions_test_of_a_digested_action_sends_a_digest_of_the_sample(conn, database_url):
    from typer.testing import CliRunner

    from engine.cli import app

    with Receiver(Reply(200)) as rx:
        apply_yaml(
            conn,
            rule(
                "sample-digest",
                rx.url(),
                extra=', digest: 5m, payload: {n: "${digest_count}", all: "${digest}"}',
            ),
        )
        result = CliRunner().invoke(app, ["actions", "test", "sample-digest"])
    assert result.exit_code == 0, result.output
    body = rx.requests[0].json()
    assert body["n"] == "1" and body["all"][0]["run_name"] == "sample-run"
    assert conn.execute("SELECT count(*) FROM digests").fetchone()[0] == 0
