"""`--since` (engine/since.py): what it reads, and that whatever it suggests reads too."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from engine import clock
from engine.since import SinceError, parse_since

NOW = datetime(2026, 12, 3, 7, 24, 55, tzinfo=UTC)
MIDNIGHT = datetime(2026, 12, 3, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7d", NOW - timedelta(days=7)),
        ("24h", NOW - timedelta(hours=24)),
        ("30m", NOW - timedelta(minutes=30)),
        ("90s", NOW - timedelta(seconds=90)),
        ("2w", NOW - timedelta(weeks=2)),
        ("1.5h", NOW - timedelta(minutes=90)),
        ("1h30m", NOW - timedelta(minutes=90)),
        (" 7D ", NOW - timedelta(days=7)),
        ("today", MIDNIGHT),
        ("Yesterday", MIDNIGHT - timedelta(days=1)),
        ("2026-12-02", datetime(2026, 12, 2, tzinfo=UTC)),  # no zone: UTC
        ("2026-12-02T09:30", datetime(2026, 12, 2, 9, 30, tzinfo=UTC)),
        ("2026-12-02 09:30:15", datetime(2026, 12, 2, 9, 30, 15, tzinfo=UTC)),
        ("2026-12-02t09:30z", datetime(2026, 12, 2, 9, 30, tzinfo=UTC)),
        ("2026-12-02T09:30+01:00", datetime(2026, 12, 2, 8, 30, tzinfo=UTC)),
        ("2026-12-02+00:00", datetime(2026, 12, 2, tzinfo=UTC)),  # what the old error suggested
    ],
)
def test_reads(text, expected):
    with clock.frozen(NOW):
        assert parse_since(text) == expected


def test_today_is_the_utc_day_whatever_the_zone_of_the_clock():
    with clock.frozen(
        datetime(2026, 12, 3, 0, 30, tzinfo=timezone(timedelta(hours=2)))
    ):  # 2026-12-02 22:30 UTC
        assert parse_since("today") == datetime(2026, 12, 2, tzinfo=UTC)


UNIT = "write a duration as a number and one letter: s, m, h, d or w"


@pytest.mark.parametrize(
    ("text", "reason", "first"),
    [
        ("7 days", UNIT, "7d"),
        ("3 hours ago", UNIT, "3h"),
        ("45 min", UNIT, "45m"),
        ("7", UNIT, "7d"),
        ("1d2", "not a duration, a day name or an ISO date/time", "7d"),
        ("2026-13-02", "month must be in 1..12", "7d"),
        ("9999999d", "is too long (at most 3650d)", "7d"),
        ("last week", "not a duration, a day name or an ISO date/time", "7d"),
    ],
)
def test_errors_say_why_and_suggest_what_was_meant_first(text, reason, first):
    with clock.frozen(NOW), pytest.raises(SinceError) as caught:
        parse_since(text)
    error = caught.value
    assert str(error).startswith(f"cannot read {text!r}: {reason}; try one of: ")
    assert str(error).endswith(", ".join(error.suggestions))
    assert error.suggestions[0] == first
    assert "2026-12-03T09:30+01:00" in error.suggestions


def _assert_suggestions_read(text: str) -> None:
    with clock.frozen(NOW):
        try:
            parse_since(text)
        except SinceError as error:
            assert error.suggestions
            for suggestion in error.suggestions:
                assert parse_since(suggestion).tzinfo is not None, suggestion


@given(st.text(max_size=40))
@example("2026-12-02")
@example("99999999999d")
@example("999999999999 days")
@example("1e9d")
@example("nan d")
def test_anything_reads_or_every_suggestion_reads(text):
    _assert_suggestions_read(text)


# Text shaped like what people type: numbers, unit words, dates, separators, zones.
_pieces = st.sampled_from(
    [
        "7",
        "24",
        "1.5",
        "2026",
        "-",
        "12",
        "02",
        "13",
        "T",
        "t",
        " ",
        ":",
        "30",
        "+01:00",
        "Z",
        "d",
        "h",
        "m",
        "s",
        "w",
        "days",
        "hours",
        "min",
        "ago",
        "today",
        "yesterday",
        "/",
        ".",
    ]
)


@given(st.lists(_pieces, max_size=8).map("".join))
def test_typed_looking_text_reads_or_every_suggestion_reads(text):
    _assert_suggestions_read(text)


@given(st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2100, 1, 1)))
def test_a_time_without_a_zone_is_utc(moment):
    assert parse_since(moment.isoformat()) == moment.replace(tzinfo=UTC)
    assert parse_since(moment.date().isoformat()) == datetime.combine(moment.date(), datetime.min.time(), UTC)
