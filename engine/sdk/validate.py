"""Checks on what users hand to the SDK, kept pure so that they are unit-tested.

The hot path (`Run.log`) only calls into this module for keys it has not seen before and for
values that are not already a `float`; everything here raises `TypeError`/`ValueError`
naming the offending key, before anything of the call is buffered.
"""

from __future__ import annotations

import json
import numbers
from datetime import datetime
from typing import Any

from engine.names import CONTROL, MAX_KEY_LENGTH, NAME_PART, is_reserved_key


def parse_project(project: str) -> tuple[str, str]:
    """`"acme/vision"` → `("acme", "vision")`; each part 1–128 of letters, digits, `.`, `_`, `-`.

    >>> parse_project("acme/vision")
    ('acme', 'vision')
    >>> parse_project("acme/vision/v2")
    Traceback (most recent call last):
    ValueError: project 'acme/vision/v2' must be 'entity/project', each part 1-128 letters, digits, '.', '_' or '-'
    """
    if not isinstance(project, str):
        raise TypeError(f"project must be a string like 'acme/vision', not {type(project).__name__}")
    parts = project.split("/")
    if len(parts) != 2 or not all(NAME_PART.fullmatch(p) for p in parts):
        raise ValueError(
            f"project {project!r} must be 'entity/project', each part 1-128 letters, digits, '.', '_' or '-'"
        )
    return parts[0], parts[1]


def check_name(what: str, value: str, *, pattern: bool = False) -> str:
    """A run id, alias, tag, collection or registry name: 1–256 characters, no control characters
    (registry names and run ids follow the stricter entity pattern when `pattern` is set)."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string, not {type(value).__name__}")
    if pattern:
        if not NAME_PART.fullmatch(value):
            raise ValueError(f"{what} {value!r} must be 1-128 letters, digits, '.', '_' or '-'")
    elif not 1 <= len(value) <= MAX_KEY_LENGTH or CONTROL.search(value):
        raise ValueError(f"{what} {value!r} must be 1-{MAX_KEY_LENGTH} characters without control characters")
    return value


def check_key(key: Any, *, system: bool = False) -> str:
    """A metric key: a string of 1–256 characters without control characters. Keys under
    `system/` (or `system.`) belong to the system sampler, which passes `system=True`.

    >>> check_key("train/loss")
    'train/loss'
    >>> check_key("system.cpu")
    Traceback (most recent call last):
    ValueError: metric key 'system.cpu': keys starting with 'system/' or 'system.' are reserved for system metrics
    """
    if not isinstance(key, str):
        raise TypeError(f"metric key {key!r} must be a string, not {type(key).__name__}")
    if not 1 <= len(key) <= MAX_KEY_LENGTH:
        raise ValueError(
            f"metric key {key[:40]!r} must be 1-{MAX_KEY_LENGTH} characters long (it has {len(key)})"
        )
    if CONTROL.search(key):
        raise ValueError(f"metric key {key!r} must not contain control characters")
    if not system and is_reserved_key(key):
        raise ValueError(
            f"metric key {key!r}: keys starting with 'system/' or 'system.' are reserved for system metrics"
        )
    return key


def to_float(key: str, value: Any) -> float:
    """A logged value as a float: anything `float()` converts — int, bool (0/1), numpy scalars
    and 0-d arrays, scalar tensors, Decimal, Fraction, numeric text (`"0.5"`) — except arrays
    with dimensions (`np.array([0.5])` is not a scalar; numpy deprecates converting it).
    Otherwise a TypeError naming the key (a ValueError when the number does not fit in a double).

    >>> to_float("acc", True)
    1.0
    """
    if type(value) is float:
        return value
    if getattr(value, "ndim", 0):
        reason = f"an array of shape {getattr(value, 'shape', '?')} is not a single number"
    else:
        try:
            return float(value)
        except OverflowError:
            raise ValueError(f"metric {key!r}: value {_show(value)} is too large for a double") from None
        except TypeError:  # no __float__ (float()'s own words add nothing)
            reason = "float() cannot convert it"
        except Exception as exc:
            reason = f"float() cannot convert it: {exc}" if str(exc) else "float() cannot convert it"
    raise TypeError(
        f"metric {key!r}: value {_show(value)} of type {type(value).__name__} is not a number ({reason})"
    )


def _show(value: Any, limit: int = 60) -> str:
    """A value's repr for a one-line message, cut short (a logged tensor can be huge)."""
    try:
        text = " ".join(repr(value).split())
    except Exception:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_time(time: Any) -> datetime:
    """A point's timestamp: a timezone-aware datetime."""
    if not isinstance(time, datetime):
        raise TypeError(f"time must be a timezone-aware datetime, not {type(time).__name__}")
    if time.tzinfo is None or time.utcoffset() is None:
        raise ValueError(
            f"time {time.isoformat()} is naive: give a timezone-aware datetime (e.g. tzinfo=timezone.utc)"
        )
    return time


def check_step(step: Any) -> int:
    """A step: a non-negative integer (numpy integers accepted; bools and floats refused)."""
    if type(step) is int and step >= 0:  # the common case, without the slow ABC check
        return step
    if isinstance(step, bool) or not isinstance(step, numbers.Integral):
        raise TypeError(f"step must be an integer, not {type(step).__name__}")
    step = int(step)
    if step < 0:
        raise ValueError(f"step must be >= 0 (got {step})")
    return step


def check_json_object(what: str, value: dict[str, Any]) -> dict[str, Any]:
    """A dict that can be stored as JSON (run config, artifact metadata), else TypeError naming `what`."""
    if not isinstance(value, dict):
        raise TypeError(f"{what} must be a dict, not {type(value).__name__}")
    try:
        json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{what} must be JSON-serialisable: {exc}") from None
    return value
