"""The dispatcher: takes due deliveries from the outbox, sends them, records each attempt.

One delivery goes through three short steps, none of which holds a transaction open while
a request is in flight:

1. **claim** (`delivery_claim_due`, one statement): due rows are locked with
   `FOR UPDATE SKIP LOCKED` (so several dispatchers never take the same one), set to
   'sending' with a lease, and their attempt counter is increased. Due retries come first,
   each as soon as its backoff is over, then the others in the order they became due. At
   most CLAIMED_PER_WORKER deliveries per worker are claimed and not yet sent: the one it
   sends and the next ones (claimed ahead, so that a worker goes on to its next delivery at
   once while the outcome of the last one commits). A claim that waited longer than half the
   lease margin before its send starts has its lease renewed first (fenced like an outcome:
   one taken over meanwhile is not sent), so a lease always covers the send. The template
   variables of the claimed triggers are read right after, in one query for the whole claim.
2. **send** (`send.send_action`) by a worker: `Settings.delivery_workers` threads, each taking
   the next claimed delivery as soon as its last one is sent, so an endpoint that hangs holds
   one worker until its timeout, never the others.
3. **record**, in one statement (`delivery_record_outcomes`): the `delivery_attempts` row
   and the new status (succeeded, failed, or pending again at the backoff time). One writer
   thread writes the outcomes the workers queued, each batch in one statement (a group
   commit): the service has few database connections, so a round trip per delivery would
   bound the throughput, and a worker never waits for a commit. In the service, the same
   transaction claims the next deliveries for the places these outcomes freed. A delivery is
   done (`run_once(wait=True)` returns, `stop()` waits for it) once its outcome is committed.

If the process dies between 1 and 3, the lease expires and the delivery is claimed again
and sent with the same id (X-Automation-Delivery): a crash can repeat a delivery, never
lose it. The attempt counter is the claim's fencing token: an old claimant whose lease was
taken over keeps its attempt row but cannot overwrite the newer claimant's status.

In `engine serve`, `start()` runs a thread that sleeps until the next delivery is due (at most
POLL_SECONDS) or until `wake()` is called — the evaluator calls it after committing new
triggers, so they leave without waiting for a tick.
Anywhere else (tests, a subprocess, the CLI), `run_once()` does one claim-send-record round.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import logging
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from engine import clock, db
from engine.actions import flow
from engine.actions.context import build_contexts
from engine.actions.http import MAX_REDIRECTS, Attempt
from engine.actions.retry import next_delay
from engine.actions.send import send_action
from engine.actions.webhook import DEFAULT_TIMEOUT
from engine.exceptions import DatabaseError, DatabaseUnavailable, EngineError
from engine.settings import Settings

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0  # the wake thread looks for due deliveries at least this often
SHARE = "deliveries"  # the dispatcher's share of the process's pool (db.Database)
CLOSE_CHECK_SECONDS = (
    0.1  # a digest window still due (another service closing it) is looked at again after this
)
# Claims in flight per worker: a busy outbox claims once per group commit, so a worker needs
# deliveries for its sends until a commit that is slow (a busy database) has claimed more;
# with fewer, the workers went idle during the slow commits.
CLAIMED_PER_WORKER = 8
# A worker loop with nothing to send waits this long for the next claim before it ends: a busy
# outbox hands its loops new deliveries without starting a thread task for each lull.
LINGER_SECONDS = 1.0


@dataclass(frozen=True)
class Claim:
    id: uuid.UUID
    trigger_id: int
    automation_id: int
    action_type: str
    action: dict[str, Any]
    attempt: int  # this attempt's number, and the claim's fencing token
    max_attempts: int
    reclaimed: bool  # taken from an expired lease
    lease_seconds: float = 0.0  # the lease the claim gave it
    claimed_at: float = field(default_factory=time.monotonic)  # when (monotonic)
    # the trigger's template variables, read with the claim; None: the trigger is gone
    context: dict[str, str] | None = None
    context_error: str | None = None  # they could not be read (the attempt fails, retryably)
    action_text: str | None = None  # `action` as stored (JSON text): the key of its parsed model


@dataclass
class _Outcome:
    """One attempt's outcome, waiting to be written with the others (see `_write`)."""

    claim: Claim
    row: dict[str, Any]  # one element of delivery_record_outcomes' JSON array
    done: concurrent.futures.Future[None]  # the claim's: set once the outcome is written (or lost)
    error: str | None = None  # the attempt's error as recorded (for the log line)


@dataclass
class _Job:
    """A claimed delivery waiting for a worker, and its completion."""

    claim: Claim
    done: concurrent.futures.Future[None] = field(default_factory=concurrent.futures.Future)


class Dispatcher:
    """Delivers the outbox. `Dispatcher(url, settings).run_once()` works in any process.

    Its connections are the `deliveries` share of `database` (the service's pool, shared by
    the workers: ENGINE_DELIVERY_CONNECTIONS of them); without one, it has a pool of its own,
    closed by `stop()`.
    """

    def __init__(self, url: str | None, settings: Settings, *, database: db.Database | None = None):
        self.settings = settings
        self._owns_database = database is None
        self.database = database or db.Database(
            url, settings=settings, shares={SHARE: settings.delivery_connections}
        )
        self._outage: str | None = None  # the database error being reported, if any
        # Claimed deliveries not yet sent (see _reserve), sent by delivery_workers loops.
        self._capacity = CLAIMED_PER_WORKER * settings.delivery_workers
        self._workers = settings.delivery_workers
        # a thread per worker loop, and one for the writer of outcomes
        self._executor = concurrent.futures.ThreadPoolExecutor(
            self._workers + 1, thread_name_prefix="deliver"
        )
        self._lock = threading.Lock()  # guards claims, _queue, _loops, _idle, _in_flight, _stopped
        self._ready = threading.Condition(self._lock)  # jobs queued, or stopped: for idle loops
        self._queue: collections.deque[_Job] = collections.deque()  # claimed, not yet started
        self._loops = 0  # worker loops running
        self._idle = 0  # of them, waiting for a job (see LINGER_SECONDS)
        self._in_flight = 0  # places counted: claimed (or being claimed), outcome not yet queued
        self._futures: set[concurrent.futures.Future[None]] = set()  # claimed, outcome not yet written
        self._stopped = False
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._rng = random.Random()
        self._outcomes: list[_Outcome] = []  # finished attempts waiting for the writer
        self._outcomes_lock = threading.Lock()
        self._writing = False  # the writer runs (it takes every outcome queued until none is left)
        self._close_at = float("-inf")  # (monotonic) when a digest window may next be due

    # -- one round -------------------------------------------------------------------------
    def run_once(self, limit: int = 100, *, wait: bool = True, only: uuid.UUID | str | None = None) -> int:
        """Claim up to `limit` due deliveries (no more than there is room for, see `_reserve`)
        and send them.

        With `wait` (the default), return once they are all recorded; otherwise return at
        once (the service). `only` restricts the claim to one delivery id. Returns how many
        deliveries were claimed.
        """
        wanted = self._reserve(limit)
        if not wanted:
            return 0
        claims: list[Claim] = []
        try:
            claims = self._claim(wanted, only)
        finally:
            futures = self._start(claims, wanted)
        if wait:
            concurrent.futures.wait(futures)
        return len(claims)

    def _reserve(self, limit: int) -> int:
        """Count up to `limit` free places in flight before claiming for them, so that claims
        made at the same time never exceed the places: CLAIMED_PER_WORKER per worker, the
        delivery it sends and the next ones (claimed ahead)."""
        with self._lock:
            free = min(limit, self._capacity - self._in_flight)
            if self._stopped or free <= 0:
                return 0
            self._in_flight += free
            return free

    def _start(self, claims: list[Claim], reserved: int) -> list[concurrent.futures.Future[None]]:
        """Queue claimed deliveries for the workers (starting the loops that are missing);
        gives back the places `_reserve` counted for no claim."""
        with self._lock:
            if self._stopped and claims:  # claimed as the dispatcher stopped: as if in flight at stop
                log.warning(
                    "dispatcher: %d deliveries claimed while stopping; they will be sent again", len(claims)
                )
                claims = []
            self._in_flight -= reserved - len(claims)
            jobs = [_Job(claim) for claim in claims]
            self._queue.extend(jobs)
            futures = [job.done for job in jobs]
            self._futures.update(futures)
            self._ready.notify(min(self._idle, len(jobs)))
            loops = max(0, min(self._workers - self._loops, len(self._queue) - self._idle))
            self._loops += loops
        for future in futures:  # outside the lock: a future already done calls back at once
            future.add_done_callback(self._forget)
        for _ in range(loops):
            self._executor.submit(self._work)
        return futures

    def _forget(self, future: concurrent.futures.Future[None]) -> None:
        with self._lock:
            self._futures.discard(future)

    def wake(self) -> None:
        """Look for due deliveries now (call after committing new triggers)."""
        self._wake.set()

    # -- service ---------------------------------------------------------------------------
    def start(self) -> None:
        """Run inside `engine serve`: the wake thread.

        Does not need the database yet: while it is unreachable, the thread retries quietly.
        """
        self._thread = threading.Thread(target=self._wake_loop, name="dispatch-wake", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop claiming, let deliveries in flight finish and be recorded, close connections.

        `timeout` bounds the wait for deliveries in flight (None: as long as their own
        timeouts); one still running then is not recorded, and is sent again, with the same
        id, by the next service once its lease expires. Final: no restart after stop().
        """
        with self._lock:
            self._stopped = True
            self._ready.notify_all()  # idle worker loops end
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            pending = set(self._futures)
        _, unfinished = concurrent.futures.wait(pending, timeout=timeout)
        if unfinished:
            log.warning(
                "dispatcher: %d deliveries still in flight at stop; they will be sent again", len(unfinished)
            )
            with self._lock:  # those not started yet are not (sent again by the next service as well)
                dropped, self._queue = list(self._queue), collections.deque()
            for job in dropped:
                job.done.set_result(None)
        self._executor.shutdown(wait=not unfinished)
        if self._owns_database:
            self.database.close()

    close = stop

    def __enter__(self) -> Dispatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wake_loop(self) -> None:
        while not self._stopped:
            timeout = POLL_SECONDS
            try:
                if time.monotonic() >= self._close_at:
                    self.close_digests()
                self.run_once(wait=False)
                timeout = self._seconds_until_due()
                if self._outage:
                    log.warning("dispatcher: the database is reachable again")
                    self._outage = None
            except DatabaseError as exc:  # down for a while: say it once, keep trying
                if str(exc) != self._outage:
                    log.warning("dispatcher: cannot claim deliveries: %s (retrying)", exc)
                    self._outage = str(exc)
            except Exception:
                log.exception("dispatcher: could not claim deliveries")
            self._wake.wait(timeout)
            self._wake.clear()

    def close_digests(self) -> int:
        """Close the digest windows that are due: each becomes one delivery in the outbox
        (engine/actions/flow.py). Returns how many were closed. Then look again only when the
        next open window closes: a window opened meanwhile closes a digest's minimum length
        after it opened at the earliest, so that bounds the wait."""
        with self._connection() as conn:
            closed = flow.close_due_digests(conn)
            wait = flow.seconds_until_next_close(conn)
        self._close_at = time.monotonic() + max(CLOSE_CHECK_SECONDS, wait)
        return len(closed)

    def _seconds_until_due(self) -> float:
        with self._lock:
            if self._in_flight >= self._capacity:
                return POLL_SECONDS  # a worker finishing wakes us
        due = self.database.value("delivery_next_due", share=SHARE)
        if due is None:
            return POLL_SECONDS
        # Floor: a due row another dispatcher holds locked must not make us spin.
        return min(POLL_SECONDS, max(0.01, (due - clock.now()).total_seconds()))

    # -- steps -----------------------------------------------------------------------------
    def _connection(self) -> contextlib.AbstractContextManager[psycopg.Connection]:
        """A pooled autocommit connection of the deliveries' share, errors translated."""
        return self.database.connection(SHARE)

    def _claim(self, limit: int, only: uuid.UUID | str | None) -> list[Claim]:
        """Claim up to `limit` due deliveries and read their triggers' template variables."""
        with self._connection() as conn:
            rows = db.rows(conn, "delivery_claim_due", self._claim_params(limit, only))
            return self._claims(conn, rows)

    def _claim_params(self, limit: int, only: uuid.UUID | str | None) -> dict[str, Any]:
        return {
            "now": clock.now(),
            "limit": limit,
            "only_id": str(only) if only else None,
            "lease_margin": self.settings.delivery_lease_margin,
            "lease_hops": float(MAX_REDIRECTS + 1),
            "default_timeout": DEFAULT_TIMEOUT,
        }

    def _claims(self, conn: psycopg.Connection, rows: list[dict[str, Any]]) -> list[Claim]:
        """Claims from `delivery_claim_due` rows, with their triggers' template variables."""
        contexts: dict[int, dict[str, str]] = {}
        digests: dict[uuid.UUID, dict[str, str]] = {}  # a digest's: by delivery id
        context_error = None
        if rows:
            try:
                contexts = build_contexts(conn, [r["trigger_id"] for r in rows], self.settings)
                digests = flow.digest_contexts(conn, rows, contexts, self.settings)
            except EngineError as exc:  # claimed already: each attempt fails with it
                context_error = f"could not read the trigger: {exc}"
        return [
            Claim(
                id=r["id"],
                trigger_id=r["trigger_id"],
                automation_id=r["automation_id"],
                action_type=r["action_type"],
                action=r["action"],
                attempt=r["attempts"],
                max_attempts=r["max_attempts"],
                reclaimed=r["was_status"] == "sending",
                lease_seconds=r["lease_seconds"],
                context=digests.get(r["id"], contexts.get(r["trigger_id"])),
                context_error=context_error,
                action_text=r.get("action_text"),
            )
            for r in rows
        ]

    def _work(self) -> None:
        """A worker: sends the claimed deliveries one after another until none is left for
        LINGER_SECONDS (or the dispatcher stops)."""
        while True:
            with self._lock:
                if not self._queue and not self._stopped:
                    self._idle += 1
                    self._ready.wait(LINGER_SECONDS)
                    self._idle -= 1
                if not self._queue:
                    self._loops -= 1
                    return
                job = self._queue.popleft()
            try:
                self._send(job)
            except BaseException:  # never leave a place counted, nor a waiting run_once
                log.exception(
                    "delivery %s: could not be sent; it will be sent again when its lease expires",
                    job.claim.id,
                )
                if not job.done.done():  # else its place was given back already
                    self._leave()
                    job.done.set_result(None)

    def _leave(self) -> None:
        """Give back a place in flight (its outcome is queued, or there is none to record)."""
        with self._lock:
            self._in_flight -= 1

    def _drop(self, job: _Job) -> None:
        """A claimed delivery that is not sent now (nothing to record)."""
        self._leave()
        job.done.set_result(None)
        self._wake.set()  # its place is free: take the next due delivery

    def _renew(self, claim: Claim) -> bool:
        """A whole lease again for a claim that waited; False when it was taken over (or the
        database cannot say: then it is sent again once its lease expires)."""
        try:
            with self._connection() as conn, db.boundary():
                renewed = conn.execute(
                    db.query("delivery_renew_lease"),
                    {
                        "id": claim.id,
                        "attempt": claim.attempt,
                        "lease_seconds": claim.lease_seconds,
                        "now": clock.now(),
                    },
                ).fetchone()
        except DatabaseError as exc:
            log.warning(
                "delivery %s: its lease could not be renewed (%s); it will be sent again", claim.id, exc
            )
            return False
        if renewed is None:
            log.warning(
                "delivery %s: its lease was taken over while it waited for a worker; not sent", claim.id
            )
        return renewed is not None

    def _send(self, job: _Job) -> None:
        """Send one claimed delivery and queue its outcome for the writer; renews the lease
        first when the claim waited long."""
        claim = job.claim
        waited = time.monotonic() - claim.claimed_at
        if waited > self.settings.delivery_lease_margin / 2 and not self._renew(claim):
            self._drop(job)
            return
        if claim.reclaimed:
            log.warning(
                "delivery %s: its lease expired before an outcome was recorded; sending it again", claim.id
            )
        if claim.context_error is not None:
            attempt = Attempt({}, error=claim.context_error, retryable=True, started_at=clock.now())
        elif claim.context is None:
            self._drop(job)  # the trigger was deleted, and its deliveries with it
            return
        else:
            attempt = send_action(
                str(claim.id), claim.action, claim.context, self.settings, text=claim.action_text
            )
        self._queue_outcome(self._outcome(job, attempt))

    def _outcome(self, job: _Job, attempt: Attempt) -> _Outcome:
        """The row that records `attempt` and the delivery's new status."""
        claim = job.claim
        now = clock.now()
        error, next_at = attempt.error, now
        finished_at: datetime | None = now
        if attempt.succeeded:
            status = "succeeded"
        elif attempt.retryable and claim.attempt < claim.max_attempts:
            status, finished_at = "pending", None
            next_at = now + timedelta(
                seconds=next_delay(
                    claim.attempt, self.settings.retry_base_seconds, attempt.retry_after, self._rng
                )
            )
        else:
            status = "failed"
            if attempt.retryable:
                error = f"{error} (gave up after {claim.attempt} attempts)"
        row = {
            "id": str(claim.id),
            "attempt": claim.attempt,
            "status": status,
            "started_at": (attempt.started_at or now).isoformat(),
            "duration_ms": attempt.duration_ms,
            "http_status": attempt.http_status,
            "response_body": _storable(attempt.response_body),
            "error": _storable(attempt.error),
            "last_error": _storable(error),
            "request": attempt.request,
            "next_attempt_at": next_at.isoformat(),
            "finished_at": finished_at.isoformat() if finished_at else None,
            "updated_at": now.isoformat(),
        }
        return _Outcome(claim, row, job.done, error)

    def _record(self, claim: Claim, attempt: Attempt) -> str:
        """Record one attempt's outcome now, in the calling thread; returns the delivery's new
        status (as computed: a claim taken over meanwhile does not change the row)."""
        outcome = self._outcome(_Job(claim), attempt)
        self._write([outcome])
        return str(outcome.row["status"])

    # -- outcomes, written together ----------------------------------------------------------
    def _queue_outcome(self, outcome: _Outcome) -> None:
        """Hand `outcome` to the writer (started when none runs). Its place is free from here
        on: the worker goes on to its next delivery without waiting for the commit."""
        self._leave()
        with self._outcomes_lock:
            self._outcomes.append(outcome)
            # one writer: commits are what a busy outbox waits for, so fewer and bigger ones
            # beat several at once (measured with two: slower)
            start, self._writing = not self._writing, True
        if start:
            try:
                self._executor.submit(self._write_loop)
            except RuntimeError as exc:  # a straggler after stop(timeout): sent again after its lease
                with self._outcomes_lock:
                    lost, self._outcomes, self._writing = self._outcomes, [], False
                for waiting in lost:
                    self._lost(waiting, exc)

    def _write_loop(self) -> None:
        """The writer: writes the queued outcomes, in batches, until none is left."""
        batch: list[_Outcome] = []
        try:
            while True:
                with self._outcomes_lock:
                    batch, self._outcomes = self._outcomes, []
                    if not batch:
                        self._writing = False
                        return
                self._write(batch)
        except BaseException as exc:  # never leave an outcome unreported, nor the writer marked running
            with self._outcomes_lock:
                batch, self._outcomes = batch + self._outcomes, []
                self._writing = False
            for outcome in batch:
                if not outcome.done.done():
                    self._lost(outcome, exc)
            raise

    def _write(self, batch: list[_Outcome]) -> None:
        """One statement for the batch; reports each outcome and marks it done.

        In the service, the same transaction (one round trip, one commit) also claims the
        next deliveries for every free place (these outcomes' workers gave theirs back when
        they queued them): a busy outbox costs a claim per batch rather than per delivery."""
        free = self._reserve(self._capacity) if self._thread is not None else 0
        started = not free
        refill = False
        try:
            with self._connection() as conn:
                # one round trip: the outcomes and the next claim in one pipelined transaction
                recorded, claimed = conn.cursor(), conn.cursor(row_factory=dict_row)
                with conn.pipeline(), conn.transaction():
                    recorded.execute(
                        db.query("delivery_record_outcomes"),
                        {"outcomes": Jsonb([o.row for o in batch])},
                    )
                    if free:
                        claimed.execute(db.query("delivery_claim_due"), self._claim_params(free, None))
                written = set(recorded.fetchall())
                rows = claimed.fetchall() if free else []
                try:
                    claims = self._claims(conn, rows)
                except Exception:  # sent again once their lease expires
                    log.exception("dispatcher: could not prepare %d claimed deliveries", len(rows))
                    claims = []
                started = True
                refill = len(self._start(claims, free)) == free > 0
        except Exception as exc:
            if not started:
                self._start([], free)  # give the reserved places back
            if len(batch) > 1 and not isinstance(exc, DatabaseUnavailable):
                # something in one outcome: write each alone, so the others are not held by it
                for outcome in batch:
                    self._write([outcome])
                return
            for outcome in batch:
                self._lost(outcome, exc)
            self._wake.set()
            return
        for outcome in batch:
            self._report(outcome, (outcome.claim.id, outcome.claim.attempt) in written)
            outcome.done.set_result(None)
        if not refill:
            self._wake.set()  # places are free: take the next due deliveries

    def _report(self, outcome: _Outcome, updated: bool) -> None:
        claim, status = outcome.claim, outcome.row["status"]
        if not updated:
            log.warning(
                "delivery %s: attempt %d finished after its lease was taken over; kept in the log only",
                claim.id,
                claim.attempt,
            )
        level = logging.INFO if status == "succeeded" else logging.WARNING
        log.log(
            level,
            "delivery %s (%s, attempt %d/%d): %s%s",
            claim.id,
            claim.action_type,
            claim.attempt,
            claim.max_attempts,
            status,
            f" ({outcome.error})" if outcome.error else "",
        )

    def _lost(self, outcome: _Outcome, exc: BaseException) -> None:
        """An outcome that could not be written: the delivery is sent again once its lease
        expires (an outage is expected, and said once per delivery)."""
        claim = outcome.claim
        if isinstance(exc, DatabaseUnavailable):
            log.warning(
                "delivery %s: the outcome of attempt %d could not be recorded (%s); it will be sent again when its "
                "lease expires",
                claim.id,
                claim.attempt,
                exc,
            )
        else:
            log.error(
                "delivery %s: the outcome of attempt %d could not be recorded; it will be sent again when its lease "
                "expires",
                claim.id,
                claim.attempt,
                exc_info=exc,
            )
        outcome.done.set_result(None)


def _storable(text: str | None) -> str | None:
    """PostgreSQL text cannot hold NUL: a receiver answering with binary must not make the
    outcome unrecordable (the delivery would then be re-sent forever)."""
    return text.replace("\x00", "\ufffd") if text else text
