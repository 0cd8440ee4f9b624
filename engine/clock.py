"""The one clock. All "now" in the engine goes through `now()`, which tests can freeze."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime

_frozen: datetime | None = None


def now() -> datetime:
    """The current time, timezone-aware (UTC)."""
    return _frozen if _frozen is not None else datetime.now(UTC)


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
