"""Durations written like `90s`, `1m`, `24h`, `7d`, `1h30m` (or a number of seconds).

Stored as `timedelta`; written back in the same short form, so a rule dumped to JSON
loads again unchanged.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer

from engine.rules.base import rule_error

_UNITS = (("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1))
_DURATION = re.compile(r"(?:(\d{1,7})d)?(?:(\d{1,8})h)?(?:(\d{1,9})m)?(?:(\d{1,10})s)?")
MAX_DURATION = timedelta(days=3650)


def parse_duration(value: str | int | timedelta) -> timedelta:
    """`"1h30m"` → timedelta(seconds=5400); an int is seconds.

    >>> parse_duration("1h30m")
    datetime.timedelta(seconds=5400)
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
            raise ValueError(f"{value!r} is not a duration: write e.g. 90s, 1m, 24h, 7d or 1h30m")
        result = timedelta(seconds=sum(int(n) * unit for n, (_, unit) in zip(match.groups(), _UNITS) if n))
    else:
        raise ValueError("must be a duration such as 90s, 1m, 24h, 7d or 1h30m")
    if result > MAX_DURATION:
        raise ValueError("is too long (at most 3650d)")
    return result


def format_duration(value: timedelta) -> str:
    """timedelta(seconds=5400) → "1h30m"; the inverse of parse_duration."""
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

Cooldown = Annotated[
    timedelta,
    BeforeValidator(_cooldown),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
]
