"""The SPEC's examples end to end: SDK -> evaluator -> triggers."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import engine
from tests.integration.evaluation_helpers import apply_yaml, rule, tick, triggers

T0 = datetime(2026, 1, 1, tzinfo=UTC)

ACCURACY = rule(
    "accuracy-above-0.6",
    '{type: run_metric_threshold, metric: accuracy, window: 5, aggregation: avg, operator: ">", threshold: 0.6}',
)


def log_series(
    run,
    key: str,
    values: list[float],
    *,
    start_step: int = 0,
    start: datetime = T0,
    every=timedelta(minutes=1),
):
    for i, v in enumerate(values):
        run.log({key: v}, step=start_step + i, time=start + i * every)
    run.flush()


def test_threshold_fires_once_per_run_then_again_after_cooldown(conn, database_url):
    apply_yaml(conn, ACCURACY)
    run = engine.init(project="acme/vision", name="sweep-1", user="alice", system_metrics_interval=0)
    # avg of 5 crosses 0.6 at the 5th value (0.7 avg), stays above: one firing only
    log_series(run, "accuracy", [0.7, 0.7, 0.7, 0.7, 0.7, 0.8, 0.9])
    tick(database_url)
    fired = triggers(conn)
    assert [(t["step"], round(t["value"], 6)) for t in fired] == [(4, 0.7)]
    assert fired[0]["window_values"] == [0.7] * 5
    # 23 h later in value time: still silent; 24 h after the fired value: fires again
    log_series(run, "accuracy", [0.9], start_step=7, start=T0 + timedelta(minutes=4, hours=23))
    log_series(run, "accuracy", [0.9], start_step=8, start=T0 + timedelta(minutes=4, hours=24))
    tick(database_url)
    assert [t["step"] for t in triggers(conn)] == [4, 8]
    run.finish()


def test_values_logged_before_the_automation_never_fire(conn, database_url):
    run = engine.init(project="acme/vision", name="early", system_metrics_interval=0)
    log_series(run, "accuracy", [0.9] * 5)
    apply_yaml(conn, ACCURACY)
    tick(database_url)
    assert triggers(conn) == []
    log_series(run, "accuracy", [0.9], start_step=5)
    tick(database_url)
    # the window may use older values; only the new value is an evaluation point
    assert [t["step"] for t in triggers(conn)] == [5]
    run.finish()


def test_value_between_ticks_still_fires_exactly_once(conn, database_url):
    apply_yaml(
        conn,
        rule(
            "spike",
            '{type: run_metric_threshold, metric: loss, window: 1, operator: ">", threshold: 10}',
            extra="cooldown: 1m\n",
        ),
    )
    run = engine.init(project="acme/vision", name="r", system_metrics_interval=0)
    # the spike is followed by normal values before any tick: it must still fire
    log_series(run, "loss", [1, 2, 50, 1, 1])
    tick(database_url)
    tick(database_url)
    fired = triggers(conn)
    assert [(t["step"], t["value"]) for t in fired] == [(2, 50.0)]
    run.finish()


def test_run_state_rules(conn, database_url):
    apply_yaml(conn, rule("on-start", "{type: run_state, states: [running]}"))
    apply_yaml(conn, rule("on-end", "{type: run_state, states: [finished, crashed]}", extra="cooldown: 1m\n"))
    ok = engine.init(project="acme/vision", name="ok", system_metrics_interval=0)
    ok.finish()
    with pytest.raises(RuntimeError):
        with engine.init(project="acme/vision", name="boom", system_metrics_interval=0):
            raise RuntimeError("boom")
    killed = engine.init(project="acme/vision", name="killed", system_metrics_interval=0)
    engine.Api().kill_run("acme/vision", killed.id)
    killed.finish()  # the job itself ends after the kill: the run stays killed
    tick(database_url)
    assert sorted(t["run_id"] for t in triggers(conn, "on-start")) == sorted(
        [ok.id, killed.id, _run_id(conn, "boom")]
    )
    ended = triggers(conn, "on-end")
    assert sorted(t["run_id"] for t in ended) == sorted([ok.id, _run_id(conn, "boom")])


def _run_id(conn, name: str) -> str:
    return conn.execute("SELECT run_id FROM runs WHERE name = %s", (name,)).fetchone()[0]


def test_a_group_whose_tails_fall_short_reads_the_hypertable(conn, database_url, monkeypatch):
    """Two rules on one metric are evaluated by one query that first reads the series tails
    only. A backlog longer than the tail (8 here: 30 values in one flush) makes it say so,
    and the query that reads the hypertable evaluates every value."""
    from engine.settings import get_settings

    monkeypatch.setenv("ENGINE_SERIES_TAIL", "8")
    get_settings.cache_clear()
    apply_yaml(
        conn,
        rule(
            "spike",
            '{type: run_metric_threshold, metric: m, window: 1, aggregation: max, operator: ">", '
            "threshold: 0.5}",
            extra="cooldown: 1m\n",
        ),
    )
    apply_yaml(
        conn,
        rule(
            "pair",
            '{type: run_metric_threshold, metric: m, window: 2, operator: ">=", threshold: 0.5}',
            extra="cooldown: 1m\n",
        ),
    )
    values = [0.0] * 30
    values[2] = values[20] = 1.0
    with engine.init(project="acme/vision", name="backlog", system_metrics_interval=0) as run:
        log_series(run, "m", values)
        tick(database_url)
    assert [t["step"] for t in triggers(conn, "spike")] == [2, 20]
    assert [t["step"] for t in triggers(conn, "pair")] == [2, 3, 20, 21]


def test_idle_frontiers_move_past_other_writes_and_rest_when_nothing_is_written(conn, database_url):
    """An automation with nothing new is not evaluated: its frontier moves past what other
    metrics wrote; with nothing written at all, ticks leave its state alone (moving it is a
    write whose own xid would make every next tick move it again) until an interval passed."""
    from engine.evaluation import Evaluator
    from engine.settings import Settings

    apply_yaml(
        conn,
        rule(
            "loss-high", '{type: run_metric_threshold, metric: loss, window: 1, operator: ">", threshold: 10}'
        ),
    )
    run = engine.init(project="acme/vision", name="other-metric", system_metrics_interval=0)
    log_series(run, "accuracy", [0.5])
    state = "SELECT s.frontier::text::bigint, s.evaluated_at FROM automation_state s JOIN automations a ON a.id = s.automation_id"
    (written,) = conn.execute("SELECT max(xid)::text::bigint FROM series_batches").fetchone()
    evaluator = Evaluator(database_url, Settings(database_url=database_url, interval=3600))
    try:
        assert evaluator.tick().idle == 1
        frontier, evaluated_at = conn.execute(state).fetchone()
        assert frontier > written and evaluated_at is not None
        for _ in range(3):
            evaluator.tick()
        assert conn.execute(state).fetchone() == (frontier, evaluated_at)
    finally:
        evaluator.close()
    eager = Evaluator(database_url, Settings(database_url=database_url, interval=0.001))
    try:
        eager.tick()
        moved, refreshed = conn.execute(state).fetchone()
        assert moved > frontier and refreshed > evaluated_at
    finally:
        eager.close()
    assert triggers(conn) == []
    run.finish()


def test_watermark_rows_behind_every_frontier_go_a_ticks_worth_at_a_time(conn, database_url, monkeypatch):
    """Each tick deletes the oldest watermark rows that every automation has passed, at most
    a little more than twice what it saw written: a backlog drains over the next ticks
    instead of costing one tick all of it."""
    from engine.evaluation import Evaluator, tick
    from engine.settings import Settings

    apply_yaml(conn, ACCURACY)
    run = engine.init(project="acme/vision", name="watermarks", system_metrics_interval=0)
    for i in range(5):  # five flushes: five watermark rows of one series
        log_series(run, "accuracy", [0.1], start_step=i, start=T0 + timedelta(minutes=i))
    watermarks = "SELECT id FROM series_batches ORDER BY xid, id"
    written = [i for (i,) in conn.execute(watermarks)]
    assert len(written) == 5
    monkeypatch.setattr(tick, "_PRUNE_AT_LEAST", 1)
    evaluator = Evaluator(database_url, Settings(database_url=database_url, evaluation_connections=1))
    try:
        evaluator.tick()  # saw one series written: 1 + 2 x 1 rows go, the oldest
        assert [i for (i,) in conn.execute(watermarks)] == written[3:]
        evaluator.tick()  # nothing new: one row
        assert [i for (i,) in conn.execute(watermarks)] == written[4:]
        evaluator.tick()
        assert conn.execute(watermarks).fetchall() == []
    finally:
        evaluator.close()
    run.finish()


def test_the_evaluator_prepares_its_statements_on_its_own_connection(conn, database_url):
    """The pool's connections prepare nothing (PgBouncer), but the evaluator's leased ones
    do: a tick must not plan its group queries again (at 1,000 rules that was most of a tick
    with nothing new)."""
    from engine.evaluation import Evaluator
    from engine.settings import Settings

    apply_yaml(conn, ACCURACY)
    run = engine.init(project="acme/vision", name="prepared", system_metrics_interval=0)
    evaluator = Evaluator(database_url, Settings(database_url=database_url, evaluation_connections=1))
    try:
        log_series(run, "accuracy", [0.7] * 5)
        evaluator.tick()
        log_series(run, "accuracy", [0.7], start_step=5, start=T0 + timedelta(hours=30))
        evaluator.tick()
        own = evaluator._conn
        assert own is not None
        prepared = [s for (s,) in own.execute("SELECT statement FROM pg_prepared_statements").fetchall()]
        assert any("series_batches" in s and "scopes" in s for s in prepared), prepared  # the group query
        assert any("What a tick starts from" in s for s in prepared), prepared  # tick_state
    finally:
        evaluator.close()
    assert [t["step"] for t in triggers(conn)] == [4, 5]
    run.finish()


def test_only_the_evaluators_commits_skip_the_wait_for_the_disk(conn, database_url):
    """A tick's commit does not wait for its WAL flush (recomputed from durable points after
    a crash); the delivery claims keep the server's setting, so their durable commit covers
    every trigger they could see before a delivery leaves."""
    from engine import db
    from engine.evaluation import Evaluator
    from engine.settings import Settings

    evaluator = Evaluator(database_url, Settings(database_url=database_url, evaluation_connections=1))
    try:
        evaluator.tick()
        own = evaluator._conn
        assert own is not None
        assert own.execute("SHOW synchronous_commit").fetchone() == ("off",)
    finally:
        evaluator.close()
    with (
        db.Database(database_url, shares={"deliveries": 1}) as database,
        database.connection("deliveries") as c,
    ):
        server = c.execute("SELECT reset_val FROM pg_settings WHERE name = 'synchronous_commit'").fetchone()
        assert c.execute("SHOW synchronous_commit").fetchone() == server


def test_the_queries_are_compiled_when_the_automations_are_loaded(conn, database_url, monkeypatch):
    """Compiling a query costs ~25 ms: done when the automations are loaded (the first tick),
    not in the first tick with data for each (that tick's latency). A metric group and an
    event rule, none with data at first: the tick with their first data compiles nothing."""
    import engine.evaluation.tick as tick_module
    from engine.evaluation import Evaluator
    from engine.settings import Settings

    apply_yaml(conn, ACCURACY)
    apply_yaml(
        conn,
        rule(
            "loss-high", '{type: run_metric_threshold, metric: loss, window: 1, operator: ">", threshold: 5}'
        ),
    )
    apply_yaml(conn, rule("finished", "{type: run_state, states: [finished]}"))
    evaluator = Evaluator(database_url, Settings(database_url=database_url, evaluation_connections=1))
    compiled: list[str] = []

    def counted(name: str) -> Callable[..., Any]:
        original = getattr(tick_module, name)

        def compile_counted(*args: Any, **kwargs: Any) -> Any:
            compiled.append(name)
            return original(*args, **kwargs)

        return compile_counted

    for name in ("compile_metrics", "compile_rule"):
        monkeypatch.setattr(tick_module, name, counted(name))
    try:
        evaluator.tick()  # loads (and compiles) them: nothing written yet
        assert sorted(compiled) == ["compile_metrics", "compile_metrics", "compile_rule"]
        compiled.clear()
        with engine.init(project="acme/vision", name="loaded", system_metrics_interval=0) as run:
            log_series(run, "accuracy", [0.7] * 5)
            log_series(run, "loss", [9.0], start_step=5)
        evaluator.tick()
        assert compiled == []
    finally:
        evaluator.close()
    assert sorted(t["automation"] for t in triggers(conn)) == ["accuracy-above-0.6", "finished", "loss-high"]


def test_the_ids_of_a_ticks_triggers_follow_its_groups_and_their_firing_order(conn, database_url):
    """One statement inserts every group's trigger rows, each group's JSON made on its own
    and numbered from its own 2^32 stride: the ids follow the firing order within each group
    and the groups' order across them."""
    from engine.evaluation import Evaluator
    from engine.settings import Settings

    apply_yaml(
        conn,
        rule(
            "acc-any",
            '{type: run_metric_threshold, metric: accuracy, window: 1, operator: ">", threshold: 0}',
            extra="cooldown: 1m\n",
        ),
    )
    apply_yaml(
        conn,
        rule(
            "loss-any",
            '{type: run_metric_threshold, metric: loss, window: 1, operator: ">", threshold: 0}',
            extra="cooldown: 1m\n",
        ),
    )
    evaluator = Evaluator(database_url, Settings(database_url=database_url, evaluation_connections=1))
    try:
        evaluator.tick()
        run = engine.init(project="acme/vision", name="ordered", system_metrics_interval=0)
        for step in range(6):
            run.log(
                {"accuracy": 0.5 + step / 100, "loss": 2.0 - step / 100},
                step=step,
                time=T0 + timedelta(minutes=step),
            )
        run.flush()
        assert evaluator.tick().fired == 12
        run.finish()
    finally:
        evaluator.close()
    fired = triggers(conn)  # ordered by id
    groups = [t["automation"] for t in fired]
    assert groups in (["acc-any"] * 6 + ["loss-any"] * 6, ["loss-any"] * 6 + ["acc-any"] * 6)
    assert [t["step"] for t in fired] == list(range(6)) * 2
