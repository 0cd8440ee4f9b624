"""The one clock. All "now" in the engine goes through `now()`, which tests can freeze."""

from __future__ import annotations

import contextlib
import time as _time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta

_frozen: datetime | None = None
_ahead: dict[str, timedelta] = {}

# PostgreSQL stores a timestamptz as whole microseconds since 2000-01-01 UTC.
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_PG_EPOCH_NS = round(_PG_EPOCH.timestamp()) * 1_000_000_000
_MICROSECOND = timedelta(microseconds=1)

# The API's times as numbers are microseconds since the Unix epoch (what clients have at hand),
# within datetime's years 1 to 9999 like the ISO 8601 times beside them.
UNIX_MICROS_MIN = -62_135_596_800_000_000
UNIX_MICROS_MAX = 253_402_300_799_999_999
_PG_EPOCH_UNIX_MICROS = _PG_EPOCH_NS // 1000


def now() -> datetime:
    """The current time, timezone-aware (UTC)."""
    return _frozen if _frozen is not None else datetime.now(UTC)


def now_micros() -> int:
    """`now()` as PostgreSQL stores it (`to_micros`). The SDK keeps the times of logged points
    so: a datetime made for every point was a large share of a `run.log` call."""
    if _frozen is not None:
        return to_micros(_frozen)
    return (_time.time_ns() - _PG_EPOCH_NS) // 1000  # floored, as datetime.now() is


def to_micros(at: datetime) -> int:
    """A timezone-aware datetime as PostgreSQL stores it: whole microseconds since 2000-01-01 UTC."""
    return (at - _PG_EPOCH) // _MICROSECOND


def from_unix_micros(unix_micros: int) -> int:
    """Microseconds since the Unix epoch as `to_micros`' number."""
    return unix_micros - _PG_EPOCH_UNIX_MICROS


def to_unix_micros(micros: int) -> int:
    """`to_micros`' number as microseconds since the Unix epoch."""
    return micros + _PG_EPOCH_UNIX_MICROS


def from_micros(micros: int) -> datetime:
    """The datetime (UTC) of `to_micros`' number."""
    return _PG_EPOCH + timedelta(microseconds=micros)


def frozen_at() -> datetime | None:
    """The frozen time, or None: for queries that use the database's clock unless a test froze
    the engine's."""
    return _frozen


@contextlib.contextmanager
def frozen(at: datetime) -> Iterator[None]:
    """Freeze `now()` at `at` inside the block (tests)."""
    global _frozen
    if at.tzinfo is None:
        raise ValueError("frozen() needs a timezone-aware datetime")
    previous, _frozen = _frozen, at
    try:
        yield
    finally:
        _frozen = previous


def ahead_for(automation: str) -> timedelta:
    """How far past the database's clock the time-driven checks of `automation` (stall rules)
    look: zero, except inside `skipped_ahead`."""
    return _ahead.get(automation, timedelta(0))


@contextlib.contextmanager
def skipped_ahead(by: Mapping[str, timedelta]) -> Iterator[None]:
    """Inside the block, the stall checks of the named automations (name -> how far) run as
    if that much more time had passed: `engine demo` shows a 30-minute stall in seconds. Only
    those automations: every other rule, and every stored time, stays on the real clock."""
    previous = dict(_ahead)
    _ahead.update(by)
    try:
        yield
    finally:
        _ahead.clear()
        _ahead.update(previous)
