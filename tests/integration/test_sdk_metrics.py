"""run.log → metric_points, series_state and series_batches through the buffered writer."""

from __future__ import annotations

import math
import select
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import numpy as np
import psycopg
import pytest

import engine
from engine import clock
from engine.sdk import buffer as sdk_buffer
from engine.sdk import copy_binary
from engine.sdk import flush as sdk_flush
from tests.integration.sdk_helpers import set_env, wait_for

T0 = datetime(2026, 2, 1, tzinfo=UTC)


def _init(**kwargs) -> engine.Run:
    return engine.init(project="acme/vision", system_metrics_interval=0, **kwargs)


def _points(conn, run_pk: int, key: str | None = None) -> list[tuple]:
    """(key, step, value, time, seq) in logging order."""
    return conn.execute(
        "SELECT k.key, p.step, p.value, p.time, p.seq FROM metric_points p JOIN metric_keys k ON k.id = p.key_id"
        " WHERE p.run_pk = %s AND (%s::text IS NULL OR k.key = %s) ORDER BY p.seq",
        (run_pk, key, key),
    ).fetchall()


def _series(conn, run_pk: int, key: str) -> tuple | None:
    """(n_finite, tail_step, tail_time, tail_value) of one series."""
    return conn.execute(
        "SELECT s.n_finite, s.tail_step, s.tail_time, s.tail_value FROM series_state s"
        " JOIN metric_keys k ON k.id = s.key_id WHERE s.run_pk = %s AND k.key = %s",
        (run_pk, key),
    ).fetchone()


def _batches(conn, run_pk: int, key: str) -> list[tuple]:
    return conn.execute(
        "SELECT b.first_pos, b.last_pos FROM series_batches b JOIN metric_keys k ON k.id = b.key_id"
        " WHERE b.run_pk = %s AND k.key = %s ORDER BY b.id",
        (run_pk, key),
    ).fetchall()


def test_points_are_stored_in_logging_order_with_default_steps(conn, database_url):
    with _init() as run:
        run.log({"loss": 1.0, "accuracy": 0.1})  # step 0
        run.log({"loss": 0.5})  # step 1
        run.log({"loss": 0.25, "accuracy": 0.3}, step=10)
        run.log({"accuracy": 0.4})  # step 11
    rows = _points(conn, run.pk)
    assert [(k, s, v) for k, s, v, _, _ in rows] == [
        ("loss", 0, 1.0),
        ("accuracy", 0, 0.1),
        ("loss", 1, 0.5),
        ("loss", 10, 0.25),
        ("accuracy", 10, 0.3),
        ("accuracy", 11, 0.4),
    ]
    seqs = [r[4] for r in rows]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    # one flush at finish: one batch id (the high bits), ordinals 0, 1, 2, ...
    assert {s >> sdk_flush.ORDINAL_BITS for s in seqs} == {seqs[0] >> sdk_flush.ORDINAL_BITS}
    assert [s & ((1 << sdk_flush.ORDINAL_BITS) - 1) for s in seqs] == list(range(6))
    assert run.step == 11


def test_a_flush_larger_than_what_is_encoded_ahead_stores_every_point_in_order(
    conn, database_url, monkeypatch
):
    """The first blocks of a flush are encoded while the server runs its statements, the rest
    as the COPY goes: both parts arrive, numbered in logging order."""
    monkeypatch.setattr(copy_binary, "_BLOCK_POINTS", 1_024)  # blocks of 341 records
    monkeypatch.setattr(sdk_flush, "ENCODE_AHEAD_POINTS", 3_000)  # the first 3 of 6 blocks
    with _init() as run:
        for step in range(2_000):
            run.log({"loss": float(step), "accuracy": step / 2, "lr": 0.1}, step=step)
    rows = _points(conn, run.pk)
    assert len(rows) == 6_000
    assert [(k, s, v) for k, s, v, _, _ in rows[2_997:3_003]] == [
        ("loss", 999, 999.0),
        ("accuracy", 999, 499.5),
        ("lr", 999, 0.1),
        ("loss", 1000, 1000.0),
        ("accuracy", 1000, 500.0),
        ("lr", 1000, 0.1),
    ]
    seqs = [r[4] for r in rows]
    assert [s & ((1 << sdk_flush.ORDINAL_BITS) - 1) for s in seqs] == list(range(6_000))
    assert [r[1] for r in _points(conn, run.pk, "loss")] == list(range(2_000))


def test_a_lower_step_is_dropped_with_a_warning(conn, database_url):
    with _init() as run:
        run.log({"loss": 1.0}, step=5)
        with pytest.warns(engine.StepWarning, match=r"step 3 is lower than the current step 5.*loss, acc"):
            run.log({"loss": 9.0, "acc": 9.0}, step=3)
        run.log({"loss": 0.5}, step=5)  # the same step again is fine
        run.log({"loss": 0.4})  # step 6
    stored = [(k, s, v) for k, s, v, _, _ in _points(conn, run.pk)]
    assert stored == [("loss", 5, 1.0), ("loss", 5, 0.5), ("loss", 6, 0.4)]


def test_a_value_that_is_not_a_number_is_dropped_and_the_rest_of_the_call_logged(conn, database_url):
    with _init() as run:
        with pytest.warns(engine.ValueWarning) as warned:
            run.log({"loss": 1.0, "name": "resnet"})
            run.log({"loss": 0.5, "name": "resnet-2"})  # the same key again: no second warning
            run.log({"weights": [1.0, 2.0], "acc": np.float32(0.25)})
            run.log({"grad": np.ones(3)})  # nothing left of this call: its step passes, like run.log({})
        assert [str(w.message).split(": ", 2)[1] for w in warned] == [
            "metric 'name'",
            "metric 'weights'",
            "metric 'grad'",
        ]
        assert "value 'resnet' of type str is not a number" in str(warned[0].message)
        assert all(f"run acme/vision/{run.id}" in str(w.message) for w in warned)
        with pytest.raises(TypeError, match="dict"):
            run.log([("loss", 1.0)])
        with pytest.raises(ValueError, match="reserved"):  # a bad key is refused whatever its value
            run.log({"system/x": "text"})
        run.log({"loss": 2.0})
    assert [(k, s, v) for k, s, v, _, _ in _points(conn, run.pk)] == [
        ("loss", 0, 1.0),
        ("loss", 1, 0.5),
        ("acc", 2, 0.25),
        ("loss", 4, 2.0),
    ]
    assert conn.execute("SELECT state FROM runs WHERE id = %s", (run.pk,)).fetchone() == ("finished",)


def test_strict_mode_makes_a_value_that_is_not_a_number_an_error(conn, database_url, monkeypatch):
    set_env(monkeypatch, strict=1)
    with _init() as run:
        with pytest.raises(TypeError, match=r"'name'.*not a number"):
            run.log({"loss": 1.0, "name": "resnet"})
        assert run.step == -1  # nothing of the refused call counted
        run.log({"loss": 2.0, "lr": Decimal("0.1")})
    assert [(k, s, v) for k, s, v, _, _ in _points(conn, run.pk)] == [("loss", 0, 2.0), ("lr", 0, 0.1)]


class FakeScalarTensor:
    """Stands in for a scalar torch tensor (torch is not a dependency): it converts with float()."""

    def __init__(self, value: float):
        self.value = value

    def __float__(self) -> float:
        return self.value


def test_anything_float_converts_is_a_number(conn, database_url):
    with _init() as run:
        run.log(
            {
                "lr": Decimal("0.1"),
                "zero_d": np.array(0.5),
                "tensor": FakeScalarTensor(0.25),
                "half": np.float16(2),
            }
        )
    assert {k: v for k, _, v, _, _ in _points(conn, run.pk)} == {
        "lr": 0.1,
        "zero_d": 0.5,
        "tensor": 0.25,
        "half": 2.0,
    }


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        ({"system/cpu": 1.0}, ValueError, "reserved"),
        ({"system.cpu": 1.0}, ValueError, "reserved"),
        ({"": 1.0}, ValueError, "1-256"),
        ({"x" * 257: 1.0}, ValueError, "1-256"),
        ({"bad\x07key": 1.0}, ValueError, "control"),
        ({7: 1.0}, TypeError, "string"),
    ],
)
def test_invalid_keys_are_refused(database_url, data, error, message):
    with _init() as run:
        with pytest.raises(error, match=message):
            run.log({"fine": 1.0, **data})


def test_time_must_be_aware_and_is_stored(conn, database_url):
    with _init() as run:
        with pytest.raises(ValueError, match="naive"):
            run.log({"loss": 1.0}, time=datetime(2026, 1, 1))
        run.log({"loss": 1.0}, time=T0)
        run.log({"loss": 2.0}, time=T0.astimezone(timezone(timedelta(hours=-5))) + timedelta(seconds=1))
    assert [t for _, _, _, t, _ in _points(conn, run.pk)] == [T0, T0 + timedelta(seconds=1)]


def test_numpy_scalars_and_bools_are_numbers(conn, database_url):
    with _init() as run:
        run.log(
            {"f32": np.float32(0.5), "i64": np.int64(3), "flag": True, "npflag": np.bool_(False), "int": 7}
        )
    assert {k: v for k, _, v, _, _ in _points(conn, run.pk)} == {
        "f32": 0.5,
        "i64": 3.0,
        "flag": 1.0,
        "npflag": 0.0,
        "int": 7.0,
    }


def test_nan_and_infinities_are_stored_but_not_in_series_state(conn, database_url):
    with _init() as run:
        for value in (float("nan"), 1.0, float("inf"), -math.inf, 2.0):
            run.log({"loss": value})
        run.log({"only_nan": float("nan")})
    values = [v for _, _, v, _, _ in _points(conn, run.pk, "loss")]
    assert math.isnan(values[0]) and values[1:] == [1.0, math.inf, -math.inf, 2.0]
    n_finite, steps, _, tail = _series(conn, run.pk, "loss")
    assert (n_finite, steps, tail) == (2, [1, 4], [1.0, 2.0])
    assert _batches(conn, run.pk, "loss") == [(1, 2)]
    assert _series(conn, run.pk, "only_nan") is None and _batches(conn, run.pk, "only_nan") == []
    assert len(_points(conn, run.pk, "only_nan")) == 1


def test_a_flush_without_a_finite_value_still_keeps_the_run_current_and_notifies(conn, database_url):
    """The series part of the flush's bookkeeping has nothing to do; the rest is done."""
    conn.execute("LISTEN engine_ingest")
    run = _init()
    pk = run.pk
    assert pk is not None
    run.log({"loss": 1.0})
    run.flush()
    (stamped,) = conn.execute("SELECT last_metric_at FROM runs WHERE id = %s", (pk,)).fetchone()
    run.log({"loss": math.nan, "acc": math.inf}, step=7)
    run.flush()
    step, last_metric_at = conn.execute(
        "SELECT step, last_metric_at FROM runs WHERE id = %s", (pk,)
    ).fetchone()
    assert step == 7 and last_metric_at > stamped
    loss = _series(conn, pk, "loss")
    assert loss is not None and loss[:2] == (1, [0]) and _batches(conn, pk, "loss") == [(1, 1)]
    assert _series(conn, pk, "acc") is None
    nonfinite = conn.execute(
        "SELECT k.key, n.step FROM nonfinite_points n JOIN metric_keys k ON k.id = n.key_id"
        " WHERE n.run_pk = %s ORDER BY n.seq",
        (pk,),
    ).fetchall()
    assert nonfinite == [("loss", 7), ("acc", 7)]
    received = list(conn.notifies(timeout=5, stop_after=2))
    assert [(n.channel, n.payload) for n in received] == [("engine_ingest", "")] * 2
    run.finish()


def test_two_values_at_one_step_are_kept_in_logging_order(conn, database_url):
    with _init() as run:
        run.log({"x": 1.0}, step=5)
        run.log({"x": 2.0}, step=5)
        run.flush()
        run.log({"x": 3.0}, step=5)
    assert [(s, v) for _, s, v, _, _ in _points(conn, run.pk)] == [(5, 1.0), (5, 2.0), (5, 3.0)]
    n_finite, steps, _, tail = _series(conn, run.pk, "x")
    assert (n_finite, steps, tail) == (3, [5, 5, 5], [1.0, 2.0, 3.0])


def test_series_state_over_several_flushes_keeps_the_last_tail_values(conn, database_url, monkeypatch):
    set_env(monkeypatch, series_tail=8)  # the smallest tail the settings allow
    every = timedelta(seconds=7, microseconds=123_457)
    logged: list[tuple[int, datetime, float]] = []
    with _init() as run:
        step = 0
        for chunk in (5, 7, 4):  # three flushes
            for _ in range(chunk):
                value = math.nan if step == 13 else step * 0.5
                run.log({"acc": value, "loss": -value}, step=step, time=T0 + step * every)
                if step != 13:
                    logged.append((step, T0 + step * every, value))
                step += 1
            run.flush()
    n_finite, steps, times, values = _series(conn, run.pk, "acc")
    assert n_finite == 15
    assert list(zip(steps, times, values)) == logged[-8:]  # exact timestamps, oldest first
    # positions of each flush's finite values among the series' finite values
    assert _batches(conn, run.pk, "acc") == [(1, 5), (6, 12), (13, 15)]
    assert _series(conn, run.pk, "loss")[3] == [-v for _, _, v in logged[-8:]]
    # the tail is maintained by the database in the same transaction as the points
    stored = conn.execute(
        "SELECT step, time, value FROM metric_points p JOIN metric_keys k ON k.id = p.key_id"
        " WHERE run_pk = %s AND k.key = 'acc' AND value <> 'NaN' ORDER BY seq DESC LIMIT 8",  # NaN = NaN in SQL
        (run.pk,),
    ).fetchall()
    assert stored[::-1] == logged[-8:]


def test_runs_logging_the_same_keys_keep_separate_series(conn, database_url):
    a, b = _init(name="a"), _init(name="b")
    for step in range(3):
        a.log({"loss": float(step)})
        b.log({"loss": 10.0 + step})
    a.finish()
    b.finish()
    assert _series(conn, a.pk, "loss")[3] == [0.0, 1.0, 2.0]
    assert _series(conn, b.pk, "loss")[3] == [10.0, 11.0, 12.0]
    assert conn.execute("SELECT count(*) FROM metric_keys WHERE key = 'loss'").fetchone()[0] == 1


def test_flush_on_size(conn, database_url, monkeypatch):
    set_env(monkeypatch, flush_max_points=10, flush_interval=3600)
    run = _init()
    for _ in range(4):
        run.log({"a": 1.0, "b": 2.0})  # 8 points: below the threshold, and no timer
    count = lambda: conn.execute("SELECT count(*) FROM metric_points").fetchone()[0]  # noqa: E731
    assert wait_for(count, timeout=0.5) == 0
    run.log({"a": 1.0, "b": 2.0})  # 10 points
    assert wait_for(lambda: count() == 10)
    run.finish()


def test_flush_on_time(conn, database_url, monkeypatch):
    set_env(monkeypatch, flush_interval=0.2)
    run = _init()
    run.log({"a": 1.0})
    assert wait_for(lambda: conn.execute("SELECT count(*) FROM metric_points").fetchone()[0] == 1, timeout=5)
    run.finish()


def test_one_notify_per_flush(conn, database_url):
    conn.execute("LISTEN engine_ingest")
    with _init() as run:
        for _ in range(50):
            run.log({"a": 1.0, "b": 2.0, "c": 3.0})
        run.flush()
        run.log({"a": 1.0})
    received = []
    while select.select([conn.fileno()], [], [], 0.5)[0]:
        received += [n for n in conn.notifies(timeout=0.1)]
    assert [(n.channel, n.payload) for n in received] == [("engine_ingest", "")] * 2


def test_a_flush_larger_than_one_batch_is_split(conn, database_url, monkeypatch):
    monkeypatch.setattr(sdk_buffer, "MAX_BATCH_POINTS", 4)
    with _init() as run:
        for step in range(5):
            run.log({"a": float(step), "b": -float(step)})  # 10 points: 3 transactions of <= 4
    seqs = [r[4] for r in _points(conn, run.pk)]
    batches = [s >> sdk_flush.ORDINAL_BITS for s in seqs]
    assert len(set(batches)) == 3 and batches == sorted(batches)
    assert [(s, v) for _, s, v, _, _ in _points(conn, run.pk, "a")] == [(i, float(i)) for i in range(5)]
    assert _series(conn, run.pk, "a")[0] == 5
    assert [r for r in _batches(conn, run.pk, "a")] == [(1, 2), (3, 4), (5, 5)]


def test_a_full_buffer_blocks_instead_of_dropping(conn, database_url, monkeypatch):
    set_env(monkeypatch, buffer_max_points=4, flush_max_points=1000, flush_interval=3600)
    with _init() as run:
        for _ in range(20):
            run.log({"a": 1.0, "b": 2.0, "c": 3.0})  # each call waits for the writer to make room
    assert len(_points(conn, run.pk)) == 60


def test_other_connections_see_points_only_after_the_flush_commits(database_url, conn):
    run = _init()
    run.log({"a": 1.0})
    assert conn.execute("SELECT count(*) FROM series_state").fetchone()[0] == 0
    run.flush()
    with psycopg.connect(database_url) as other:
        assert other.execute("SELECT count(*) FROM series_state").fetchone()[0] == 1
    run.finish()


def test_a_batch_whose_commit_answer_was_lost_is_asked_about_before_it_is_sent_again(conn, database_url):
    """The connection broke while a flush's COMMIT was on its way (a server crash): whether it
    committed is unknown. Sent again, the batch is first looked up by its flush's id: stored,
    it is not stored twice; not stored, it is stored."""
    from engine.sdk.buffer import Batch, Part, Stream
    from engine.sdk.session import Transport
    from engine.settings import get_settings

    run = engine.init(project="acme/vision", name="in-doubt", system_metrics_interval=0)
    run.flush()
    settings = get_settings()
    transport = Transport(database_url, settings, on_open=sdk_flush.DatabaseTransport.prepare_connection)
    sender = sdk_flush.DatabaseTransport(transport, settings.series_tail)
    sender.note_keys(["loss"])
    now = clock.now_micros()  # records hold times so
    stream = Stream(run.pk, "acme/vision/in-doubt")
    stored = Batch([Part(stream, [(now, 0, ("loss",), (0.5,))], [], 1)], [], seq=1)
    sender.send(stored)
    (flush_id,) = conn.execute(
        "SELECT max(seq) >> %s FROM metric_points WHERE run_pk = %s", (sdk_flush.ORDINAL_BITS, run.pk)
    ).fetchone()
    sender._in_doubt[stored.seq] = flush_id  # as a broken connection during its COMMIT leaves it
    assert sender.send(stored).closed == []  # committed before: not sent again
    lost = Batch([Part(stream, [(now, 1, ("loss",), (0.25,))], [], 1)], [], seq=2)
    sender._in_doubt[lost.seq] = flush_id + 1_000  # that attempt never committed
    sender.send(lost)
    assert sender._in_doubt == {}
    values = conn.execute(
        "SELECT step, value FROM metric_points WHERE run_pk = %s ORDER BY seq", (run.pk,)
    ).fetchall()
    assert values == [(0, 0.5), (1, 0.25)]
    transport.drop()
    run.finish()
