"""`--since`: a moment written by a person, for `engine history` and `engine rules test`.

Accepted, case aside:

- a duration back from now: `7d`, `24h`, `30m`, `90s`, `2w`, `1.5h`, `1h30m`;
- `today` or `yesterday`: that day's 00:00 UTC;
- an ISO 8601 date or time: `2026-12-02` (00:00 UTC), `2026-12-02T09:30` or
  `2026-12-02 09:30` (UTC when no zone is given), `2026-12-02T09:30+01:00`, `…Z`.

Anything else raises SinceError, whose `suggestions` (also in its message) are inputs this
parser accepts, close to what was written when we can tell (`7 days` → `7d`).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, time, timedelta

from engine import clock
from engine.rules.duration import parse_duration

HELP = (
    "How far back: a duration (7d, 24h, 30m), today, yesterday, or an ISO date or time "
    "(2026-12-02, 2026-12-02T09:30, 2026-12-02T09:30+01:00); without a zone, times are UTC."
)

_UNIT_LETTERS = "smhdw"
# How people also write durations, for the suggestion: "7 days", "3hrs ago", "90 sec".
_WORDY = re.compile(r"(\d{1,12}(?:\.\d{1,9})?)\s*([a-z]+)(?:\s+ago)?")
_UNIT_WORDS = {
    "s": ("s", "sec", "secs", "second", "seconds"),
    "m": ("m", "min", "mins", "minute", "minutes"),
    "h": ("h", "hr", "hrs", "hour", "hours"),
    "d": ("d", "day", "days"),
    "w": ("w", "wk", "wks", "week", "weeks"),
}


class SinceError(ValueError):
    """A `--since` value that cannot be read; `suggestions` are values that can."""

    def __init__(self, text: str, reason: str, suggestions: list[str]):
        self.suggestions = suggestions
        super().__init__(f"cannot read {text!r}: {reason}; try one of: {', '.join(suggestions)}")


def parse_since(text: str) -> datetime:
    """The moment `text` names, timezone-aware.

    >>> parse_since("2026-12-02")
    datetime.datetime(2026, 12, 2, 0, 0, tzinfo=datetime.timezone.utc)
    """
    value, now = text.strip().lower(), clock.now()
    parsed = _parse(value, now)
    if isinstance(parsed, str):
        meant = _meant(value)
        if meant and "too long" not in parsed:
            parsed = "write a duration as a number and one letter: s, m, h, d or w"
        raise SinceError(text, parsed, [s for s in dict.fromkeys(meant + _usual(now)) if _reads(s, now)])
    return parsed


def _parse(value: str, now: datetime) -> datetime | str:
    """The moment, or why `value` (stripped, lower case) names none."""
    if value in ("today", "yesterday"):
        midnight = datetime.combine(now.astimezone(UTC).date(), time(), tzinfo=UTC)
        return midnight - timedelta(days=1 if value == "yesterday" else 0)
    if value[:1].isdigit() and value[-1:] in _UNIT_LETTERS:
        # `1.5h`, `2w`, `1h30m`: written as a rule's cooldown is
        try:
            return now - parse_duration(value)
        except ValueError as exc:
            return str(exc) if "too long" in str(exc) else "not a duration"
    try:
        parsed = datetime.fromisoformat(value.upper())  # 't' and 'z' come lower-cased
    except ValueError as exc:
        return _reason(value, exc)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _reason(value: str, exc: ValueError) -> str:
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}([ t].*)?", value):
        return str(exc)  # a date, wrong somewhere: Python says where (e.g. month must be in 1..12)
    return "not a duration, a day name or an ISO date/time"


def _meant(value: str) -> list[str]:
    """What a duration written another way probably meant: `7 days` -> 7d, `7` -> 7d, 7h."""
    wordy = _WORDY.fullmatch(value)
    if wordy:
        unit = next((u for u, words in _UNIT_WORDS.items() if wordy.group(2) in words), None)
        return [f"{wordy.group(1)}{unit}"] if unit else []
    if re.fullmatch(r"\d{1,12}(\.\d{1,9})?", value):
        return [f"{value}d", f"{value}h"]
    return []


def _usual(now: datetime) -> list[str]:
    day = now.astimezone(UTC).date().isoformat()
    return ["7d", "24h", "today", "yesterday", day, f"{day}T09:30", f"{day}T09:30+01:00"]


def _reads(value: str, now: datetime) -> bool:
    # Only what reads is suggested (`99999999999 days` means a duration too long to be one).
    return not isinstance(_parse(value, now), str)
