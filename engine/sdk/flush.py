"""The database transport of the SDK's writer: one flush is ONE transaction.

For each batch the buffer (buffer.py) hands over:

1. new metric keys interned into `metric_keys` (ids cached in the process after commit), and
   the batch id (`ingest_batch_seq`): the points are numbered `seq = (batch_id << 20) | ordinal`
   and laid out in blocks (copy_binary.layout), which gives each series' count and tail,
2. `upsert_series` (engine/sql/queries/ingest.sql), one statement for every series with a finite
   value in the batch (series_state and its watermark rows), and `insert_nonfinite` for its NaN
   and infinite values (rare), then ONE `ingest_flush` (a function whose statements keep their
   plans) for every run of the batch (its current steps; with metric values, its last
   ingestion, for stalls), one NOTIFY, and the pending stop requests of the batch's runs
   (stop_run), read in the same transaction, so a run learns of one within a flush, and the
   final state changes of runs whose last points are in it; the server runs these while the
   client encodes the points,
3. `COPY metric_points|system_metrics (time, run_pk, key_id, step, seq, value) FROM STDIN
   (FORMAT BINARY)` of the encoded points (copy_binary.py),
4. COMMIT.

Nothing in 2 reads the points, so their order in the transaction does not matter. Batches are
sent one at a time in logging order, so `seq` follows it.
"""

from __future__ import annotations

import threading
from collections import deque
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Protocol, cast

import psycopg

from engine.db import boundary, describe_url, is_transient, query
from engine.exceptions import DatabaseUnavailable, EngineError
from engine.sdk import buffer
from engine.sdk.buffer import Batch, Part, Record, SendResult, Stream
from engine.sdk.copy_binary import (
    COPY_HEADER,
    COPY_TRAILER,
    Float8Array,
    Int8Array,
    Layout,
    TimestamptzArray,
    encode,
    layout,
)

if TYPE_CHECKING:

    class Connections(Protocol):
        """What the transport needs of the session's connection (session.Transport)."""

        url: str

        def connection(self) -> AbstractContextManager[psycopg.Connection]: ...
        def close_if_idle(self) -> float | None: ...
        def drop(self) -> None: ...

    class Opening(buffer.Opening, Protocol):
        """A run's creation (run.py): `open` runs it atomically on the given autocommit
        connection and returns (run pk, last stored step, last stored system sample), -1 when
        there is none."""

        def open(self, conn: psycopg.Connection) -> tuple[int, int, int]: ...


ORDINAL_BITS = 20
assert buffer.MAX_BATCH_POINTS <= 1 << ORDINAL_BITS  # ordinals of one batch fit in the low bits of seq
# Transaction control of a flush (see DatabaseTransport.send).
_BEGIN, _COMMIT, _ROLLBACK = "BEGIN", "COMMIT", "ROLLBACK"


class DatabaseTransport:
    """Stores the writer's batches in the database, over the session's one connection."""

    advice = "Check that the database is reachable (`engine db status`, ENGINE_DATABASE_URL)."

    def __init__(
        self,
        connections: Connections,
        series_tail: int,
        *,
        key_ids: dict[str, int] | None = None,
        batch_id: int | None = None,
    ):
        self._connections = connections
        # engine web takes the batch id in the round trip that takes the run's lock, inside
        # the transaction this flush joins: its first batch uses it instead of asking again
        self._batch_id = batch_id
        self.tail = series_tail
        self.where = f"the database {describe_url(connections.url)}"
        self._keys_lock = threading.Lock()  # runs note keys while a flush interns them
        self._unknown: set[str] = set()  # keys not interned yet
        self._key_ids: dict[str, int] = {} if key_ids is None else key_ids  # (engine web: its process's)
        # batches (their writer seq) whose connection broke while their COMMIT was on its way:
        # the database id of the flush, asked about before the batch is sent again
        self._in_doubt: dict[int, int] = {}

        self._q_copy = {False: query("copy_metric_points"), True: query("copy_system_metrics")}
        self._q_batch = query("next_ingest_batch")
        self._q_intern = query("intern_keys")
        self._q_key_ids = query("key_ids")
        self._q_upsert = query("upsert_series")
        self._q_nonfinite = query("insert_nonfinite")
        self._q_flushed = query("ingest_flush")

    @staticmethod
    def prepare_connection(conn: psycopg.Connection) -> None:
        """Called on every new connection of the session: the tails' binary array dumpers."""
        for array in (Int8Array, Float8Array, TimestamptzArray):
            conn.adapters.register_dumper(array, array.Dumper)

    def note_keys(self, keys: list[str]) -> None:
        with self._keys_lock:
            self._unknown.update(k for k in keys if k not in self._key_ids)

    def open(self, opening: buffer.Opening) -> tuple[int, int, int]:
        with self._connections.connection() as conn, boundary():
            return cast("Opening", opening).open(conn)

    @staticmethod
    def is_transient(error: EngineError) -> bool:
        return is_transient(error)

    def close_if_idle(self) -> float | None:
        return self._connections.close_if_idle()

    def send(self, batch: Batch) -> SendResult:
        """One transaction, in five round trips: BEGIN with the batch id (and new keys); the
        series upserts, ingest_flush and the closing statements together, which the server
        runs while the points are encoded; the COPY's two; COMMIT. (COPY cannot run inside a
        pipeline, so the transaction is opened and committed by hand around it.)"""
        # every key in the batch was noted before its record was appended
        with self._keys_lock:
            unknown = [k for k in self._unknown if k not in self._key_ids]
        # a run's final state change: (statement, params) for its run_pk (run.py)
        closing = [
            (s, c[0], {**c[1], "run_pk": s.run_pk})
            for s, c in cast("list[tuple[Stream, tuple[str, dict]]]", batch.closing)
        ]
        doubt = self._in_doubt.get(batch.seq)
        if doubt is not None:
            stored = self._committed(batch.parts, doubt)  # raises while the database is away: asked again
            del self._in_doubt[batch.seq]
            if stored:
                # stored by the attempt that lost its answer: not again (the states are read
                # back, the stop requests come with the next flush)
                return SendResult([(stream, None) for stream, _, _ in closing])
        committing: list[int] = []
        try:
            with self._connections.connection() as conn:
                new_ids, closed, stops = self._send_on(conn, batch.parts, unknown, closing, committing)
        except BaseException:
            if committing:
                self._in_doubt[batch.seq] = committing[0]
            raise
        with self._keys_lock:
            self._key_ids.update(new_ids)
            self._unknown.difference_update(new_ids)
        if not stops:
            return SendResult(closed)
        streams = {p.stream.run_pk: p.stream for p in batch.parts}
        return SendResult(closed, [(streams[run_pk], automation) for run_pk, automation in stops])

    def _send_on(
        self,
        conn: psycopg.Connection,
        batch: list[Part],
        unknown: list[str],
        closing: list[tuple[Stream, str, dict]],
        committing: list[int],
    ) -> tuple[dict[str, int], list[tuple[Stream, object]], list[tuple[int, str]]]:
        """The batch's transaction; `committing` gets its batch id when the connection breaks
        while the COMMIT may have reached the server (the outcome is unknown)."""
        new_ids: dict[str, int] = {}
        sent: list[int] = []
        try:
            with boundary():
                cur = conn.cursor()
                batch_cur, keys_cur = conn.cursor(), conn.cursor()
                # engine web opens the transaction itself (it holds the run's lock): join it
                begin = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
                batch_id, self._batch_id = (None, None) if begin else (self._batch_id, None)
                if begin or unknown or batch_id is None:
                    with conn.pipeline():
                        if begin:
                            cur.execute(_BEGIN)
                        if unknown:
                            cur.execute(self._q_intern, {"keys": unknown})
                            keys_cur.execute(self._q_key_ids, {"keys": unknown})
                        if batch_id is None:
                            batch_cur.execute(self._q_batch)
                if batch_id is None:
                    (batch_id,) = cast("tuple[int]", batch_cur.fetchone())
                ids = self._key_ids
                if unknown:
                    new_ids = dict(keys_cur.fetchall())
                    ids = {**ids, **new_ids}
                # the points laid out in blocks and numbered (metric points, then system
                # samples), which gives the series' counts and tails
                seq = batch_id << ORDINAL_BITS
                series = _Series()
                copies: list[tuple[bool, list[tuple[int, Layout]]]] = []
                for system in (False, True):
                    runs = []
                    for stream, records, samples, _ in batch:
                        if rows := samples if system else records:
                            run_pk, laid = cast(int, stream.run_pk), layout(rows, ids, seq)
                            seq = laid.seq
                            self._add_series(run_pk, rows, laid, series)
                            runs.append((run_pk, laid))
                    if runs:
                        copies.append((system, runs))
                # The statements first (the transaction's order does not matter to them): the
                # server runs them while the rows are encoded, which the COPY then only sends.
                closing_curs = [conn.cursor() for _ in closing]
                stops_cur = conn.cursor()
                with conn.pipeline():
                    if series.key_ids:  # every point of this flush has a seq below `seq`
                        cur.execute(self._q_upsert, series.params(self.tail, seq - 1))
                    if series.nonfinite:
                        cur.execute(self._q_nonfinite, series.nonfinite_params())
                    # the stop requests are read before the closing changes, which end a
                    # finishing run's requests
                    stops_cur.execute(self._q_flushed, _run_steps(batch))
                    for c, (_, statement, params) in zip(closing_curs, closing):
                        c.execute(statement, params)
                    encoded = _encode_ahead(copies)
                for system, runs in copies:
                    with cur.copy(self._q_copy[system]) as copy:
                        copy.write(COPY_HEADER)
                        for run_pk, laid in runs:
                            for block in laid.blocks:
                                copy.write(encoded.popleft() if encoded else encode(run_pk, block))
                        copy.write(COPY_TRAILER)
                sent.append(batch_id)  # from here on the COMMIT may reach the server
                cur.execute(_COMMIT)
                return (
                    new_ids,
                    [(stream, c.fetchone()) for c, (stream, _, _) in zip(closing_curs, closing)],
                    cast("list[tuple[int, str]]", stops_cur.fetchall()),
                )
        except BaseException as exc:
            if conn.broken or conn.closed:
                committing.extend(sent)
            self._abort(conn)
            if isinstance(exc, DatabaseUnavailable) or conn.broken or conn.closed:
                self._connections.drop()
            raise

    def _committed(self, parts: list[Part], batch_id: int) -> bool:
        """Whether the flush `batch_id` of these parts committed (the transaction is atomic: one
        run's points tell). A batch without points has only state changes, which are sent again."""
        run_pk = next((s.run_pk for s, r, y, _ in parts if r or y), None)
        if run_pk is None:
            return False
        bounds = {"run_pk": run_pk, "lo": batch_id << ORDINAL_BITS, "hi": (batch_id + 1) << ORDINAL_BITS}
        with self._connections.connection() as conn, boundary():
            return bool(cast("tuple[bool]", conn.execute(query("batch_committed"), bounds).fetchone())[0])

    def _abort(self, conn: psycopg.Connection) -> None:
        if conn.closed or conn.broken or conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            return
        try:
            with boundary():
                conn.execute(_ROLLBACK)
        except EngineError:
            self._connections.drop()

    def _add_series(self, run_pk: int, records: list[Record], laid: Layout, series: _Series) -> None:
        """Add a run's series (finite counts and tails, non-finite values) to `series`."""
        slots, odd = laid.slots, laid.odd
        # finite values per series: every value of the records, less the non-finite ones
        n_finite: dict[int, int] = {}
        for kids, count in slots.values():
            for kid in kids:
                n_finite[kid] = n_finite.get(kid, 0) + count
        for first, (t, step, keys, values) in odd:
            for n, (kid, value) in enumerate(zip(slots[keys][0], values)):
                if value - value != 0.0:  # NaN or an infinity
                    n_finite[kid] -= 1
                    series.add_nonfinite(kid, run_pk, first + n, step, t, value)
        for kid, (steps, times, tail_values) in self._tails(records, slots, n_finite, bool(odd)).items():
            series.add(kid, run_pk, n_finite[kid], steps, times, tail_values)

    def _tails(
        self, records: list[Record], slots: dict[tuple[str, ...], list], n_finite: dict[int, int], odd: bool
    ) -> dict[int, tuple[list, ...]]:
        """The last `tail` finite (step, time, value) of each series with finite values, oldest
        first, read from the end of the records (so the hot loop keeps nothing per point)."""
        tail = self.tail
        if len(slots) == 1 and not odd:  # the usual run: the same keys every call, finite values
            ((kids, _),) = slots.values()
            last = records[-tail:]
            steps, times = [r[1] for r in last], [r[0] for r in last]
            return {kid: (steps, times, [r[3][i] for r in last]) for i, kid in enumerate(kids)}
        found: dict[int, list] = {kid: [] for kid, n in n_finite.items() if n > 0}
        open_series = len(found)
        for t, step, keys, values in reversed(records):
            for kid, value in zip(slots[keys][0], values):
                got = found.get(kid)
                if got is not None and len(got) < tail and value - value == 0.0:
                    got.append((step, t, value))
                    if len(got) == tail:
                        open_series -= 1
            if not open_series:
                break
        return {kid: tuple(list(column) for column in zip(*reversed(got))) for kid, got in found.items()}


# Points encoded ahead of the COPY, while the server runs the flush's statements: a bound on
# the memory a large batch (one the database was away for) holds at once.
ENCODE_AHEAD_POINTS = 1 << 16


def _encode_ahead(copies: list[tuple[bool, list[tuple[int, Layout]]]]) -> deque[bytearray]:
    """The rows of a flush's first blocks, in the order the COPYs send them, up to
    ENCODE_AHEAD_POINTS points (the COPYs encode the rest as they go)."""
    encoded: deque[bytearray] = deque()
    points = 0
    for _, runs in copies:
        for run_pk, laid in runs:
            for block in laid.blocks:
                if points >= ENCODE_AHEAD_POINTS:
                    return encoded
                encoded.append(encode(run_pk, block))
                points += len(block.values)
    return encoded


def _run_steps(batch: list[Part]) -> dict[str, list[int]]:
    """ingest_flush's runs: each run's highest metric and system step in the batch (-1: none;
    a run with no metric values is not alive for stall rules)."""
    runs: dict[int, list[int]] = {}
    for stream, records, system, _ in batch:
        steps = runs.setdefault(cast(int, stream.run_pk), [-1, -1])
        # a stream's records are in step order (Writer.append), so its last has the highest
        if records:
            steps[0] = max(steps[0], records[-1][1])
        if system:
            steps[1] = max(steps[1], system[-1][1])
    return {
        "runs": list(runs),
        "run_steps": [s[0] for s in runs.values()],
        "run_system_steps": [s[1] for s in runs.values()],
    }


class _Series:
    """The series a flush touched, as the parameters of ONE upsert_series statement: one
    element per series in key_ids/run_pks/n_new/lens, and their tails laid end to end."""

    __slots__ = ("key_ids", "lens", "n_new", "nonfinite", "run_pks", "steps", "times", "values")

    def __init__(self) -> None:
        self.key_ids: list[int] = []
        self.run_pks: list[int] = []
        self.n_new: list[int] = []
        self.lens: list[int] = []
        self.steps: list[int] = []
        self.times: list[int] = []  # as records hold them (clock.to_micros)
        self.values: list[float] = []
        # the flush's NaN and infinite values: (run_pk, key_id, seq, step, time, value)
        self.nonfinite: list[tuple] = []

    def add_nonfinite(self, key_id: int, run_pk: int, seq: int, step: int, time: int, value: float) -> None:
        self.nonfinite.append((run_pk, key_id, seq, step, time, value))

    def nonfinite_params(self) -> dict:
        run_pks, key_ids, seqs, steps, times, values = (list(c) for c in zip(*self.nonfinite))
        return {
            "run_pks": run_pks,
            "key_ids": key_ids,
            "seqs": seqs,
            "steps": steps,
            "times": TimestamptzArray.of_elements(times),
            "values": values,
        }

    def add(self, key_id: int, run_pk: int, n_new: int, steps: list, times: list, values: list) -> None:
        self.key_ids.append(key_id)
        self.run_pks.append(run_pk)
        self.n_new.append(n_new)
        self.lens.append(len(steps))
        self.steps += steps
        self.times += times
        self.values += values

    def params(self, tail: int, seq_bound: int) -> dict:
        return {
            "key_ids": self.key_ids,
            "run_pks": self.run_pks,
            "n_new": self.n_new,
            "lens": self.lens,
            "steps": Int8Array.of(self.steps),
            "times": TimestamptzArray.of_elements(self.times),
            "values": Float8Array.of(self.values),
            "tail": tail,
            "seq_bound": seq_bound,
        }
