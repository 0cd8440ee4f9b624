"""The dispatcher: takes due deliveries from the outbox, sends them, records each attempt.

One delivery goes through three short steps, none of which holds a transaction open while
a request is in flight:

1. **claim** (`delivery_claim_due`, one statement): due rows are locked with
   `FOR UPDATE SKIP LOCKED` (so several dispatchers never take the same one), set to
   'sending' with a lease, and their attempt counter is increased. Only as many as there are
   idle workers are claimed, so a claimed delivery starts at once and its lease measures the
   send, not a wait in a queue.
2. **send** (`send.send_action`) in a worker thread: `Settings.delivery_workers` of them,
   so an endpoint that hangs holds one worker until its timeout, never the others.
3. **record**, in one transaction: the `delivery_attempts` row and the new status
   (succeeded, failed, or pending again at the backoff time).

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

import concurrent.futures
import contextlib
import logging
import random
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

from engine import clock, db
from engine.actions.context import build_context
from engine.actions.http import MAX_REDIRECTS, Attempt
from engine.actions.retry import next_delay
from engine.actions.send import send_action
from engine.actions.webhook import DEFAULT_TIMEOUT
from engine.exceptions import DatabaseError, DatabaseUnavailable, EngineError, NotFound
from engine.settings import Settings

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0  # the wake thread looks for due deliveries at least this often
CONNECT_TIMEOUT_SECONDS = 10.0  # waiting for a pooled connection longer means the database is down


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


class Dispatcher:
    """Delivers the outbox. `Dispatcher(url, settings).run_once()` works in any process."""

    def __init__(self, url: str, settings: Settings):
        self.url = url
        self.settings = settings
        self._pool = ConnectionPool(
            db.conninfo(url, settings=settings),
            min_size=1,
            max_size=settings.delivery_connections,  # shared by the workers: part of the service's budget
            kwargs={"autocommit": True, "prepare_threshold": None},  # as db.connect: PgBouncer-safe
            open=False,
            check=ConnectionPool.check_connection,
            timeout=CONNECT_TIMEOUT_SECONDS,
            name="dispatcher",
        )
        self._pool_open = False
        self._pool_lock = threading.Lock()
        self._outage: str | None = None  # the database error being reported, if any
        self._executor = concurrent.futures.ThreadPoolExecutor(settings.delivery_workers, thread_name_prefix="deliver")
        self._lock = threading.Lock()  # guards claims, _in_flight, _stopped
        self._in_flight = 0
        self._futures: set[concurrent.futures.Future[None]] = set()
        self._stopped = False
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._rng = random.Random()

    # -- one round -------------------------------------------------------------------------
    def run_once(self, limit: int = 100, *, wait: bool = True, only: uuid.UUID | str | None = None) -> int:
        """Claim up to `limit` due deliveries (no more than idle workers) and send them.

        With `wait` (the default), return once they are all recorded; otherwise return at
        once (the service). `only` restricts the claim to one delivery id. Returns how many
        deliveries were claimed.
        """
        with self._lock:
            free = self.settings.delivery_workers - self._in_flight
            if self._stopped or free <= 0 or limit <= 0:
                return 0
            claims = self._claim(min(limit, free), only)
            self._in_flight += len(claims)
            futures = [self._executor.submit(self._deliver, claim) for claim in claims]
            self._futures.update(futures)
        if wait:
            concurrent.futures.wait(futures)
        return len(claims)

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
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            pending = set(self._futures)
        _, unfinished = concurrent.futures.wait(pending, timeout=timeout)
        if unfinished:
            log.warning("dispatcher: %d deliveries still in flight at stop; they will be sent again", len(unfinished))
        self._executor.shutdown(wait=not unfinished)
        self._pool.close()

    close = stop

    def __enter__(self) -> Dispatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wake_loop(self) -> None:
        while not self._stopped:
            timeout = POLL_SECONDS
            try:
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

    def _seconds_until_due(self) -> float:
        with self._lock:
            if self._in_flight >= self.settings.delivery_workers:
                return POLL_SECONDS  # a worker finishing wakes us
        with self._connection() as conn, db.boundary():
            (due,) = conn.execute(db.query("delivery_next_due")).fetchone() or (None,)
        if due is None:
            return POLL_SECONDS
        # Floor: a due row another dispatcher holds locked must not make us spin.
        return min(POLL_SECONDS, max(0.01, (due - clock.now()).total_seconds()))

    # -- steps -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        """A pooled autocommit connection; DatabaseUnavailable when none comes in time."""
        with self._pool_lock:
            if not self._pool_open:
                self._pool.open(wait=False)  # connects in the background; never fails here
                self._pool_open = True
        try:
            with self._pool.connection() as conn:
                yield conn
        except PoolTimeout as exc:
            raise DatabaseUnavailable(
                f"the dispatcher got no database connection in {CONNECT_TIMEOUT_SECONDS:g} s ({exc})"
            ) from exc

    def _claim(self, limit: int, only: uuid.UUID | str | None) -> list[Claim]:
        params = {
            "now": clock.now(),
            "limit": limit,
            "only_id": str(only) if only else None,
            "lease_margin": self.settings.delivery_lease_margin,
            "lease_hops": float(MAX_REDIRECTS + 1),
            "default_timeout": DEFAULT_TIMEOUT,
        }
        with self._connection() as conn, db.boundary(), conn.cursor(row_factory=dict_row) as cur:
            rows = cur.execute(db.query("delivery_claim_due"), params).fetchall()
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
            )
            for r in rows
        ]

    def _deliver(self, claim: Claim) -> None:
        try:
            if claim.reclaimed:
                log.warning("delivery %s: its lease expired before an outcome was recorded; sending it again", claim.id)
            try:
                with self._connection() as conn:
                    ctx = build_context(conn, claim.trigger_id, self.settings)
            except NotFound:
                return  # the trigger was deleted, and its deliveries with it
            except EngineError as exc:
                attempt = Attempt({}, error=f"could not read the trigger: {exc}", retryable=True, started_at=clock.now())
            else:
                attempt = send_action(str(claim.id), claim.action, ctx, self.settings)
            self._record(claim, attempt)
        except DatabaseUnavailable as exc:  # an outage: expected, and said once per delivery
            log.warning(
                "delivery %s: the outcome of attempt %d could not be recorded (%s); it will be sent again when its "
                "lease expires", claim.id, claim.attempt, exc,
            )
        except Exception:
            log.exception(
                "delivery %s: the outcome of attempt %d could not be recorded; it will be sent again when its lease expires",
                claim.id,
                claim.attempt,
            )
        finally:
            with self._lock:
                self._in_flight -= 1
                self._futures = {f for f in self._futures if not f.done()}
            self._wake.set()  # a worker is free: take the next due delivery

    def _record(self, claim: Claim, attempt: Attempt) -> str:
        now = clock.now()
        error, next_at, finished_at = attempt.error, now, now
        if attempt.succeeded:
            status = "succeeded"
        elif attempt.retryable and claim.attempt < claim.max_attempts:
            status, finished_at = "pending", None
            next_at = now + timedelta(
                seconds=next_delay(claim.attempt, self.settings.retry_base_seconds, attempt.retry_after, self._rng)
            )
        else:
            status = "failed"
            if attempt.retryable:
                error = f"{error} (gave up after {claim.attempt} attempts)"
        with self._connection() as conn, db.boundary(), conn.transaction():
            conn.execute(
                db.query("delivery_insert_attempt"),
                {
                    "delivery_id": claim.id,
                    "attempt": claim.attempt,
                    "started_at": attempt.started_at or now,
                    "duration_ms": attempt.duration_ms,
                    "http_status": attempt.http_status,
                    "response_body": _storable(attempt.response_body),
                    "error": _storable(attempt.error),
                    "request": Jsonb(attempt.request),
                },
            )
            updated = conn.execute(
                db.query("delivery_record_outcome"),
                {
                    "id": claim.id,
                    "attempt": claim.attempt,
                    "status": status,
                    "http_status": attempt.http_status,
                    "error": _storable(error),
                    "next_attempt_at": next_at,
                    "finished_at": finished_at,
                    "now": now,
                },
            ).rowcount
        if not updated:
            log.warning("delivery %s: attempt %d finished after its lease was taken over; kept in the log only", claim.id, claim.attempt)
        level = logging.INFO if status == "succeeded" else logging.WARNING
        log.log(
            level,
            "delivery %s (%s, attempt %d/%d): %s%s",
            claim.id,
            claim.action_type,
            claim.attempt,
            claim.max_attempts,
            status,
            f" ({error})" if error else "",
        )
        return status


def _storable(text: str | None) -> str | None:
    """PostgreSQL text cannot hold NUL: a receiver answering with binary must not make the
    outcome unrecordable (the delivery would then be re-sent forever)."""
    return text.replace("\x00", "\ufffd") if text else text
