"""The SDK writes its binary COPY rows itself (copy_binary.layout, then each block's
`encode`, as a flush does): the server reads back
exactly the rows psycopg's own `write_row` would have sent, for every shape of records a
flush holds (long runs of the same keys encoded column by column, a few records a row at a
time, keys that change, NaN and infinities, times before 2000)."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta

import psycopg

from engine.clock import from_micros, to_micros
from engine.sdk import copy_binary
from engine.sdk.copy_binary import COPY_HEADER, COPY_TRAILER, COPY_TYPES, encode, layout

COLUMNS = "time timestamptz, run_pk bigint, key_id integer, step bigint, seq bigint, value double precision"
COPY = "COPY points (time, run_pk, key_id, step, seq, value) FROM STDIN (FORMAT BINARY)"
IDS = {"loss": 3, "acc": 9, "lr": 40, "system/cpu": 7}


def copy_run(write, run_pk, records, ids, seq):
    """One run's records through `write`, as a flush COPYs them: (next seq, slots, odd)."""
    laid = layout(records, ids, seq)
    for block in laid.blocks:
        write(encode(run_pk, block))
    return laid.seq, laid.slots, laid.odd


def _records():
    rng = random.Random(7)
    start = datetime(2026, 5, 1, 12, tzinfo=UTC)
    same = ("loss", "acc", "lr")
    records = []
    step = 0
    # a long stretch of one keys tuple (more than a block), then short ones and changes
    for n, keys in [
        (7000, same),
        (3, ("acc",)),
        (20, ("lr", "loss")),
        (1, same),
        (40, same),
        (2, ("system/cpu",)),
    ]:
        for _ in range(n):
            t = to_micros(start + timedelta(microseconds=rng.randrange(10**12)))
            records.append((t, step, keys, tuple(rng.uniform(-1e6, 1e6) for _ in keys)))
            step += rng.randrange(1, 3)
    # values that are not finite, in a long block and in a short one; a time before 2000
    records[5000] = (*records[5000][:3], (1.0, math.nan, 2.0))
    records[7010] = (*records[7010][:3], (math.inf, -math.inf))
    records[6999] = (to_micros(datetime(1987, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)), *records[6999][1:])
    return records


def _expected(run_pk, records, seq):
    rows = []
    for t, step, keys, values in records:
        for key, value in zip(keys, values):
            rows.append((from_micros(t), run_pk, IDS[key], step, seq, value))
            seq += 1
    return rows


def _read_back(conn):
    rows = conn.execute("SELECT time, run_pk, key_id, step, seq, value FROM points ORDER BY seq").fetchall()
    return [(r[0].astimezone(UTC), *r[1:]) for r in rows]


def _same(a, b):
    return len(a) == len(b) and all(
        x[:5] == y[:5] and (x[5] == y[5] or (math.isnan(x[5]) and math.isnan(y[5]))) for x, y in zip(a, b)
    )


def test_the_rows_the_server_reads_are_psycopgs(conn):
    records = _records()
    seq0 = 123 << 20
    conn.execute(f"CREATE TEMP TABLE points ({COLUMNS})")
    with conn.transaction():
        with conn.cursor().copy(COPY) as copy:
            copy.write(COPY_HEADER)
            seq, slots, odd = copy_run(copy.write, 42, records, IDS, seq0)
            copy.write(COPY_TRAILER)
    ours = _read_back(conn)
    conn.execute("TRUNCATE points")
    with conn.transaction():
        with conn.cursor().copy(COPY) as copy:
            copy.set_types(COPY_TYPES)
            for row in _expected(42, records, seq0):
                copy.write_row(row)
    theirs = _read_back(conn)

    assert _same(ours, theirs)
    assert len(ours) == sum(len(r[3]) for r in records) == seq - seq0
    # what the flush learns from the encoding: keys with their ids and counts, the odd records
    assert slots[("loss", "acc", "lr")] == [(3, 9, 40), 7041]
    assert slots[("lr", "loss")] == [(40, 3), 20]
    assert slots[("system/cpu",)] == [(7,), 2]
    assert [(first - seq0, record) for first, record in odd] == [
        (15000, records[5000]),
        (21017, records[7010]),
    ]


def test_a_block_of_the_same_keys_is_as_a_row_at_a_time(monkeypatch):
    """The column-by-column encoding and the row-at-a-time one give the same bytes."""
    records = [r for r in _records()[:500]]
    by_columns, by_rows = bytearray(), bytearray()
    copy_run(by_columns.extend, 5, records, IDS, 1 << 20)
    monkeypatch.setattr(copy_binary, "_COLUMNS_FROM", len(records) + 1)
    copy_run(by_rows.extend, 5, records, IDS, 1 << 20)
    assert by_columns == by_rows
    assert len(by_rows) == 70 * sum(len(r[3]) for r in records)


def test_an_empty_copy_is_valid(conn):
    conn.execute(f"CREATE TEMP TABLE points ({COLUMNS})")
    with conn.transaction():
        with conn.cursor().copy(COPY) as copy:
            copy.write(COPY_HEADER)
            assert copy_run(copy.write, 1, [], IDS, 1 << 20) == (1 << 20, {}, [])
            copy.write(COPY_TRAILER)
    assert conn.execute("SELECT count(*) FROM points").fetchone() == (0,)


def test_the_server_refuses_a_cut_stream(conn):
    """A stream cut short is an error of the COPY, not rows half stored."""
    conn.execute(f"CREATE TEMP TABLE points ({COLUMNS})")
    records = _records()[:100]
    stream = bytearray()
    copy_run(stream.extend, 1, records, IDS, 1 << 20)
    try:
        with conn.transaction():
            with conn.cursor().copy(COPY) as copy:
                copy.write(COPY_HEADER)
                copy.write(stream[:-5])
                copy.write(COPY_TRAILER)
    except psycopg.DataError:
        pass
    else:
        raise AssertionError("a cut stream was accepted")
    assert conn.execute("SELECT count(*) FROM points").fetchone() == (0,)
