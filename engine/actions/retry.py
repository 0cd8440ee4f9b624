"""When a failed delivery is tried again.

Retries are durable (the next time is a column of `deliveries`, so they survive a restart),
which is why this is not a retry library wrapped around the call: a library such as tenacity
sleeps in-process, and a process may die between two attempts.
"""

from __future__ import annotations

import email.utils
import random
from datetime import datetime, timezone

BACKOFF_CAP_SECONDS = 300.0
# A receiver may ask for a pause, but not park a delivery for days.
RETRY_AFTER_CAP_SECONDS = 3600.0


def backoff(attempt: int, base: float, rng: random.Random | None = None) -> float:
    """Delay after failed attempt number `attempt` (1-based): base·2^(n-1), capped at 5 min,
    with "equal jitter" (between half and all of it) so that deliveries failing together
    do not come back together."""
    delay = min(BACKOFF_CAP_SECONDS, base * 2 ** max(0, attempt - 1))
    return delay / 2 + (rng or random).uniform(0, delay / 2)


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds asked for by a `Retry-After` header (delta-seconds or an HTTP date), or None."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - now).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


def next_delay(attempt: int, base: float, retry_after: float | None, rng: random.Random | None = None) -> float:
    """Backoff, but never sooner than the receiver's Retry-After (itself capped at an hour)."""
    delay = backoff(attempt, base, rng)
    if retry_after is not None:
        delay = max(delay, min(retry_after, RETRY_AFTER_CAP_SECONDS))
    return delay


def is_retryable_status(status: int) -> bool:
    """SPEC section 3: 408, 429 and 5xx are retried; any other non-2xx answer is final."""
    return status in (408, 429) or 500 <= status <= 599
