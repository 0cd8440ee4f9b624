"""When a failed delivery is tried again.

Retries are durable (the next time is a column of `deliveries`, so they survive a restart),
which is why this is not a retry library wrapped around the call: a library such as tenacity
sleeps in-process, and a process may die between two attempts.
"""

from __future__ import annotations

import email.utils
import random
from datetime import UTC, datetime

# An action's `max_attempts` default, chosen with this schedule (see there).
from engine.rules.actions import DEFAULT_MAX_ATTEMPTS as DEFAULT_MAX_ATTEMPTS

BACKOFF_CAP_SECONDS = 600.0
# A receiver may ask for a pause, but not park a delivery for days.
RETRY_AFTER_CAP_SECONDS = 3600.0
# Each delay is drawn between its nominal value and this much more (a fraction of it).
JITTER = 0.2


def nominal_backoff(attempt: int, base: float) -> float:
    """Delay after failed attempt number `attempt` (1-based), before jitter: base·2^(n-1),
    capped at 10 minutes."""
    return min(BACKOFF_CAP_SECONDS, base * 2.0 ** min(max(0, attempt - 1), 64))


def backoff(attempt: int, base: float, rng: random.Random | None = None) -> float:
    """The nominal delay plus up to 20 % of it, at random, so that deliveries failing together
    do not come back together. Never less than the nominal delay, so the schedule's span is a
    lower bound of the time a delivery keeps trying."""
    return nominal_backoff(attempt, base) * (1 + JITTER * (rng or random).random())


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
            when = when.replace(tzinfo=UTC)
        seconds = (when - now).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


def next_delay(
    attempt: int, base: float, retry_after: float | None, rng: random.Random | None = None
) -> float:
    """Backoff, but never sooner than the receiver's Retry-After (itself capped at an hour)."""
    delay = backoff(attempt, base, rng)
    if retry_after is not None:
        delay = max(delay, min(retry_after, RETRY_AFTER_CAP_SECONDS))
    return delay


def is_retryable_status(status: int) -> bool:
    """408, 429 and 5xx mean "not now" and are retried; any other non-2xx answer would be the
    same next time, so it is final."""
    return status in (408, 429) or 500 <= status <= 599
