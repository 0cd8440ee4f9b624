"""The SDK's write path: an in-memory buffer, a background flush thread, binary COPY.

Runs append *records* `(time, step, keys, values)` — one per `run.log` call: a tuple of
keys (the same tuple object while a run logs the same keys) and a tuple of floats — to their
`Stream`. A flush (background thread: on size, or at most every
`flush_interval`; a run's `finish`/`flush`: on demand) takes what is buffered, at most 2^20
points, and stores it in ONE transaction:

1. new metric keys interned into `metric_keys` (ids cached in the process after commit),
2. `COPY metric_points|system_metrics (time, run_pk, key_id, step, seq, value) FROM STDIN
   (FORMAT BINARY)`, with `seq = (batch_id << 20) | ordinal` (`ingest_batch_seq`),
3. `upsert_series` (engine/sql/queries/ingest.sql), one statement for every series with a finite
   value in the batch,
4. one `notify_ingest`.

Flushes run one at a time (a lock), so batches of a run commit in logging order and `seq`
follows it. When the database cannot be reached the points stay buffered (in order) and the
flush is retried with backoff; the buffer is bounded by `buffer_max_points`, after which
`append` blocks until there is room instead of dropping anything.

A run may exist before the database has it: when `engine.init` cannot reach the database,
the run's creation (its `Opening`) waits in its stream, the run's points are buffered as
usual, and the first flush that reaches the database creates the run (one transaction)
before it stores any of its points. A resumed run's stored steps are only known then: the
points it logged meanwhile keep the steps they were given (`None` for "the next one") and
are numbered when it opens, as if they had been logged after it.
"""

from __future__ import annotations

import logging
import random
import struct
import threading
import time as _time
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import psycopg
from psycopg.adapt import Dumper
from psycopg.pq import Format

from engine.db import boundary, describe_url, is_transient, query
from engine.exceptions import DatabaseUnavailable, EngineError, IngestError
from engine.settings import Settings

if TYPE_CHECKING:
    from typing import Protocol

    class Transport(Protocol):
        """What the writer needs of the session's connection (session.Transport)."""

        url: str

        def connection(self) -> AbstractContextManager[psycopg.Connection]: ...
        def close_if_idle(self) -> float | None: ...
        def drop(self) -> None: ...

    class Opening(Protocol):
        """A run's creation (run.py): `open` runs it atomically on the given autocommit
        connection and returns (run pk, last stored step, last stored system sample), -1 when
        there is none."""

        resume: bool  # the run may have stored points: its steps continue after them

        def open(self, conn: psycopg.Connection) -> tuple[int, int, int]: ...


log = logging.getLogger(__name__)

ORDINAL_BITS = 20
MAX_BATCH_POINTS = 1 << ORDINAL_BITS  # ordinals of one flush must fit in the low 20 bits of seq
# Binary COPY types, in the column order of the copy_* blocks in engine/sql/queries/sdk.sql.
COPY_TYPES = ("timestamptz", "int8", "int4", "int8", "int8", "float8")
# Transaction control of a flush (see Writer._write).
_BEGIN, _COMMIT, _ROLLBACK = "BEGIN", "COMMIT", "ROLLBACK"
BACKOFF_START = 0.1
BACKOFF_MAX = 10.0

Record = tuple[datetime, int, tuple[str, ...], tuple[float, ...]]


class Stream:
    """One run's buffered points. Only the Writer touches these fields, under its lock."""

    __slots__ = (
        "closed",
        "closing",
        "failed",
        "inflight",
        "label",
        "lost",
        "opening",
        "queued",
        "records",
        "run_pk",
        "step",
        "system",
        "system_step",
    )

    def __init__(
        self,
        run_pk: int | None,
        label: str,
        *,
        step: int = -1,
        system_step: int = -1,
        opening: Opening | None = None,
    ):
        self.run_pk = run_pk  # None until the run is in the database
        # The run's creation until the database did it: no flush takes the stream's points
        # before (see the module docstring).
        self.opening = opening
        self.failed: IngestError | None = None  # the run could not be created: its points are dropped
        self.lost = 0  # points dropped since
        self.label = label
        self.step = step  # the run's current step: a call without step logs at step + 1
        self.system_step = system_step  # index of the last system sample
        self.records: list[Record] = []  # metric_points, in logging order
        self.system: list[Record] = []  # system_metrics, in sampling order
        self.queued = 0  # points buffered, not yet taken by a flush
        self.inflight = 0  # points in a flush that has not committed yet
        # A statement to run in the transaction that stores the stream's last points (the
        # run's final state change, see `finish`), and its first row once it ran.
        self.closing: tuple[str, dict] | None = None
        self.closed: tuple | None = None

    @property
    def unstored(self) -> int:
        return self.queued + self.inflight


class Writer:
    """Buffer + flush thread for every run of one process and database (see module docstring)."""

    def __init__(self, transport: Transport, settings: Settings):
        self._transport = transport
        self.interval = settings.flush_interval
        self.flush_points = settings.flush_max_points
        self.buffer_points = settings.buffer_max_points
        self.tail = settings.series_tail

        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # writer thread: something to flush
        self._room = threading.Condition(self._lock)  # appenders: the buffer has room again
        self._flush_lock = threading.Lock()  # one flush at a time (seq order, one connection)
        self._dirty: dict[Stream, None] = {}  # streams with queued points (or to open), in order
        self._pending: dict[Stream, None] = {}  # streams whose run the database has not created yet
        self._queued = 0
        self._inflight = 0
        self._blocked = 0  # appenders waiting for room
        self._unknown: set[str] = set()  # keys not interned yet
        self._key_ids: dict[str, int] = {}
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.last_error: EngineError | None = None  # of the last flush; None once one succeeds
        self._warned = False  # about the current outage (one warning per outage)
        self.where = describe_url(transport.url)

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
        """Stop the thread (buffered points are the runs' business: `Run.finish` flushes or
        reports them before a session closes)."""
        with self._lock:
            self._stopping = True
            self._wake.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @staticmethod
    def prepare_connection(conn: psycopg.Connection) -> None:
        """Called on every new connection of the session: the tails' binary array dumpers."""
        for array in (Int8Array, Float8Array, TimestamptzArray):
            conn.adapters.register_dumper(array, array.Dumper)

    # -- appending (hot path) ---------------------------------------------------------
    def note_keys(self, keys: list[str]) -> None:
        """Keys a run validated for the first time; interned by the next flush if new."""
        with self._lock:
            self._unknown.update(k for k in keys if k not in self._key_ids)

    def append(
        self,
        stream: Stream,
        time: datetime,
        step: int | None,
        keys: tuple[str, ...],
        values: tuple[float, ...],
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
            given = step
            if step is None:
                step = current + 1
            elif step < current:
                return current
            stream.step = step
            if stream.opening is not None:  # rare: the database has not created the run yet
                self._append_early(stream, (time, given if stream.opening.resume else step, keys, values))
            elif n:
                stream.records.append((time, step, keys, values))
                if not stream.queued:
                    self._dirty[stream] = None
                stream.queued += n
                queued = self._queued = self._queued + n
                if queued >= self.flush_points:
                    self._wake.notify()
        return None

    def _append_early(self, stream: Stream, record: tuple) -> None:
        """A record of a run not created yet (a resumed run's record keeps the step it was
        given, None for "the next one", until its stored steps are known)."""
        n = len(record[3])
        if stream.failed is not None:
            stream.lost += n
            return
        stream.records.append(record)
        stream.queued += n
        self._queued += n

    def append_system(
        self, stream: Stream, time: datetime, keys: tuple[str, ...], values: tuple[float, ...]
    ) -> None:
        """Buffer one system sample; its step is its index among the run's samples."""
        n = len(values)
        with self._lock:
            if self._queued + self._inflight + n > self.buffer_points and (self._queued or self._inflight):
                self._wait_for_room(n)
            stream.system_step += 1
            if stream.failed is not None:
                stream.lost += n
                return
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

    # -- runs the database has not created yet -------------------------------------------
    def open(self, stream: Stream) -> None:
        """Create the stream's run now (atomically); raises what the database raised.
        Once it is in the database its points are flushed like any other's."""
        assert stream.opening is not None
        with self._transport.connection() as conn, boundary():
            run_pk, step, system_step = stream.opening.open(conn)
        with self._lock:
            stream.run_pk = run_pk
            if stream.opening.resume:
                self._renumber(stream, step, system_step)
            stream.opening = None
            self._pending.pop(stream, None)
            if not stream.queued:
                self._dirty.pop(stream, None)
        self._recovered()

    def defer(self, stream: Stream, error: EngineError) -> None:
        """The database cannot create the run now (`error`): the flushes create it once it
        answers; meanwhile its points are buffered."""
        with self._lock:
            self._pending[stream] = None
            self._dirty[stream] = None
            self.last_error = error
        self._warn(error)

    def ensure_open(self, stream: Stream) -> None:
        """Make sure the stream's run is in the database (before a change that refers to it)."""
        with self._flush_lock:
            if stream.failed is not None:
                raise self._lost(stream)
            if stream.opening is not None:
                self.open(stream)

    @property
    def unreachable(self) -> bool:
        """The last attempt to reach the database failed in a way that may pass."""
        error = self.last_error
        return error is not None and is_transient(error)

    def _open_pending(self) -> None:
        with self._lock:
            pending = list(self._pending)
        for stream in pending:
            try:
                self.open(stream)
            except ValueError as exc:  # its id belongs to another run: it can never be created
                self._fail(stream, exc)

    def _renumber(self, stream: Stream, step: int, system_step: int) -> None:
        """Give a resumed run's early records their steps, after the stored ones (`step`,
        `system_step`), as `append` would have had it known them."""
        records, dropped, current = [], 0, step
        for t, given, keys, values in stream.records:
            if given is None:
                given = current + 1
            elif given < current:
                dropped += len(values)
                continue
            current = given
            if values:
                records.append((t, given, keys, values))
        stream.records, stream.step = records, current
        stream.system = [(t, system_step + 1 + i, keys, values) for t, i, keys, values in stream.system]
        stream.system_step += system_step + 1
        if dropped:
            stream.queued -= dropped
            self._queued -= dropped
            self._room.notify_all()
            log.warning(
                "run %s continues after step %d: %d points logged at lower steps before the database answered "
                "were dropped",
                stream.label,
                step,
                dropped,
            )

    def _fail(self, stream: Stream, error: Exception) -> None:
        with self._lock:
            stream.failed = IngestError(f"run {stream.label} could not be created: {error}")
            stream.lost += stream.queued
            self._queued -= stream.queued
            stream.queued = 0
            stream.records, stream.system = [], []
            self._pending.pop(stream, None)
            self._dirty.pop(stream, None)
            self._room.notify_all()
        log.error("%s; what it logs is dropped", stream.failed)

    @staticmethod
    def _lost(stream: Stream) -> IngestError:
        return IngestError(f"{stream.failed}; {stream.lost} logged points were not stored")

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
                if stream is not None and stream.failed is not None:
                    raise self._lost(stream)
                left = self._left(stream)
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
                    never = stream is not None and stream.opening is not None
                what = f"of run {stream.label} " if stream is not None else ""
                if never:
                    what += "(the run itself is not in the database) "
                raise IngestError(
                    f"{left} points {what}were not stored: {str(error).rstrip('.')}. Check that the database is "
                    "reachable (`engine db status`, ENGINE_DATABASE_URL)."
                ) from error
            self._warn(error)
            _time.sleep(_jitter(backoff) if remaining is None else min(_jitter(backoff), remaining))
            backoff = min(backoff * 2, BACKOFF_MAX)

    def _left(self, stream: Stream | None) -> int:
        """Points (and runs to create) still to store, of `stream` or of every stream."""
        if stream is None:
            return self._queued + self._inflight + len(self._pending)
        return stream.unstored + (stream.opening is not None)

    def finish(
        self, stream: Stream, statement: str, params: dict, *, timeout: float | None = None
    ) -> tuple[bool, tuple | None]:
        """Store the stream's points and run `statement` in the transaction that stores the
        last of them, so that they commit together (a run's last points and its final state).

        Returns (True, its first row), or (False, None) when no flush could carry it (nothing
        was buffered): the caller runs it on its own. Raises like `flush`.
        """
        with self._lock:
            if stream.failed is not None:
                raise self._lost(stream)
            if not self._left(stream):
                return False, None
            stream.closing, stream.closed = (statement, params), None
        try:
            self.flush(stream, timeout=timeout)
        finally:
            with self._lock:
                # still set: the last points were already in a flush when it was queued
                pending, stream.closing = stream.closing, None
        return (False, None) if pending is not None else (True, stream.closed)

    def discard(self, stream: Stream) -> int:
        """Drop a stream's buffered points (after `flush` gave up); returns how many."""
        with self._flush_lock, self._lock:
            dropped = stream.queued
            self._queued -= stream.queued
            stream.queued = 0
            stream.records, stream.system = [], []
            self._dirty.pop(stream, None)
            self._pending.pop(stream, None)  # given up: a run created now would never finish
            self._room.notify_all()
        return dropped

    def flush_once(self) -> int:
        """Take up to 2^20 buffered points and store them in one transaction; returns how many."""
        with self._flush_lock:
            try:
                self._open_pending()
            except EngineError as exc:
                self.last_error = exc
                raise
            with self._lock:
                batch, unknown = self._take(MAX_BATCH_POINTS)
                # streams whose last points are in this batch carry their closing statement
                closing = [
                    (s, s.closing[0], {**s.closing[1], "run_pk": s.run_pk})
                    for s, _, _, _ in batch
                    if s.closing is not None and not s.queued
                ]
            if not batch:
                return 0
            try:
                new_ids, closed = self._write(batch, unknown, closing)
            except BaseException as exc:
                with self._lock:
                    self._put_back(batch)
                if isinstance(exc, EngineError):
                    self.last_error = exc
                raise
            self._recovered()
            with self._lock:
                self._key_ids.update(new_ids)
                self._unknown.difference_update(new_ids)
                for stream, row in closed:
                    stream.closing, stream.closed = None, row
                total = 0
                for stream, _, _, n in batch:
                    stream.inflight -= n
                    total += n
                self._inflight -= total
                self._room.notify_all()
            return total

    def _take(self, cap: int) -> tuple[list[tuple[Stream, list[Record], list[Record], int]], list[str]]:
        batch = []
        taken = 0
        for stream in list(self._dirty):
            if taken >= cap:
                break
            if stream.opening is not None:
                continue  # its run first (see _open_pending)
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

    def _write(
        self,
        batch: list[tuple[Stream, list[Record], list[Record], int]],
        unknown: list[str],
        closing: list[tuple[Stream, str, dict]],
    ) -> tuple[dict[str, int], list[tuple[Stream, tuple | None]]]:
        """One transaction, in four round trips: BEGIN with the batch id (and new keys),
        the COPYs, then the series upserts, NOTIFY, closing statements and COMMIT together.
        (psycopg's transaction() would add two: COPY cannot run inside a pipeline, so the
        transaction is opened and committed by hand around it.)"""
        with self._transport.connection() as conn:
            return self._write_on(conn, batch, unknown, closing)

    def _write_on(
        self,
        conn: psycopg.Connection,
        batch: list[tuple[Stream, list[Record], list[Record], int]],
        unknown: list[str],
        closing: list[tuple[Stream, str, dict]],
    ) -> tuple[dict[str, int], list[tuple[Stream, tuple | None]]]:
        new_ids: dict[str, int] = {}
        try:
            with boundary():
                cur = conn.cursor()
                batch_cur, keys_cur = conn.cursor(), conn.cursor()
                with conn.pipeline():
                    cur.execute(_BEGIN)
                    if unknown:
                        cur.execute(self._q_intern, {"keys": unknown})
                        keys_cur.execute(self._q_key_ids, {"keys": unknown})
                    batch_cur.execute(self._q_batch)
                (batch_id,) = batch_cur.fetchone()
                ids = self._key_ids
                if unknown:
                    new_ids = dict(keys_cur.fetchall())
                    ids = {**ids, **new_ids}
                seq = batch_id << ORDINAL_BITS
                series = _Series()
                for system in (False, True):
                    parts = [(s.run_pk, b) for s, r, y, _ in batch if (b := y if system else r)]
                    if parts:
                        with cur.copy(self._q_copy[system]) as copy:
                            copy.set_types(COPY_TYPES)
                            for run_pk, records in parts:
                                seq = self._copy_run(copy.write_row, run_pk, records, ids, seq, series)
                closing_curs = [conn.cursor() for _ in closing]
                with conn.pipeline():
                    if series.key_ids:  # every point of this flush has a seq below `seq`
                        cur.execute(self._q_upsert, series.params(self.tail, seq - 1))
                    cur.execute(self._q_notify, {"payload": ""})
                    for c, (_, statement, params) in zip(closing_curs, closing):
                        c.execute(statement, params)
                    cur.execute(_COMMIT)
                return new_ids, [(stream, c.fetchone()) for c, (stream, _, _) in zip(closing_curs, closing)]
        except BaseException as exc:
            self._abort(conn)
            if isinstance(exc, DatabaseUnavailable) or conn.broken or conn.closed:
                self._transport.drop()
            raise

    def _abort(self, conn: psycopg.Connection) -> None:
        if conn.closed or conn.broken or conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            return
        try:
            conn.execute(_ROLLBACK)
        except psycopg.Error:
            self._transport.drop()

    def _copy_run(
        self, write, run_pk: int, records: list[Record], ids: dict[str, int], seq: int, series: _Series
    ) -> int:
        """COPY one run's records (the hot loop of a flush: one tuple and one write_row per
        point); then add the run's series (finite counts and tails) to `series`."""
        slots: dict[tuple[str, ...], list] = {}  # keys of a record -> [their key ids, records with them]
        odd: list[Record] = []  # records with a NaN or an infinity (rare: counted apart)
        for record in records:
            t, step, keys, values = record
            slot = slots.get(keys)
            if slot is None:
                slot = slots[keys] = [tuple(ids[k] for k in keys), 0]
            slot[1] += 1
            for kid, value in zip(slot[0], values):
                write((t, run_pk, kid, step, seq, value))
                seq += 1
            total = sum(values)
            if total - total:  # not 0.0: a value is not finite (or the sum overflowed)
                odd.append(record)
        # finite values per series: every value of the records, less the non-finite ones
        n_finite: dict[int, int] = {}
        for kids, count in slots.values():
            for kid in kids:
                n_finite[kid] = n_finite.get(kid, 0) + count
        for _, _, keys, values in odd:
            for kid, value in zip(slots[keys][0], values):
                if value - value != 0.0:  # NaN or an infinity
                    n_finite[kid] -= 1
        for kid, (steps, times, values) in self._tails(records, slots, n_finite).items():
            series.add(kid, run_pk, n_finite[kid], steps, times, values)
        return seq

    def _tails(
        self, records: list[Record], slots: dict[tuple[str, ...], list], n_finite: dict[int, int]
    ) -> dict[int, tuple[list, list, list]]:
        """The last `tail` finite (step, time, value) of each series with finite values, oldest
        first, read from the end of the records (so the hot loop keeps nothing per point)."""
        tail = self.tail
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

    def _warn(self, error: EngineError) -> None:
        # one warning per outage, whoever retries (thread, init, finish); its end is said too
        if self._warned:
            return
        self._warned = True
        cause = str(error.__cause__ or error).strip()
        log.warning(
            "cannot write to the database %s (%s); training goes on: runs and logged points are kept in memory "
            "(up to ENGINE_BUFFER_MAX_POINTS points) and stored as soon as it answers",
            self.where,
            cause.splitlines()[0] if cause else type(error).__name__,
        )

    def _recovered(self) -> None:
        if self._warned:
            log.warning(
                "the database %s answers again: buffered runs and points are being stored", self.where
            )
        self._warned = False
        self.last_error = None

    # -- the background thread ----------------------------------------------------------
    def _loop(self) -> None:
        failures = 0
        while True:
            # the connection closes when unused for a while (wake up in time to close it)
            idle = self._transport.close_if_idle()
            with self._lock:
                if failures:
                    self._wake.wait_for(
                        lambda: self._stopping, timeout=_jitter(min(BACKOFF_START * 2**failures, BACKOFF_MAX))
                    )
                else:
                    self._wake.wait_for(
                        lambda: self._stopping or self._queued >= self.flush_points or self._blocked,
                        timeout=self.interval if idle is None else min(self.interval, idle),
                    )
                if self._stopping:
                    return
                if not self._queued and not self._pending:
                    continue
            try:
                self.flush_once()
                failures = 0
            except EngineError as exc:
                failures += 1
                self._warn(exc)
            except Exception:  # never let the writer die: runs would block forever
                failures += 1
                log.exception("unexpected error while storing logged points; retrying")


class _Series:
    """The series a flush touched, as the parameters of ONE upsert_series statement: one
    element per series in key_ids/run_pks/n_new/lens, and their tails laid end to end."""

    __slots__ = ("key_ids", "lens", "n_new", "run_pks", "steps", "times", "values")

    def __init__(self) -> None:
        self.key_ids: list[int] = []
        self.run_pks: list[int] = []
        self.n_new: list[int] = []
        self.lens: list[int] = []
        self.steps: list[int] = []
        self.times: list[datetime] = []
        self.values: list[float] = []

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
            "times": TimestamptzArray.of(self.times),
            "values": Float8Array.of(self.values),
            "tail": tail,
            "seq_bound": seq_bound,
        }


def _jitter(delay: float) -> float:
    """Between half and all of `delay`: processes that lost the database together (a restart,
    a full server) do not all come back in the same instant."""
    return delay * random.uniform(0.5, 1.0)


# -- the tails of upsert_series, as binary arrays --------------------------------------------
# psycopg dumps a list element by element in Python (~1 us each); a flush sends up to three
# arrays of ENGINE_SERIES_TAIL elements per series, so they are packed here with struct.
_ARRAY_HEADER = struct.Struct(">iiiii")  # dimensions, has nulls, element oid, length, lower bound
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
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
        return cls(
            head
            + struct.pack(">" + ("i" + cls.code) * n, *[x for v in cls._elements(values) for x in (8, v)])
        )

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
