"""The clock's microsecond form (how the SDK keeps the times of logged points): PostgreSQL's
own count since 2000-01-01 UTC, the same instant as `now()`, frozen with it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from engine import clock


def test_now_micros_is_now_in_microseconds():
    before = clock.to_micros(clock.now())
    taken = clock.now_micros()
    after = clock.to_micros(clock.now())
    assert before <= taken <= after


def test_now_micros_follows_a_frozen_clock():
    at = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)
    with clock.frozen(at):
        assert clock.from_micros(clock.now_micros()) == at


def test_the_epoch_is_postgresqls():
    assert clock.to_micros(datetime(2000, 1, 1, tzinfo=UTC)) == 0
    assert clock.to_micros(datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)) == -1
    # another time zone: the same instant
    assert clock.to_micros(datetime(2000, 1, 1, 1, tzinfo=timezone(timedelta(hours=1)))) == 0


@given(st.datetimes(timezones=st.just(UTC)))
def test_micros_round_trip_every_datetime(at):
    assert clock.from_micros(clock.to_micros(at)) == at


def test_unix_microseconds_are_the_same_instants_as_postgresqls():
    """The API's numeric times (microseconds since 1970) and the records' (since 2000)."""
    at = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    unix = 1_767_323_045_123_456  # date -d 2026-01-02T03:04:05Z +%s, and the microseconds
    assert clock.from_unix_micros(unix) == clock.to_micros(at)
    assert clock.to_unix_micros(clock.to_micros(at)) == unix
    first, last = (d.replace(tzinfo=UTC) for d in (datetime.min, datetime.max))
    assert clock.to_unix_micros(clock.to_micros(first)) == clock.UNIX_MICROS_MIN
    assert clock.to_unix_micros(clock.to_micros(last)) == clock.UNIX_MICROS_MAX
