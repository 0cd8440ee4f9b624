"""`run_stalled`, the rule driven by time, with the clock seam: the evaluator's "now" is the
engine's frozen clock (engine.clock), the runs' last metric ingestion the database's clock
(stamped by the flush). The database's clock cannot be frozen, so "logged an hour ago" is a
run whose stamp is moved back by an hour."""

from __future__ import annotations

import threading
from datetime import timedelta

import engine
from engine import clock
from engine.actions.context import build_context
from engine.evaluation import Evaluator, backtest
from engine.explain import explain_data, lines
from engine.explain.text import time
from engine.rules import parse_rules_text
from tests.integration.evaluation_helpers import apply_yaml, rule, triggers
from tests.integration.sdk_helpers import wait_for

STALLED = rule("stalled", "{type: run_stalled, after: 5m}", extra="cooldown: 1m\n")


def _apply(conn, *, at) -> None:
    with clock.frozen(at):  # the automation is enabled at `at`
        apply_yaml(conn, STALLED)


def _tick_at(url: str, at) -> int:
    evaluator = Evaluator(url)
    try:
        with clock.frozen(at):
            result = evaluator.tick()
        assert not result.failed, result.failed
        return result.fired
    finally:
        evaluator.close()


def _stamp(conn, run) -> object:
    return conn.execute("SELECT last_metric_at FROM runs WHERE id = %s", (run.pk,)).fetchone()[0]


def _logged_an_hour_ago(conn, run) -> object:
    conn.execute(
        "UPDATE runs SET last_metric_at = last_metric_at - interval '1 hour', created_at = created_at - interval '1 hour'"
        " WHERE id = %s",
        (run.pk,),
    )
    return _stamp(conn, run)


def test_fires_once_at_the_deadline_and_rearms(conn, database_url):
    run = engine.init(project="acme/vision", name="hangs", system_metrics_interval=0)
    run.log({"loss": 1.0}, step=0)
    run.flush()
    last = _logged_an_hour_ago(conn, run)
    _apply(conn, at=last - timedelta(minutes=1))
    assert _tick_at(database_url, last + timedelta(minutes=4, seconds=59)) == 0
    assert _tick_at(database_url, last + timedelta(minutes=5)) == 1
    assert _tick_at(database_url, last + timedelta(minutes=9)) == 0  # once per stall
    (fired,) = triggers(conn, "stalled")
    assert fired["value_time"] == last + timedelta(minutes=5) and fired["value"] == 300.0
    assert fired["event_type"] == "run_stalled" and fired["run_id"] == run.id
    context = build_context(conn, fired["id"])
    assert (context["event_type"], context["metric_value"], context["run_name"]) == (
        "RUN_STALLED",
        "300.0",
        "hangs",
    )
    # it logs again (now, an hour later): re-armed, the next deadline is 5 minutes after that
    run.log({"loss": 0.5}, step=1)
    run.flush()
    again = _stamp(conn, run)
    assert again > last + timedelta(minutes=50)
    assert _tick_at(database_url, again + timedelta(minutes=4)) == 0
    assert _tick_at(database_url, again + timedelta(minutes=6)) == 1
    assert [t["value"] for t in triggers(conn, "stalled")] == [300.0, 360.0]
    text = "\n".join(lines(explain_data(conn, fired["id"])))
    assert (
        f"stalled: no metric value for 300 s when it fired; deadline {time(last + timedelta(minutes=5))}"
        in text
    )
    # the backtest answers from the recorded pauses: the hour-long one, and the one now open
    automation = parse_rules_text(STALLED)[0].automation
    replay = backtest(conn, automation, last - timedelta(days=1))
    assert [f.time for f in replay] == [last + timedelta(minutes=5)]  # the open pause is < 5m old
    run.finish()


def test_a_run_that_finishes_first_does_not_fire(conn, database_url):
    run = engine.init(project="acme/vision", name="done", system_metrics_interval=0)
    run.log({"loss": 1.0}, step=0)
    run.finish()
    last = _stamp(conn, run)
    _apply(conn, at=last - timedelta(minutes=1))
    assert _tick_at(database_url, last + timedelta(hours=1)) == 0
    assert triggers(conn, "stalled") == []


def test_system_metrics_alone_do_not_keep_a_run_alive(conn, database_url):
    run = engine.init(project="acme/vision", name="sampling", system_metrics_interval=0.2)
    assert wait_for(
        lambda: (
            conn.execute("SELECT count(*) FROM system_metrics WHERE run_pk = %s", (run.pk,)).fetchone()[0] > 0
        ),
        timeout=15,
    )
    assert _stamp(conn, run) is None  # samples stored, no metric value: the run's start counts
    (started,) = conn.execute("SELECT created_at FROM runs WHERE id = %s", (run.pk,)).fetchone()
    _apply(conn, at=started - timedelta(minutes=1))
    assert _tick_at(database_url, started + timedelta(minutes=5)) == 1
    run.finish()


def test_a_deadline_before_enabling_does_not_fire(conn, database_url):
    run = engine.init(project="acme/vision", name="old", system_metrics_interval=0)
    run.log({"loss": 1.0}, step=0)
    run.flush()
    last = _stamp(conn, run)
    _apply(conn, at=last + timedelta(minutes=6))  # its deadline (last + 5m) was before
    assert _tick_at(database_url, last + timedelta(minutes=30)) == 0
    run.finish()


def test_two_services_never_fire_it_twice(conn, database_url):
    runs = [engine.init(project="acme/vision", name=f"r{i}", system_metrics_interval=0) for i in range(5)]
    for run in runs:
        run.log({"loss": 1.0}, step=0)
        run.flush()
    last = max(_stamp(conn, run) for run in runs)
    _apply(conn, at=last - timedelta(hours=1))
    evaluators = [Evaluator(database_url) for _ in range(2)]
    start = threading.Barrier(2)
    fired: list[int] = []

    def service(evaluator: Evaluator) -> None:
        start.wait()
        for _ in range(3):
            fired.append(evaluator.tick().fired)

    with clock.frozen(last + timedelta(minutes=10)):
        threads = [threading.Thread(target=service, args=(e,)) for e in evaluators]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for evaluator in evaluators:
        evaluator.close()
    assert sum(fired) == 5
    assert sorted(t["run_id"] for t in triggers(conn, "stalled")) == sorted(r.id for r in runs)
    for run in runs:
        run.finish()


def test_skipped_ahead_compresses_time_for_the_named_automations_only(conn, database_url):
    # engine demo's seam: a stall rule's checks look ahead on the (real, database) clock
    apply_yaml(conn, STALLED + "---\n" + rule("other", "{type: run_stalled, after: 5m}"))
    run = engine.init(project="acme/vision", name="hangs", system_metrics_interval=0)
    run.log({"loss": 1.0}, step=0)
    run.flush()
    stamp = _stamp(conn, run)
    evaluator = Evaluator(database_url)
    try:
        with clock.skipped_ahead({"stalled": timedelta(minutes=5)}):
            assert evaluator.tick().fired == 1
        assert evaluator.tick().fired == 0  # back on the real clock: seconds of silence, not 5m
    finally:
        evaluator.close()
    assert [(t["automation"], t["value_time"]) for t in triggers(conn)] == [
        ("stalled", stamp + timedelta(minutes=5))
    ]
    assert clock.ahead_for("stalled") == timedelta(0)
    run.finish()


def test_an_entity_scope_covers_a_project_created_after_the_rule(conn, database_url):
    with clock.frozen(clock.now() - timedelta(hours=2)):
        apply_yaml(conn, rule("acme-stalled", "{type: run_stalled, after: 5m}", scope="{entity: acme}"))
    run = engine.init(project="acme/later", name="hangs", system_metrics_interval=0)
    elsewhere = engine.init(project="other/proj", name="hangs too", system_metrics_interval=0)
    for r in (run, elsewhere):
        r.log({"loss": 1.0}, step=0)
        r.flush()
    last = _logged_an_hour_ago(conn, run)
    _logged_an_hour_ago(conn, elsewhere)
    assert _tick_at(database_url, last + timedelta(minutes=5)) == 1
    assert [(t["run_id"], t["value_time"]) for t in triggers(conn, "acme-stalled")] == [
        (run.id, last + timedelta(minutes=5))
    ]
    found = backtest(
        conn,
        parse_rules_text(rule("s", "{type: run_stalled, after: 5m}", scope="{entity: acme}"))[0].automation,
        last - timedelta(hours=1),
    )
    assert {f.run_pk for f in found} == {run.pk}
    run.finish()
    elsewhere.finish()
