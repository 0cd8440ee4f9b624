"""`run.alert(title, text, level, wait_duration)`: alerts raised by training code.

An alert is a `run_alert` event of its run, written at once (not buffered with the metrics).
As in W&B, an alert whose title the same run raised less than `wait_duration` before is
dropped; the check and the write are serialised per run (`lock_run_alerts`), so two
processes logging to one run cannot both send a repeated title. The HTTP route uses the
same two functions.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

import psycopg

from engine.db import query
from engine.exceptions import NotFound
from engine.names import CONTROL

LEVELS = ("info", "warn", "error")
MAX_TITLE = 256
MAX_TEXT = 10_000
MAX_WAIT = timedelta(days=7)  # longer is surely a mistake (a number of minutes taken for seconds…)


def check(title: Any, text: Any, level: Any, wait_duration: Any) -> dict[str, Any]:
    """The alert's parameters, or TypeError/ValueError naming the argument.

    >>> check("loss is NaN", "", "WARN", 300)["level"]
    'warn'
    """
    if not isinstance(title, str):
        raise TypeError(f"alert title must be a string, not {type(title).__name__}")
    if not 1 <= len(title) <= MAX_TITLE or CONTROL.search(title):
        raise ValueError(f"alert title must be 1-{MAX_TITLE} characters without control characters")
    if not isinstance(text, str):
        raise TypeError(f"alert text must be a string, not {type(text).__name__}")
    if len(text) > MAX_TEXT or "\x00" in text:
        raise ValueError(f"alert text must be at most {MAX_TEXT} characters, without NUL")
    name = getattr(level, "value", level)  # W&B's AlertLevel enum carries its name as value
    if not isinstance(name, str) or name.lower() not in LEVELS:
        raise ValueError(f"alert level must be one of {', '.join(LEVELS)}, not {level!r}")
    if isinstance(wait_duration, timedelta):
        wait = wait_duration
    elif isinstance(wait_duration, (int, float)) and not isinstance(wait_duration, bool):
        if not math.isfinite(wait_duration):
            raise ValueError("alert wait_duration must be a finite number of seconds")
        wait = timedelta(seconds=wait_duration)
    else:
        raise TypeError(
            f"alert wait_duration must be seconds or a timedelta, not {type(wait_duration).__name__}"
        )
    if not timedelta(0) <= wait <= MAX_WAIT:
        raise ValueError("alert wait_duration must be between 0 seconds and 7 days")
    return {"title": title, "text": text, "level": name.lower(), "wait": wait}


def raise_alert(
    conn: psycopg.Connection,
    run_pk: int | None,
    *,
    title: str,
    text: str,
    level: str,
    wait: timedelta,
    author: str | None,
    at: datetime,
) -> bool:
    """Write the alert (checked by `check`) in the caller's transaction. False: dropped,
    the run raised the same title less than `wait` before."""
    if run_pk is None or conn.execute(query("lock_run_alerts"), {"run_pk": run_pk}).fetchone() is None:
        raise NotFound(f"run {run_pk} does not exist")
    row = conn.execute(
        query("insert_run_alert"),
        {
            "run_pk": run_pk,
            "title": title,
            "text": text,
            "level": level,
            "wait": wait,
            "wait_seconds": wait.total_seconds(),
            "author": author,
            "at": at,
        },
    ).fetchone()
    return row is not None
