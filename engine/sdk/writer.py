"""The SDK's write path: an in-memory buffer, a background flush thread, binary COPY.

Runs append *records* `(time, step, keys, values)` — one per `run.log` call: a tuple of
keys (the same tuple object while a run logs the same keys) and a tuple of floats — to their
`Stream`. A flush (background thread: on size, or at most every
`flush_interval`; a run's `finish`/`flush`: on demand) takes what is buffered, at most 2^20
points, and stores it in ONE transaction:

1. new metric keys interned into `metric_keys` (ids cached in the process after commit),
2. `COPY metric_points|system_metrics (time, run_pk, key_id, step, seq, value) FROM STDIN
   (FORMAT BINARY)`, with `seq = (batch_id << 20) | ordinal` (`ingest_batch_seq`),
3. `upsert_series` (sql/queries/ingest.sql) for every series with a finite value in the batch,
4. one `notify_ingest`.

Flushes run one at a time (a lock), so batches of a run commit in logging order and `seq`
follows it. When the database cannot be reached the points stay buffered (in order) and the
flush is retried with backoff; the buffer is bounded by `buffer_max_points`, after which
`append` blocks until there is room instead of dropping anything.
"""

from __future__ import annotations

import logging
import struct
import threading
import time as _time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import psycopg
from psycopg.adapt import Dumper
from psycopg.pq import Format

from engine.db import boundary, query
from engine.exceptions import DatabaseUnavailable, EngineError, IngestError
from engine.settings import Settings

log = logging.getLogger(__name__)

ORDINAL_BITS = 20
MAX_BATCH_POINTS = 1 << ORDINAL_BITS  # ordinals of one flush must fit in the low 20 bits of seq
# Binary COPY types, in the column order of the copy_* blocks in sql/queries/sdk.sql.
COPY_TYPES = ("timestamptz", "int8", "int4", "int8", "int8", "float8")
BACKOFF_START = 0.1
BACKOFF_MAX = 10.0

Record = tuple[datetime, int, tuple[str, ...], tuple[float, ...]]


class Stream:
    """One run's buffered points. Only the Writer touches these fields, under its lock."""

    __slots__ = ("run_pk", "label", "records", "system", "queued", "inflight", "step", "system_step")

    def __init__(self, run_pk: int, label: str, *, step: int = -1, system_step: int = -1):
        self.run_pk = run_pk
        self.label = label
        self.step = step  # the run's current step: a call without step logs at step + 1
        self.system_step = system_step  # index of the last system sample
        self.records: list[Record] = []  # metric_points, in logging order
        self.system: list[Record] = []  # system_metrics, in sampling order
        self.queued = 0  # points buffered, not yet taken by a flush
        self.inflight = 0  # points in a flush that has not committed yet

    @property
    def unstored(self) -> int:
        return self.queued + self.inflight


class Writer:
    """Buffer + flush thread for every run of one process and database (see module docstring)."""

    def __init__(self, connect: Callable[[], psycopg.Connection], settings: Settings):
        self._connect = connect
        self._conn: psycopg.Connection | None = None
        self.interval = settings.flush_interval
        self.flush_points = settings.flush_max_points
        self.buffer_points = settings.buffer_max_points
        self.tail = settings.series_tail

        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # writer thread: something to flush
        self._room = threading.Condition(self._lock)  # appenders: the buffer has room again
        self._flush_lock = threading.Lock()  # one flush at a time (seq order, one connection)
        self._dirty: dict[Stream, None] = {}  # streams with queued points, in order
        self._queued = 0
        self._inflight = 0
        self._blocked = 0  # appenders waiting for room
        self._unknown: set[str] = set()  # keys not interned yet
        self._key_ids: dict[str, int] = {}
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.last_error: EngineError | None = None

        self._q_copy = {False: query("copy_metric_points"), True: query("copy_system_metrics")}
        self._q_batch = query("next_ingest_batch")
        self._q_intern = query("intern_keys")
        self._q_key_ids = query("key_ids")
        self._q_upsert = query("upsert_series")
        self._q_notify = query("notify_ingest")

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="engine-sdk-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and close the connection (buffered points are the runs' business:
        `Run.finish` flushes or reports them before a session closes)."""
        with self._lock:
            self._stopping = True
            self._wake.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        with self._flush_lock:
            self._close_connection()

    # -- appending (hot path) ---------------------------------------------------------
    def note_keys(self, keys: list[str]) -> None:
        """Keys a run validated for the first time; interned by the next flush if new."""
        with self._lock:
            self._unknown.update(k for k in keys if k not in self._key_ids)

    def append(
        self, stream: Stream, time: datetime, step: int | None, keys: tuple[str, ...], values: tuple[float, ...]
    ) -> int | None:
        """Buffer one `run.log` call at `step` (None: the stream's step + 1); blocks while the
        buffer is full. Returns None, or the current step when `step` is lower (dropped).

        Steps are checked here, under the lock, so that several threads logging to one run
        cannot buffer points out of step order.
        """
        n = len(values)
        with self._lock:
            if self._queued + self._inflight + n > self.buffer_points and (self._queued or self._inflight):
                self._wait_for_room(n)
            current = stream.step
            if step is None:
                step = current + 1
            elif step < current:
                return current
            stream.step = step
            if n:
                stream.records.append((time, step, keys, values))
                if not stream.queued:
                    self._dirty[stream] = None
                stream.queued += n
                self._queued += n
                if self._queued >= self.flush_points:
                    self._wake.notify()
        return None

    def append_system(self, stream: Stream, time: datetime, keys: tuple[str, ...], values: tuple[float, ...]) -> None:
        """Buffer one system sample; its step is its index among the run's samples."""
        n = len(values)
        with self._lock:
            if self._queued + self._inflight + n > self.buffer_points and (self._queued or self._inflight):
                self._wait_for_room(n)
            stream.system_step += 1
            stream.system.append((time, stream.system_step, keys, values))
            if not stream.queued:
                self._dirty[stream] = None
            stream.queued += n
            self._queued += n

    def _wait_for_room(self, n: int) -> None:
        self._blocked += 1
        self._wake.notify()
        try:
            while self._queued + self._inflight + n > self.buffer_points and self._queued + self._inflight:
                self._room.wait()
        finally:
            self._blocked -= 1

    # -- flushing ---------------------------------------------------------------------
    def flush(self, stream: Stream | None = None, *, timeout: float | None = None) -> None:
        """Store what is buffered now (for `stream`: until none of its points is left).

        Retries with backoff while the database is unreachable; after `timeout` seconds
        raises IngestError saying how many points of the stream are not stored (they stay
        buffered: `discard` drops them).
        """
        deadline = None if timeout is None else _time.monotonic() + timeout
        backoff = BACKOFF_START
        while True:
            with self._lock:
                left = stream.unstored if stream is not None else self._queued + self._inflight
            if not left:
                return
            try:
                self.flush_once()
                backoff = BACKOFF_START
                continue
            except EngineError as exc:
                error = exc
            remaining = None if deadline is None else deadline - _time.monotonic()
            if remaining is not None and remaining <= 0:
                with self._lock:
                    left = stream.unstored if stream is not None else self._queued + self._inflight
                what = f"of run {stream.label} " if stream is not None else ""
                raise IngestError(
                    f"{left} points {what}were not stored: {error}. Check that the database is reachable "
                    "(`engine db status`, ENGINE_DATABASE_URL)."
                ) from error
            log.warning("could not store logged points (%s); retrying in %.1f s", error, backoff)
            _time.sleep(backoff if remaining is None else min(backoff, remaining))
            backoff = min(backoff * 2, BACKOFF_MAX)

    def discard(self, stream: Stream) -> int:
        """Drop a stream's buffered points (after `flush` gave up); returns how many."""
        with self._flush_lock, self._lock:
            dropped = stream.queued
            self._queued -= stream.queued
            stream.queued = 0
            stream.records, stream.system = [], []
            self._dirty.pop(stream, None)
            self._room.notify_all()
        return dropped

    def flush_once(self) -> int:
        """Take up to 2^20 buffered points and store them in one transaction; returns how many."""
        with self._flush_lock:
            with self._lock:
                batch, unknown = self._take(MAX_BATCH_POINTS)
            if not batch:
                return 0
            try:
                new_ids = self._write(batch, unknown)
            except BaseException as exc:
                with self._lock:
                    self._put_back(batch)
                if isinstance(exc, EngineError):
                    self.last_error = exc
                raise
            with self._lock:
                self._key_ids.update(new_ids)
                self._unknown.difference_update(new_ids)
                total = 0
                for stream, _, _, n in batch:
                    stream.inflight -= n
                    total += n
                self._inflight -= total
                self._room.notify_all()
            self.last_error = None
            return total

    def _take(self, cap: int) -> tuple[list[tuple[Stream, list[Record], list[Record], int]], list[str]]:
        batch = []
        taken = 0
        for stream in list(self._dirty):
            if taken >= cap:
                break
            if taken + stream.queued <= cap:
                records, system, n = stream.records, stream.system, stream.queued
                stream.records, stream.system = [], []
            else:
                records, n = _prefix(stream.records, cap - taken)
                system: list[Record] = []
                if len(records) == len(stream.records):
                    system, m = _prefix(stream.system, cap - taken - n)
                    n += m
                del stream.records[: len(records)]
                del stream.system[: len(system)]
            stream.queued -= n
            stream.inflight += n
            if not stream.queued:
                del self._dirty[stream]
            batch.append((stream, records, system, n))
            taken += n
        self._queued -= taken
        self._inflight += taken
        # every key in the batch was noted before its record was appended
        return batch, [k for k in self._unknown if k not in self._key_ids]

    def _put_back(self, batch: list[tuple[Stream, list[Record], list[Record], int]]) -> None:
        total = 0
        for stream, records, system, n in batch:
            stream.records[:0] = records
            stream.system[:0] = system
            stream.inflight -= n
            stream.queued += n
            self._dirty[stream] = None
            total += n
        self._inflight -= total
        self._queued += total

    def _write(self, batch: list[tuple[Stream, list[Record], list[Record], int]], unknown: list[str]) -> dict[str, int]:
        conn = self._connection()
        try:
            with boundary(), conn.transaction():
                cur = conn.cursor()
                ids = self._key_ids
                new_ids: dict[str, int] = {}
                if unknown:
                    cur.execute(self._q_intern, {"keys": unknown})
                    new_ids = dict(cur.execute(self._q_key_ids, {"keys": unknown}).fetchall())
                    ids = {**ids, **new_ids}
                (batch_id,) = cur.execute(self._q_batch).fetchone()
                seq = batch_id << ORDINAL_BITS
                series: list[dict] = []
                for system in (False, True):
                    parts = [(s.run_pk, b) for s, r, y, _ in batch if (b := y if system else r)]
                    if parts:
                        with cur.copy(self._q_copy[system]) as copy:
                            copy.set_types(COPY_TYPES)
                            for run_pk, records in parts:
                                seq = self._copy_run(copy.write_row, run_pk, records, ids, seq, series)
                with conn.pipeline():  # the upserts and the NOTIFY in one round trip
                    if series:
                        cur.executemany(self._q_upsert, series)
                    cur.execute(self._q_notify, {"payload": ""})
        except EngineError as exc:
            if isinstance(exc, DatabaseUnavailable) or conn.broken or conn.closed:
                self._close_connection()
            raise
        return new_ids

    def _copy_run(self, write, run_pk: int, records: list[Record], ids: dict[str, int], seq: int, series: list) -> int:
        """COPY one run's records (the hot loop of a flush); add its series to `series`."""
        finite: dict[int, list] = {}  # key id -> its rows with a finite value, in order
        slots: dict[tuple[str, ...], tuple] = {}  # keys of a record -> (key ids, their `finite` lists)
        for t, step, keys, values in records:
            slot = slots.get(keys)
            if slot is None:
                kids = tuple(ids[k] for k in keys)
                slot = slots[keys] = (kids, tuple(finite.setdefault(k, []) for k in kids))
            for kid, rows, value in zip(*slot, values):
                row = (t, run_pk, kid, step, seq, value)
                write(row)
                seq += 1
                if value - value == 0.0:  # finite (inf - inf and NaN give NaN)
                    rows.append(row)
        tail = self.tail
        for kid, rows in finite.items():
            if rows:
                last = rows[-tail:]
                series.append({
                    "key_id": kid, "run_pk": run_pk, "n_new": len(rows), "tail": tail,
                    "steps": Int8Array.of([r[3] for r in last]),
                    "times": TimestamptzArray.of([r[0] for r in last]),
                    "values": Float8Array.of([r[5] for r in last]),
                })
        return seq

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._close_connection()
            conn = self._connect()
            for array in (Int8Array, Float8Array, TimestamptzArray):
                conn.adapters.register_dumper(array, array.Dumper)
            self._conn = conn
        return self._conn

    def _close_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
            self._conn = None

    # -- the background thread ----------------------------------------------------------
    def _loop(self) -> None:
        failures = 0
        while True:
            with self._lock:
                if failures:
                    self._wake.wait_for(lambda: self._stopping, timeout=min(BACKOFF_START * 2**failures, BACKOFF_MAX))
                else:
                    self._wake.wait_for(
                        lambda: self._stopping or self._queued >= self.flush_points or self._blocked,
                        timeout=self.interval,
                    )
                if self._stopping:
                    return
                if not self._queued:
                    continue
            try:
                self.flush_once()
                failures = 0
            except EngineError as exc:
                failures += 1
                log.warning("could not store logged points (%s); they stay buffered and are retried", exc)
            except Exception:  # never let the writer die: runs would block forever
                failures += 1
                log.exception("unexpected error while storing logged points; retrying")


# -- the tails of upsert_series, as binary arrays --------------------------------------------
# psycopg dumps a list element by element in Python (~1 us each); a flush sends up to three
# arrays of ENGINE_SERIES_TAIL elements per series, so they are packed here with struct.
_ARRAY_HEADER = struct.Struct(">iiiii")  # dimensions, has nulls, element oid, length, lower bound
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)


class _ArrayDumper(Dumper):
    """Sends an _Array8 as it is (its `oid` is the array type)."""

    format = Format.BINARY

    def dump(self, obj: bytes) -> bytes:
        return obj


class _Array8(bytes):
    """A one-dimensional array of 8-byte elements in PostgreSQL's binary format."""

    element_oid = 0
    code = ""  # struct code of one element
    Dumper: type[_ArrayDumper] = _ArrayDumper

    @classmethod
    def of(cls, values: list) -> _Array8:
        n = len(values)
        head = _ARRAY_HEADER.pack(1, 0, cls.element_oid, n, 1)
        return cls(head + struct.pack(">" + ("i" + cls.code) * n, *[x for v in cls._elements(values) for x in (8, v)]))

    @staticmethod
    def _elements(values: list) -> list:
        return values


class Int8Array(_Array8):
    element_oid, code = 20, "q"

    class Dumper(_ArrayDumper):
        oid = 1016  # bigint[]


class Float8Array(_Array8):
    element_oid, code = 701, "d"

    class Dumper(_ArrayDumper):
        oid = 1022  # double precision[]


class TimestamptzArray(_Array8):
    element_oid, code = 1184, "q"

    class Dumper(_ArrayDumper):
        oid = 1185  # timestamptz[]

    @staticmethod
    def _elements(values: list) -> list:
        return [(t - _PG_EPOCH) // _MICROSECOND for t in values]  # exact microseconds since 2000


def _prefix(records: list[Record], room: int) -> tuple[list[Record], int]:
    """The longest prefix of `records` with at most `room` points (a record never has more
    than MAX_BATCH_POINTS points: Run.log refuses bigger calls)."""
    n = 0
    i = 0
    for _, _, _, values in records:
        if n + len(values) > room:
            break
        n += len(values)
        i += 1
    return records[:i], n
