"""Durations written like `90s`, `1m`, `24h`, `7d`, `2w`, `1h30m`, `1.5h` (or a number of
seconds): the one parser for a rule's `cooldown` and a command's `--since 7d`.

Terms are a number and a unit, largest unit first (w, d, h, m, s), each at most once;
spaces between them are ignored. Stored as `timedelta`; written back in the short form
(`format_duration`, in days at most), so a rule dumped to JSON loads again unchanged.
"""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer

from engine.rules.base import rule_error

_UNITS = (("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1))  # as written back
_PARSED_UNITS = (604_800, 86_400, 3_600, 60, 1)  # w, d, h, m, s
_NUMBER = r"(\d{1,12}(?:\.\d{1,9})?)"
_DURATION = re.compile("".join(f"(?:{_NUMBER}{unit})?" for unit in "wdhms"))
MAX_DURATION = timedelta(days=3650)


def parse_duration(value: str | int | timedelta) -> timedelta:
    """`"1h30m"` → timedelta(seconds=5400); an int is seconds.

    >>> parse_duration("1h30m") == parse_duration("1.5h") == timedelta(minutes=90)
    True
    >>> parse_duration("2w"), parse_duration(90)
    (datetime.timedelta(days=14), datetime.timedelta(seconds=90))
    >>> parse_duration("30m1h")
    Traceback (most recent call last):
    ValueError: '30m1h' is not a duration: write e.g. 90s, 1m, 24h, 7d or 1h30m
    """
    if isinstance(value, timedelta):
        result = value
    elif isinstance(value, int) and not isinstance(value, bool):
        if abs(value) > MAX_DURATION.total_seconds():
            raise ValueError("is too long (at most 3650d)")
        result = timedelta(seconds=value)
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        match = _DURATION.fullmatch(text)
        if not text or not match:
            shown = value if len(value) <= 40 else value[:37] + "..."  # a message, not an echo
            raise ValueError(f"{shown!r} is not a duration: write e.g. 90s, 1m, 24h, 7d or 1h30m")
        # Exact decimal arithmetic, bounded before timedelta sees it (which would overflow).
        seconds = sum(Decimal(n) * unit for n, unit in zip(match.groups(), _PARSED_UNITS, strict=True) if n)
        if seconds > Decimal(MAX_DURATION.total_seconds()):
            raise ValueError("is too long (at most 3650d)")
        result = timedelta(seconds=float(seconds))
    else:
        raise ValueError("must be a duration such as 90s, 1m, 24h, 7d or 1h30m")
    if result > MAX_DURATION:
        raise ValueError("is too long (at most 3650d)")
    return result


def format_duration(value: timedelta) -> str:
    """timedelta(seconds=5400) → "1h30m"; the inverse of parse_duration (weeks are written as days).

    >>> [format_duration(timedelta(seconds=s)) for s in (5400, 14 * 86_400, 0)]
    ['1h30m', '14d', '0s']
    """
    seconds = int(value.total_seconds())
    if seconds == 0:
        return "0s"
    parts = []
    for letter, unit in _UNITS:
        count, seconds = divmod(seconds, unit)
        if count:
            parts.append(f"{count}{letter}")
    return "".join(parts)


def _cooldown(value: Any) -> timedelta:
    try:
        result = parse_duration(value)
    except ValueError as exc:
        raise rule_error(str(exc)) from None
    if result.microseconds:
        raise rule_error("must be a whole number of seconds")
    if result < MIN_COOLDOWN:
        raise rule_error("must be at least 1m")
    return result


MIN_COOLDOWN = timedelta(minutes=1)
DEFAULT_COOLDOWN = timedelta(hours=24)


def _period(value: Any) -> timedelta:
    try:
        result = parse_duration(value)
    except ValueError as exc:
        raise rule_error(str(exc)) from None
    if result.microseconds:
        raise rule_error("must be a whole number of seconds")
    if result < timedelta(seconds=1):
        raise rule_error("must be at least 1s")
    return result


Cooldown = Annotated[
    timedelta,
    BeforeValidator(_cooldown),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
]

# An action's digest window: like a cooldown, whole seconds and at least 1m.
DigestWindow = Cooldown

# A rate limit's rolling period: whole seconds, at least 1s.
Period = Annotated[
    timedelta,
    BeforeValidator(_period),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
]
