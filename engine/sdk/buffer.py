"""The SDK's write path, transport aside: an in-memory buffer, a background flush thread, retries.

Runs append *records* `(time, step, keys, values)` — one per `run.log` call: the time as
whole microseconds (clock.now_micros), a tuple of keys (the same tuple object while a run logs
the same keys) and a tuple of floats — to their `Stream`. A flush (background thread: on
size, or at most every `flush_interval`; a run's `finish`/`flush`: on demand) takes what is
buffered, at most MAX_BATCH_POINTS points, and hands it to the transport as one `Batch`, which
stores it all or nothing (`Transport.send`; the database one is flush.py: one transaction with
a binary COPY).

Flushes run one at a time (a lock), so batches of a run are sent in logging order. A
transport that sends each run on its own (the HTTP one: a request per run) gets batches of
one run (`runs_per_batch`): the flush lock is then held for one request at a time, so a
run's `flush` sends its own run first and waits behind at most one request of other runs,
not one per run buffered (the thread's pass lets a waiting `flush` go before its next batch). When the transport cannot reach its end the batch is sent again,
as it was (same points, same `seq`: a transport whose answer was lost can have the other end
recognise it), with backoff, before anything logged since; the buffer is bounded by `buffer_max_points`, after which `append` blocks until
there is room instead of dropping anything.

A flush also tells each run of its batch whether an automation asked it to stop (a stop_run
action: `SendResult.stop`); the run raises `RunStopped` from its next `log` or `flush`.

A run may exist before the database has it: when `engine.init` cannot reach the database,
the run's creation (its `Opening`) waits in its stream, the run's points are buffered as
usual, and the first flush that reaches the database creates the run (`Transport.open`)
before it sends any of its points. A resumed run's stored steps are only known then: the
points it logged meanwhile keep the steps they were given (`None` for "the next one") and
are numbered when it opens, as if they had been logged after it.

Nothing here knows what is behind the transport: the same buffer and retries serve any.
"""

from __future__ import annotations

import itertools
import logging
import random
import threading
import time as _time
from collections.abc import Sequence
from typing import NamedTuple, Protocol

from engine.exceptions import EngineError, IngestError
from engine.settings import Settings

log = logging.getLogger(__name__)

# The most points one batch holds (the database transport numbers a batch's points in 20 bits).
MAX_BATCH_POINTS = 1 << 20
BACKOFF_START = 0.1
BACKOFF_MAX = 10.0

# (time as clock.to_micros, step, keys, values)
Record = tuple[int, int, tuple[str, ...], tuple[float, ...]]


class Opening(Protocol):
    """A run's creation (run.py), which the transport carries out (`Transport.open`)."""

    resume: bool  # the run may have stored points: its steps continue after them


class Part(NamedTuple):
    """One stream's share of a batch: its records and system samples, in order, and their points."""

    stream: Stream
    records: list[Record]
    system: list[Record]
    n: int


class Batch(NamedTuple):
    """What one flush sends: the parts, and the final state changes of streams whose last
    points are in it (stream, the change given to `Writer.finish`). `seq` numbers the
    writer's batches; a batch sent again after a failure keeps its parts and its seq."""

    parts: list[Part]
    closing: list[tuple[Stream, object]]
    seq: int = 0


class SendResult(NamedTuple):
    """What the transport answered: for each closing change, (stream, its answer); and for
    each run of the batch with a pending stop request (stop_run), (stream, the automation)."""

    closed: list[tuple[Stream, object]]
    stop: Sequence[tuple[Stream, str]] = ()


class Transport(Protocol):
    """Where batches go (flush.DatabaseTransport). Every method raises EngineError when it
    cannot do its work; `is_transient` says whether trying again later may succeed."""

    where: str  # for messages: "the database x on host:port"
    advice: str  # what to check when points could not be stored, one sentence

    def note_keys(self, keys: list[str]) -> None:
        """Keys seen for the first time, noted before any record with them is appended."""

    def open(self, opening: Opening) -> tuple[int, int, int]:
        """Create a run: (its pk, last stored step, last stored system sample), -1 for none."""

    def send(self, batch: Batch) -> SendResult:
        """Store the batch, all of it or nothing."""

    def is_transient(self, error: EngineError) -> bool: ...

    def close_if_idle(self) -> float | None:
        """Release what has been unused for long; the seconds until it should be called again
        (None: nothing to release)."""


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
        "stop",
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
        # The run's final state change, to send with the stream's last points (see `finish`),
        # and what the transport answered once it did.
        self.closing: object | None = None
        self.closed: object | None = None
        # The automation that asked the run to stop, once a flush learned it (never unset).
        self.stop: str | None = None

    @property
    def unstored(self) -> int:
        return self.queued + self.inflight


class Writer:
    """Buffer + flush thread for every run of one process and transport (see module docstring)."""

    def __init__(self, transport: Transport, settings: Settings, *, runs_per_batch: int | None = None):
        self._transport = transport
        self.runs_per_batch = runs_per_batch  # None: every buffered run in one batch
        self.interval = settings.flush_interval
        self.flush_points = settings.flush_max_points
        self.buffer_points = settings.buffer_max_points

        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # writer thread: something to flush
        # writer thread, between two batches of a pass: no run's flush waits any more. Apart
        # from _wake so that every run's flush does not wake the idle thread for nothing.
        self._turn = threading.Condition(self._lock)
        self._room = threading.Condition(self._lock)  # appenders: the buffer has room again
        self._flush_lock = threading.Lock()  # one flush at a time (seq order, one connection)
        self._dirty: dict[Stream, None] = {}  # streams with queued points (or to open), in order
        self._pending: dict[Stream, None] = {}  # streams whose run the database has not created yet
        self._queued = 0
        self._inflight = 0
        self._retry: list[Part] = []  # the batch whose send failed: sent again before anything else
        self._batches = 0  # seq of the last batch made
        self._blocked = 0  # appenders waiting for room
        self._urgent = 0  # runs' flushes waiting for the flush lock: the thread's pass lets them in first
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.last_error: EngineError | None = None  # of the last flush; None once one succeeds
        self._warned = False  # about the current outage (one warning per outage)
        self.where = transport.where

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
            self._turn.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    # -- appending (hot path) ---------------------------------------------------------
    def note_keys(self, keys: list[str]) -> None:
        """Keys a run validated for the first time (before it appends records with them)."""
        self._transport.note_keys(keys)

    def append(
        self,
        stream: Stream,
        time: int,
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

    def extend(self, stream: Stream, records: list[Record]) -> bool:
        """Buffer many records at once when `append` would keep each one as it is: every
        step given and none below the one before it (nor the stream's), and room for them
        all. Returns False, having buffered nothing, otherwise: the caller appends them one
        by one. (engine web stores a request's rows so: one check and one lock, not one
        `append` per row.)"""
        n = sum(len(r[3]) for r in records)
        steps = [r[1] for r in records]
        with self._lock:
            if (
                not records
                or stream.opening is not None
                or stream.failed is not None
                or None in steps
                or steps[0] < stream.step
                or not all(a <= b for a, b in itertools.pairwise(steps))
                or self._queued + self._inflight + n > self.buffer_points
            ):
                return False
            stream.step = steps[-1]
            stream.records.extend(records)
            if not stream.queued:
                self._dirty[stream] = None
            stream.queued += n
            self._queued += n
            if self._queued >= self.flush_points:
                self._wake.notify()
        return True

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
        self, stream: Stream, time: int, keys: tuple[str, ...], values: tuple[float, ...]
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
        run_pk, step, system_step = self._transport.open(stream.opening)
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
        return error is not None and self._transport.is_transient(error)

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
                self.flush_once(stream)
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
                    f"{left} points {what}were not stored: {str(error).rstrip('.')}. {self._transport.advice}"
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
        self, stream: Stream, closing: object, *, timeout: float | None = None
    ) -> tuple[bool, object | None]:
        """Store the stream's points and send `closing` (the run's final state change, which
        the transport understands) with the last of them, so that they are stored together.

        Returns (True, what the transport answered to it), or (False, None) when no flush
        could carry it (nothing was buffered): the caller makes the change on its own. Raises
        like `flush`.
        """
        with self._lock:
            if stream.failed is not None:
                raise self._lost(stream)
            if not self._left(stream):
                return False, None
            stream.closing, stream.closed = closing, None
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
            for part in [p for p in self._retry if p.stream is stream]:
                self._retry.remove(part)
                dropped += part.n
                stream.inflight -= part.n
                self._inflight -= part.n
            stream.records, stream.system = [], []
            self._dirty.pop(stream, None)
            self._pending.pop(stream, None)  # given up: a run created now would never finish
            self._room.notify_all()
        return dropped

    def flush_once(self, first: Stream | None = None) -> int:
        """Take up to MAX_BATCH_POINTS buffered points (of at most `runs_per_batch` runs) and
        send them as one batch; returns how many. With `first` (a run's flush), its points go
        first, and a batch of limited runs holds only them (none buffered: nothing is sent,
        unless a failed batch waits to be sent again)."""
        urgent = first is not None  # a run's flush
        if urgent:
            with self._lock:
                self._urgent += 1
        try:
            self._flush_lock.acquire()
        finally:
            if urgent:
                with self._lock:
                    self._urgent -= 1
                    self._turn.notify_all()  # the thread's pass may go on (after this flush)
        try:
            return self._flush_once(first)
        finally:
            self._flush_lock.release()

    def _flush_once(self, first: Stream | None) -> int:
        try:
            self._open_pending()
        except EngineError as exc:
            self.last_error = exc
            raise
        with self._lock:
            if self._retry:
                parts, seq = self._retry, self._batches
            else:
                parts = self._take(MAX_BATCH_POINTS, first)
                seq = self._batches = self._batches + 1
            # streams whose last points are in this batch carry their closing change
            closing = [
                (p.stream, p.stream.closing)
                for p in parts
                if p.stream.closing is not None and not p.stream.queued
            ]
        if not parts:
            return 0
        try:
            result = self._transport.send(Batch(parts, closing, seq))
        except BaseException as exc:
            with self._lock:
                self._retry = parts
            if isinstance(exc, EngineError):
                self.last_error = exc
            raise
        self._retry = []  # (only flushes and `discard`, under the flush lock, touch it)
        self._recovered()
        with self._lock:
            for stream, answer in result.closed:
                stream.closing, stream.closed = None, answer
            for stream, automation in result.stop:
                if stream.stop is None:
                    stream.stop = automation
            total = 0
            for part in parts:
                part.stream.inflight -= part.n
                total += part.n
            self._inflight -= total
            self._room.notify_all()
        return total

    def _take(self, cap: int, first: Stream | None = None) -> list[Part]:
        batch: list[Part] = []
        taken = 0
        system: list[Record]
        streams = list(self._dirty)
        if first is not None:
            if first in self._dirty:
                streams.remove(first)
                streams.insert(0, first)
            elif self.runs_per_batch is not None:
                return []  # the run's points are stored already: do not send another's for it
        for stream in streams:
            if taken >= cap or len(batch) == self.runs_per_batch:
                break
            if stream.opening is not None:
                continue  # its run first (see _open_pending)
            if taken + stream.queued <= cap:
                records, system, n = stream.records, stream.system, stream.queued
                stream.records, stream.system = [], []
            else:
                records, n = _prefix(stream.records, cap - taken)
                system = []
                if len(records) == len(stream.records):
                    system, m = _prefix(stream.system, cap - taken - n)
                    n += m
                del stream.records[: len(records)]
                del stream.system[: len(system)]
            stream.queued -= n
            stream.inflight += n
            if not stream.queued:
                del self._dirty[stream]
            batch.append(Part(stream, records, system, n))
            taken += n
        self._queued -= taken
        self._inflight += taken
        return batch

    def _warn(self, error: EngineError) -> None:
        # one warning per outage, whoever retries (thread, init, finish); its end is said too
        if self._warned:
            return
        self._warned = True
        cause = str(error.__cause__ or error).strip()
        log.warning(
            "cannot write to %s (%s); training goes on: runs and logged points are kept in memory "
            "(up to ENGINE_BUFFER_MAX_POINTS points) and stored as soon as it answers",
            self.where,
            cause.splitlines()[0] if cause else type(error).__name__,
        )

    def _recovered(self) -> None:
        if self._warned:
            log.warning("%s answers again: buffered runs and points are being stored", self.where)
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
                if not self._queued and not self._pending and not self._retry:
                    continue
                # batches of limited runs: one pass sends every run buffered now, one batch
                # (and one hold of the flush lock) each, oldest first
                batches = 1 if self.runs_per_batch is None else -(-len(self._dirty) // self.runs_per_batch)
            try:
                for _ in range(max(1, batches)):
                    # a lock is not fair: a run's `flush` waiting for it goes before the next batch
                    with self._lock:
                        self._turn.wait_for(lambda: self._stopping or not self._urgent)
                    if self._stopping or not self.flush_once():
                        break
                failures = 0
            except EngineError as exc:
                failures += 1
                self._warn(exc)
            except Exception:  # never let the writer die: runs would block forever
                failures += 1
                log.exception("unexpected error while storing logged points; retrying")


def _jitter(delay: float) -> float:
    """Between half and all of `delay`: processes that lost the database together (a restart,
    a full server) do not all come back in the same instant."""
    return delay * random.uniform(0.5, 1.0)


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
