"""The database restarted (fast and immediate shutdown) under a running `engine serve` and SDK.

A dedicated throwaway cluster (never the session's: stopping that one would break every other
test), durable like the embedded one. While the database is down, the service logs the outage, stays alive and retries with
a growing backoff; the SDK keeps the logged points in memory (bounded by
ENGINE_BUFFER_MAX_POINTS: `run.log` blocks instead of dropping); when the database is back,
every buffered point is stored in logging order and the service catches up: the triggers
equal the backtest over the same history, and every delivery succeeds. If the database
never comes back, `run.finish(timeout=...)` raises IngestError saying how many points were
not stored.
"""

from __future__ import annotations

import random
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

import engine
from bench.support.soak import DeliveryReceiver
from engine import db as enginedb
from engine.automations import apply_rules
from engine.evaluation import backtest
from engine.exceptions import IngestError
from engine.localdb import LocalDatabase
from engine.rules import parse_rules_text
from engine.sdk import session as sdk_session
from engine.settings import get_settings
from tests.acceptance.service_helpers import ServeProcess, wait_until

T0 = datetime(2026, 3, 1, tzinfo=UTC)
RULES = """
name: acc-high
scope: {{project: acme/outage}}
event: {{type: run_metric_threshold, metric: acc, window: 2, operator: ">", threshold: 0.5}}
cooldown: 5m
action: {{type: webhook, url: "{url}", timeout: 1}}
---
name: loss-drop
scope: {{project: acme/outage}}
event: {{type: run_metric_change, metric: loss, current_window: 2, prior_window: 3, direction: decrease, amount: 0.3}}
cooldown: 5m
action: {{type: webhook, url: "{url}", timeout: 1}}
---
name: finished
scope: {{project: acme/outage}}
event: {{type: run_state, states: [finished]}}
action: {{type: webhook, url: "{url}", timeout: 1}}
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalDatabase]:
    folder = Path(tempfile.mkdtemp(prefix="engine-outage-"))
    folder.chmod(0o755)  # as root the server runs as `postgres`, which must get in
    # Durable (fsync, synchronous_commit on), as `engine db up` runs it: an immediate shutdown
    # is a crash, and with synchronous_commit off it would lose the last commits — triggers
    # whose webhook had already left, fired again after the restart under a new delivery id.
    local = LocalDatabase(folder, fast=False)
    local.up()
    yield local
    local.destroy()


@pytest.fixture
def url(cluster: LocalDatabase, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh migrated database in the dedicated cluster; the SDK logs into it."""
    cluster.up()  # running, whatever the previous test left
    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(cluster.url("postgres"), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    with psycopg.connect(cluster.url(name)) as conn:
        enginedb.migrate(conn)
    monkeypatch.setenv("ENGINE_DATABASE_URL", cluster.url(name))
    monkeypatch.setenv("ENGINE_WEBHOOK_ALLOW_HOSTS", "127.0.0.1")
    monkeypatch.setenv("ENGINE_FLUSH_INTERVAL", "0.2")
    get_settings.cache_clear()
    yield cluster.url(name)
    sdk_session.close_all()


_RETRYING = re.compile(r"database unavailable, retrying in ([\d.]+)s")


def _points(conn: psycopg.Connection, run_pk: int) -> list[tuple[int, str, float]]:
    return conn.execute(
        "SELECT p.step, k.key, p.value FROM metric_points p JOIN metric_keys k ON k.id = p.key_id "
        "WHERE p.run_pk = %s ORDER BY p.seq",
        (run_pk,),
    ).fetchall()


def _log(run: engine.Run, steps: range, logged: list) -> None:
    for step in steps:
        values = {"acc": ((step * 7) % 10) / 10, "loss": 2.0 / (1 + step % 6)}
        run.log(values, step=step, time=T0 + timedelta(minutes=2 * step))
        logged += [(step, k, v) for k, v in values.items()]


def _expected(conn: psycopg.Connection, rules) -> set[tuple[str, str]]:
    return {(a.name, f.cause) for a in rules for f in backtest(conn, a, T0 - timedelta(days=1))}


def _triggers(conn: psycopg.Connection) -> list[tuple[str, str]]:
    return list(
        conn.execute("SELECT a.name, t.cause FROM triggers t JOIN automations a ON a.id = t.automation_id")
    )


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_service_and_sdk_ride_out_a_database_restart(cluster, url, tmp_path, mode):
    receiver = DeliveryReceiver(fail_ratio=0.0)
    with psycopg.connect(url, autocommit=True) as conn:
        rules = [r.automation for r in parse_rules_text(RULES.format(url=receiver.url()))]
        apply_rules(conn, rules)
    log_path = tmp_path / "serve.log"
    service = ServeProcess(
        url, log_path, interval=0.3, extra_env={"ENGINE_DELIVERY_LEASE_MARGIN": "2"}
    ).start()
    logged: list[tuple[int, str, float]] = []
    try:
        run = engine.init(project="acme/outage", name="through-the-outage", system_metrics_interval=0)
        _log(run, range(20), logged)
        run.flush()
        with psycopg.connect(url, autocommit=True) as conn:
            assert wait_until(lambda: len(_triggers(conn)) > 0, timeout=30), log_path.read_text()[-3000:]

        assert cluster.down(mode)
        # Logged while the database is down: buffered by the SDK, nothing raises.
        _log(run, range(20, 60), logged)
        # several failed ticks: the backoff grows (0.5, 1, 2 s ...), each one logged
        assert wait_until(lambda: len(_RETRYING.findall(log_path.read_text())) >= 3, timeout=30), (
            log_path.read_text()[-3000:]
        )
        assert service.proc.poll() is None, "the service died with the database"
        _log(run, range(60, 80), logged)
        cluster.up()

        run.finish()  # stores what is buffered, then the state change, within its timeout
        with psycopg.connect(url, autocommit=True) as conn:
            assert _points(conn, run.pk) == logged  # every point, once, in logging order
            expected = _expected(conn, rules)
            assert {t[0] for t in expected} == {"acc-high", "loss-drop", "finished"}
            assert any(int(c.rsplit(":", 1)[1]) >= 40 for n, c in expected if n == "acc-high"), (
                "some firings must come from points logged during the outage"
            )

            def settled() -> bool:
                return (
                    set(_triggers(conn)) == expected
                    and conn.execute(
                        "SELECT count(*) FROM deliveries WHERE status <> 'succeeded'"
                    ).fetchone()[0]
                    == 0
                )

            assert wait_until(settled, timeout=60), log_path.read_text()[-3000:]
            triggers = _triggers(conn)
            assert len(triggers) == len(set(triggers)) == len(expected)
            ids = {str(i) for (i,) in conn.execute("SELECT id FROM deliveries")}
        _, succeeded, _ = receiver.snapshot()
        assert set(succeeded) == ids  # every delivery reached the receiver, no other id did
        assert service.proc.poll() is None
    finally:
        service.stop_quietly()
        receiver.close()

    text = log_path.read_text()
    waits = [float(s) for s in _RETRYING.findall(text)]
    assert len(waits) >= 3 and waits[:3] == [0.5, 1.0, 2.0], text[-3000:]  # logged, with backoff
    assert "database reachable again: catching up" in text
    assert "LISTEN connection lost" in text
    assert "Traceback" not in text, text[max(0, text.find("Traceback") - 1500) :][:4000]
    # An outage is not the rules' fault: no automation is marked failing because of it.
    assert "failed and is skipped" not in text


@pytest.mark.slow
def test_sdk_buffer_is_bounded_while_the_database_is_down(cluster, url, monkeypatch):
    monkeypatch.setenv("ENGINE_BUFFER_MAX_POINTS", "100")
    get_settings.cache_clear()
    run = engine.init(project="acme/outage", name="bounded", system_metrics_interval=0)
    logged: list[tuple[int, str, float]] = []
    _log(run, range(5), logged)
    run.flush()
    cluster.down("fast")
    writer = threading.Thread(target=_log, args=(run, range(5, 205), logged))  # 400 points > 100
    writer.start()
    writer.join(3)
    # run.log blocks once 100 points wait: the buffer holds no more, nothing is dropped
    assert writer.is_alive()
    stream = run._stream
    assert stream.unstored <= 100 and 90 <= len(logged) - 10 <= 100
    cluster.up()
    writer.join(30)
    assert not writer.is_alive()
    run.finish()
    with psycopg.connect(url) as conn:
        assert _points(conn, run.pk) == logged and len(logged) == 410


@pytest.mark.slow
def test_finish_raises_ingest_error_naming_the_points_when_the_database_never_returns(cluster, url):
    run = engine.init(project="acme/outage", name="stranded", system_metrics_interval=0)
    run.log({"acc": 0.1}, step=0)
    run.flush()
    cluster.down("immediate")
    for step in range(1, 26):
        run.log({"acc": 0.2, "loss": 1.0}, step=step)  # 50 points, never stored
    started = time.monotonic()
    with pytest.raises(IngestError) as raised:
        run.finish(timeout=2)
    assert time.monotonic() - started < 10
    message = str(raised.value)
    assert message.startswith(
        f"50 points of run acme/outage/{run.id} were not stored: no database reachable"
    ), message
    assert "ENGINE_DATABASE_URL" in message  # and what to check


@pytest.mark.slow
def test_points_logged_through_repeated_crashes_are_stored_once_in_order(cluster, url):
    """Three immediate shutdowns (a crash, for the server) at random moments while a run logs
    without pause: every point is stored exactly once, in logging order."""
    run = engine.init(project="acme/outage", name="crash-loop", system_metrics_interval=0)
    stop = threading.Event()
    logged = [0]

    def work() -> None:
        step = 0
        while not stop.is_set():
            run.log({"a": float(step)}, step=step)
            step += 1
            logged[0] = step
            if step % 50 == 0:
                time.sleep(0.001)  # ~50k points/s: flushes of every size, some mid-crash

    writer = threading.Thread(target=work)
    writer.start()
    rng = random.Random(3)
    try:
        for _ in range(3):
            time.sleep(rng.uniform(0.2, 0.8))
            cluster.down("immediate")
            time.sleep(0.3)
            cluster.up()
    finally:
        stop.set()
        writer.join()
    run.finish()
    with psycopg.connect(url) as conn:
        steps = [
            s
            for (s,) in conn.execute(
                "SELECT step FROM metric_points WHERE run_pk = %s ORDER BY seq", (run.pk,)
            )
        ]
    assert logged[0] > 10_000 and steps == list(range(logged[0]))
