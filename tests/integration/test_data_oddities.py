"""Odd data through the real path — SDK, TimescaleDB, `Evaluator.tick()` — with rules that must
fire exactly where the SPEC says (issue 7, "Clock and data oddities"):

* timestamps far in the past and the future (years 1900 and 2200, and the ends of Python's
  range): accepted and stored exactly; rules react to *ingest*, whatever the timestamp, and
  the cooldown is measured on the values' own times;
* steps that go backwards: the call is dropped with a StepWarning and never evaluated;
* a key logged twice at one step: both values kept, in logging order;
* a run of 1,000,000 points (slow): all stored; the rule evaluates the backlog from the
  hypertable, then the last values from the series tail;
* metric keys of 256 characters (accepted, also by rules) and 257 (refused);
* unicode everywhere a user writes text (project names are ASCII by SPEC section 1);
* NaN and ±inf: stored, skipped by rules (windows of finite values only).
"""

from __future__ import annotations

import math
import re
import time
import warnings
from datetime import UTC, datetime, timedelta

import pytest

import engine
from engine.actions.dispatcher import Dispatcher
from engine.actions.webhook import header_value
from engine.evaluation import Evaluator
from engine.exceptions import RuleValidationError
from engine.rules import parse_rules_text
from engine.settings import Settings
from tests.integration.actions_helpers import settle
from tests.integration.evaluation_helpers import apply_yaml, rule, tick, triggers
from tests.receiver import Receiver, Reply

UTC = UTC


def threshold(
    name: str,
    metric: str,
    window: int,
    op: str,
    value: float,
    *,
    extra: str = "",
    project: str = "acme/vision",
) -> str:
    quoted = metric.replace("\\", "\\\\").replace('"', '\\"')
    event = f'{{type: run_metric_threshold, metric: "{quoted}", window: {window}, operator: "{op}", threshold: {value}}}'
    return rule(name, event, scope=f"{{project: {project}}}", extra=extra)


def stored(conn, run_pk: int, key: str) -> list[tuple[int, datetime, float]]:
    return conn.execute(
        "SELECT p.step, p.time, p.value FROM metric_points p JOIN metric_keys k ON k.id = p.key_id"
        " WHERE p.run_pk = %s AND k.key = %s ORDER BY p.seq",
        (run_pk, key),
    ).fetchall()


# -- timestamps ------------------------------------------------------------------------------
def test_far_past_and_future_timestamps_are_stored_and_fire_on_ingest(conn, database_url):
    # cooldown 1m on the values' own clock: 1900 -> now -> 2200 all fire (each is >= 1m after
    # the last firing), but a value logged "now" after the 2200 one is inside that cooldown.
    apply_yaml(conn, threshold("any-time", "loss", 1, ">", 0.5, extra="cooldown: 1m\n"))
    now = datetime.now(UTC).replace(microsecond=0)
    times = [
        datetime(1900, 1, 1, tzinfo=UTC),
        now,
        datetime(2200, 12, 31, 23, 59, 59, tzinfo=UTC),
        now + timedelta(minutes=5),
    ]
    with engine.init(project="acme/vision", name="time-traveller", system_metrics_interval=0) as run:
        for step, when in enumerate(times):
            run.log({"loss": 1.0}, step=step, time=when)
    tick(database_url)

    assert [t for _, t, _ in stored(conn, run.pk, "loss")] == times
    fired = triggers(conn, "any-time")
    assert [(t["step"], t["value_time"]) for t in fired] == [(0, times[0]), (1, times[1]), (2, times[2])]
    # TimescaleDB made a chunk for each era: the hypertable takes them, no error to report.
    chunks = conn.execute(
        "SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_name = 'metric_points'"
    ).fetchone()[0]
    assert chunks >= 3


def test_the_ends_of_pythons_datetime_range_are_stored(conn, database_url):
    """Years 1 and 9999 (Python's limits; PostgreSQL's timestamptz goes further both ways)."""
    apply_yaml(conn, threshold("ends", "acc", 2, ">=", 1))
    ends = [datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)]
    with engine.init(project="acme/vision", name="ends", system_metrics_interval=0) as run:
        run.log({"acc": 1.0}, step=0, time=ends[0])
        run.log({"acc": 1.0}, step=1, time=ends[1])
    tick(database_url)
    assert [t for _, t, _ in stored(conn, run.pk, "acc")] == ends
    assert [(t["step"], t["window_values"]) for t in triggers(conn, "ends")] == [(1, [1.0, 1.0])]


def test_naive_times_are_refused_with_the_fix(database_url):
    with engine.init(project="acme/vision", name="naive", system_metrics_interval=0) as run:
        with pytest.raises(ValueError, match="naive: give a timezone-aware datetime"):
            run.log({"loss": 1.0}, time=datetime(2200, 1, 1))


# -- steps -------------------------------------------------------------------------------------
def test_steps_going_backwards_are_dropped_with_a_warning_and_never_evaluated(conn, database_url):
    apply_yaml(conn, threshold("peak", "loss", 2, ">", 50, extra="cooldown: 1m\n"))
    with engine.init(project="acme/vision", name="backwards", system_metrics_interval=0) as run:
        run.log({"loss": 1.0}, step=5)
        with pytest.warns(engine.StepWarning, match="step 3 is lower than the current step 5"):
            run.log({"loss": 1000.0}, step=3)  # would make max/avg of 2 > 50 if it counted
        with pytest.warns(engine.StepWarning, match="step 0 is lower"):
            run.log({"loss": 1000.0, "other": 1.0}, step=0)  # the whole call goes, every key
        run.log({"loss": 1.0}, step=6)
        run.flush()
        tick(database_url)
        assert triggers(conn, "peak") == []
        run.log({"loss": 199.0})  # no step: current + 1 = 7
    tick(database_url)
    assert [(s, v) for s, _, v in stored(conn, run.pk, "loss")] == [(5, 1.0), (6, 1.0), (7, 199.0)]
    assert stored(conn, run.pk, "other") == []
    assert [(t["step"], t["window_values"]) for t in triggers(conn, "peak")] == [(7, [1.0, 199.0])]


def test_duplicate_steps_keep_both_values_in_logging_order(conn, database_url):
    apply_yaml(
        conn,
        threshold("pair", "loss", 2, "<", 2.5, extra="cooldown: 1m\n")
        + "---\n"
        + threshold("second", "loss", 1, "==", 3),
    )
    with engine.init(project="acme/vision", name="dupes", system_metrics_interval=0) as run:
        run.log({"loss": 9.0}, step=4)
        run.log({"loss": 3.0}, step=4)
        run.log({"loss": 1.0}, step=4)  # avg(3, 1) = 2 < 2.5: fires here, at step 4
        run.log({"loss": 5.0}, step=4)
    tick(database_url)
    assert [(s, v) for s, _, v in stored(conn, run.pk, "loss")] == [(4, 9.0), (4, 3.0), (4, 1.0), (4, 5.0)]
    assert [(t["step"], t["window_values"]) for t in triggers(conn, "pair")] == [(4, [3.0, 1.0])]
    # the second value at step 4 fires "== 3" — and only it, at its position among the four
    (second,) = triggers(conn, "second")
    assert second["step"] == 4 and second["window_values"] == [3.0] and second["cause"].endswith(":2")


# -- size --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_run_of_a_million_points(conn, database_url, record_property):
    """Measured here (2 shared cores): 8-20 s to log, 5-40 s for the tick that evaluates the
    999,990 backlog from the hypertable, < 1 s for the tick on the last 10 (the series tail).

    The backlog tick gets 2 minutes (the default statement timeout is 30 s, which a busy
    machine can exceed; the test after this one shows what happens then). Found with this
    test: when PostgreSQL flattens the compiled query's `vals` into `points`, the arrays of
    the backlog are re-read for every position (quadratic, > 5 minutes for this run); the
    compiler fences `vals` (OFFSET 0) so that they are read once per series.
    """
    n = 1_000_000
    apply_yaml(conn, threshold("converged", "loss", 5, "<", 0.1, project="acme/big"))
    evaluator = Evaluator(database_url, Settings(database_url=database_url, statement_timeout_ms=120_000))
    try:
        with engine.init(project="acme/big", name="million", system_metrics_interval=0) as run:
            started = time.perf_counter()
            for step in range(n - 10):
                run.log({"loss": 1.0}, step=step)
            run.flush(timeout=120)
            logged = time.perf_counter()
            backlog = evaluator.tick()
            evaluated = time.perf_counter()
            for step in range(n - 10, n):  # the last five are 0: avg of 5 < 0.1 only at the very end
                run.log({"loss": 0.0 if step >= n - 5 else 1.0}, step=step)
            run.flush()
            tail_started = time.perf_counter()
            tail = evaluator.tick()
            done = time.perf_counter()
    finally:
        evaluator.close()
    record_property("log_seconds", round(logged - started, 1))
    record_property("backlog_tick_seconds", round(evaluated - logged, 1))
    record_property("tail_tick_seconds", round(done - tail_started, 2))
    print(
        f"million: log {logged - started:.1f}s, backlog tick {evaluated - logged:.1f}s, tail tick {done - tail_started:.2f}s"
    )

    assert backlog.failed == [] and backlog.fired == 0
    assert tail.failed == [] and tail.fired == 1
    count, distinct_steps, last_step = conn.execute(
        "SELECT count(*), count(DISTINCT step), max(step) FROM metric_points WHERE run_pk = %s", (run.pk,)
    ).fetchone()
    assert (count, distinct_steps, last_step) == (n, n, n - 1)
    assert conn.execute("SELECT n_finite FROM series_state WHERE run_pk = %s", (run.pk,)).fetchone()[0] == n
    (fired,) = triggers(conn, "converged")
    assert (fired["step"], fired["window_values"], fired["value"]) == (n - 1, [0.0] * 5, 0.0)


def test_a_backlog_longer_than_one_statement_timeout_is_evaluated_eventually(conn, database_url):
    """200,000 values in 40 flushes of 5,000, evaluated under a 200 ms statement timeout: the
    whole backlog's query times out, then the automation catches up alone, a shorter part of
    the backlog per try (half as many flushes after each failure, twice as many after each
    success), and fires exactly once, at the end."""
    apply_yaml(conn, threshold("late", "loss", 5, "<", 0.1, project="acme/big"))
    n = 200_000
    with engine.init(project="acme/big", name="backlog", system_metrics_interval=0) as run:
        for step in range(n):
            run.log({"loss": 0.0 if step >= n - 5 else 1.0}, step=step)
            if step % 5_000 == 4_999:
                run.flush()
    assert (
        conn.execute(
            "SELECT count(DISTINCT xid) FROM series_batches WHERE run_pk = %s", (run.pk,)
        ).fetchone()[0]
        >= 40
    )
    evaluator = Evaluator(database_url, Settings(database_url=database_url, statement_timeout_ms=200))
    results = []
    try:
        for _ in range(80):
            results.append(evaluator.tick())
            # behind the newest watermark row (none left: every one was passed and pruned)
            failures, frontier_behind = conn.execute(
                "SELECT s.failures, coalesce(s.frontier < (SELECT max(xid) FROM series_batches), false) "
                "FROM automation_state s"
            ).fetchone()
            if failures == 0 and not frontier_behind:
                break
    finally:
        evaluator.close()
    assert any(r.failed == ["late"] for r in results), (
        "the whole backlog fit in one statement: nothing tested"
    )
    assert (failures, frontier_behind) == (0, False), [r.failed for r in results]
    assert [t["step"] for t in triggers(conn, "late")] == [n - 1], [r.failed for r in results]


# -- keys --------------------------------------------------------------------------------------
def test_a_256_character_key_is_accepted_by_the_sdk_and_rules_and_257_is_refused(conn, database_url):
    long_key = "k" * 252 + "/λ🙂é"  # 256 characters (not bytes: 260 in UTF-8)
    assert len(long_key) == 256
    apply_yaml(conn, threshold("long-key", long_key, 1, ">", 0))
    with engine.init(project="acme/vision", name="keys", system_metrics_interval=0) as run:
        run.log({long_key: 1.0}, step=0)
        with pytest.raises(ValueError, match="must be 1-256 characters long \\(it has 257\\)"):
            run.log({long_key + "x": 1.0, "fine": 2.0}, step=1)
        run.log({"fine": 2.0}, step=1)
    tick(database_url)
    # key ids are interned per flush in no particular order: compare the set
    assert {k for (k,) in conn.execute("SELECT key FROM metric_keys")} == {long_key, "fine"}
    assert [(t["metric"], t["step"]) for t in triggers(conn, "long-key")] == [(long_key, 0)]
    with pytest.raises(RuleValidationError, match=r"event\.metric: is too long \(at most 256\)"):
        parse_rules_text(threshold("too-long", long_key + "x", 1, ">", 0))


# -- unicode -----------------------------------------------------------------------------------
RUN_NAME = "训练 🚀 שלום e\u0301tude \u202eevil"  # CJK, emoji, Hebrew (RTL), a combining accent, RLO
USER = "Zoë 👩\u200d🔬 مريم"  # a ZWJ emoji sequence and Arabic
KEY = "損失/λ 🙂 مقياس"
COLLECTION = "données 📦 ñ"
ALIAS = "生产-🚀"
TAG = "ευρώπη\u0301-δύση"
METADATA = {"clé 🔑": "valeur ✓ עברית", "emoji": "👍🏽", "combining": "n\u0303"}


def test_unicode_everywhere_is_stored_matched_and_delivered_exactly(conn, database_url):
    hook = "action: {type: webhook, url: %s/%s, payload: %s}\n"
    with Receiver(Reply(200)) as rx:
        payloads = {
            "metric": '{run: "${run_name}", user: "${event_author}", metric: "${metric_name}", values: "${metric_values}"}',
            "alias": '{alias: "${alias}", version: "${artifact_version_string}", meta: "${artifact_metadata.clé 🔑}"}',
            "tag": '{tag: "${tag}", collection: "${artifact_collection_name}", emoji: "${artifact_metadata.emoji}"}',
        }
        text = (
            f"name: metric\nscope: {{project: acme/vision}}\n"
            f'event: {{type: run_metric_threshold, metric: "{KEY}", window: 2, operator: ">", threshold: 0.5}}\n'
            f'run_filter: {{user: "{USER}", name_regex: "^训练 🚀 שלום e\u0301tude"}}\n'
            + hook
            % (rx.url(""), "metric", payloads["metric"])
            + f'---\nname: alias\nscope: {{project: acme/vision, collection: "{COLLECTION}"}}\n'
            f'event: {{type: artifact_alias_added, alias_regex: "^生产-🚀$"}}\n'
            + hook
            % (rx.url(""), "alias", payloads["alias"])
            + '---\nname: tag\nscope: {project: acme/vision, collection_regex: "^données"}\n'
            'event: {type: artifact_tag_added, tag_regex: "^ευρώπη\u0301"}\n'
            + hook
            % (rx.url(""), "tag", payloads["tag"])
        )
        apply_yaml(conn, text)
        # The same run under another user, and a near miss of the name (the accent written
        # precomposed, "é" instead of "e" + U+0301): neither may fire the metric rule.
        for name, user in [(RUN_NAME, "Zoe"), ("训练 🚀 שלום \u00e9tude", USER), (RUN_NAME, USER)]:
            with engine.init(
                project="acme/vision", name=name, user=user, tags=[TAG, "🏷️"], system_metrics_interval=0
            ) as run:
                run.log({KEY: 0.9, "ascii": 1.0}, step=0)
                run.log({KEY: 0.8}, step=1)
                if user == USER and name == RUN_NAME:
                    version = run.log_artifact(
                        COLLECTION, type="数据集", metadata=METADATA, aliases=[ALIAS], tags=[TAG]
                    )
        tick(database_url)
        settings = Settings(
            database_url=database_url, webhook_allow_hosts="127.0.0.1", retry_base_seconds=0.05
        )
        with Dispatcher(database_url, settings) as dispatcher:
            settle(dispatcher, conn, [r[0] for r in conn.execute("SELECT id FROM deliveries")])

    got = {r.path.strip("/"): r.json() for r in rx.requests}
    assert sorted(got) == ["alias", "metric", "tag"]
    assert got["metric"] == {"run": RUN_NAME, "user": USER, "metric": KEY, "values": [0.9, 0.8]}
    assert got["alias"] == {
        "alias": ALIAS,
        "version": f"acme/vision/{COLLECTION}:v0",
        "meta": METADATA["clé 🔑"],
    }
    assert got["tag"] == {"tag": TAG, "collection": COLLECTION, "emoji": METADATA["emoji"]}
    (row,) = conn.execute(
        "SELECT run_name, metric, delivery_status FROM automation_history WHERE automation = 'metric'"
    ).fetchall()
    assert row == (RUN_NAME, KEY, "succeeded")
    stored_run = conn.execute("SELECT name, user_name, tags FROM runs WHERE id = %s", (run.pk,)).fetchone()
    assert stored_run == (RUN_NAME, USER, [TAG, "🏷️"])
    assert (
        conn.execute("SELECT metadata FROM artifact_versions WHERE id = %s", (version.id,)).fetchone()[0]
        == METADATA
    )


def test_a_unicode_run_name_in_a_header_template_is_delivered(conn, database_url):
    """Header values are sent as UTF-8 (a run name need not be ASCII), and stored so."""
    with Receiver(Reply(200)) as rx:
        apply_yaml(
            conn,
            rule(
                "hdr",
                "{type: run_state, states: [finished]}",
                extra=(
                    f'action: {{type: webhook, url: "{rx.url()}", headers: {{X-Run: "${{run_name}}"}}, max_attempts: 1}}\n'
                ),
            ).replace("action: {type: no_op}\n", ""),
        )
        with engine.init(project="acme/vision", name=RUN_NAME, system_metrics_interval=0):
            pass
        tick(database_url)
        settings = Settings(database_url=database_url, webhook_allow_hosts="127.0.0.1")
        with Dispatcher(database_url, settings) as dispatcher:
            settle(dispatcher, conn, [r[0] for r in conn.execute("SELECT id FROM deliveries")])
    assert conn.execute("SELECT status FROM deliveries").fetchone()[0] == "succeeded"
    assert rx.requests and rx.requests[0].headers.get("X-Run")
    sent = header_value(RUN_NAME)  # the name, control characters made spaces
    # the receiver (http.server) reads header bytes as Latin-1
    assert rx.requests[0].headers["X-Run"].encode("latin-1") == sent.encode("utf-8")
    (stored,) = conn.execute("SELECT request -> 'headers' ->> 'X-Run' FROM delivery_attempts").fetchone()
    assert stored == sent


def test_project_names_are_ascii_by_spec(database_url):
    with pytest.raises(ValueError, match="must be 'entity/project'"):
        engine.init(project="acmé/vision", system_metrics_interval=0)
    with pytest.raises(RuleValidationError, match=re.escape("scope.project: must be entity/project")):
        parse_rules_text(rule("p", "{type: run_state, states: [failed]}", scope='{project: "acme/visión"}'))


# -- NaN and infinities ------------------------------------------------------------------------
def test_nan_and_infinities_are_stored_and_rules_skip_them(conn, database_url):
    apply_yaml(
        conn,
        threshold("finite", "acc", 3, ">", 0.8, extra="cooldown: 1m\n")
        + "---\n"
        + rule(
            "drop",
            "{type: run_metric_change, metric: acc, current_window: 1, prior_window: 1, change: absolute, direction: any, amount: 0.05}",
            extra="cooldown: 1m\n",
        ),
    )
    values = [0.9, math.nan, math.inf, 0.9, -math.inf, 0.9, float("nan"), 0.7]
    with engine.init(project="acme/vision", name="nan", system_metrics_interval=0) as run:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no warning for non-finite values: they are data
            for step, value in enumerate(values):
                run.log({"acc": value}, step=step)
    tick(database_url)
    kept = [v for _, _, v in stored(conn, run.pk, "acc")]
    assert len(kept) == len(values)
    assert [("nan" if math.isnan(v) else v) for v in kept] == [
        ("nan" if math.isnan(v) else v) for v in values
    ]
    # the 3rd finite value (step 5) completes the first window of three finite values
    assert [(t["step"], t["window_values"]) for t in triggers(conn, "finite")] == [(5, [0.9, 0.9, 0.9])]
    # change of finite neighbours only: 0.9 -> 0.9 -> 0.9 -> 0.7 gives one change, at step 7
    (change,) = triggers(conn, "drop")
    assert change["step"] == 7 and change["prior_values"] == [0.9] and change["window_values"] == [0.7]
    assert math.isclose(change["value"], -0.2)
    assert conn.execute("SELECT n_finite FROM series_state WHERE run_pk = %s", (run.pk,)).fetchone()[0] == 4
