"""A plain-Python reference implementation of SPEC section 2's metric semantics, written
from the SPEC alone (not from the compiler), for tests to compare the engine against."""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from datetime import datetime, timedelta

OPERATORS = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}


@dataclass(frozen=True)
class Point:
    step: int
    time: datetime
    value: float


def aggregate(kind: str, values: list[float]) -> float:
    if kind == "avg":
        return sum(values) / len(values)
    return min(values) if kind == "min" else max(values)


def threshold_holds(
    finite: list[Point], i: int, window: int, aggregation: str, op: str, threshold: float
) -> bool:
    if i + 1 < window:
        return False
    values = [p.value for p in finite[i - window + 1 : i + 1]]
    return OPERATORS[op](aggregate(aggregation, values), threshold)


def change_holds(
    finite: list[Point],
    i: int,
    current: int,
    prior: int,
    aggregation: str,
    change: str,
    direction: str,
    amount: float,
) -> bool:
    if i + 1 < current + prior:
        return False
    cur = aggregate(aggregation, [p.value for p in finite[i - current + 1 : i + 1]])
    pri = aggregate(aggregation, [p.value for p in finite[i - current - prior + 1 : i - current + 1]])
    if change == "absolute":
        d = cur - pri
    else:
        if pri == 0:
            return False
        d = (cur - pri) / abs(pri)
    if direction == "increase":
        return d >= amount
    if direction == "decrease":
        return -d >= amount
    return abs(d) >= amount


def fire_indices(points: list[Point], holds, cooldown: timedelta) -> list[int]:
    """Indices into the *finite* values where the automation fires for one run."""
    finite = [p for p in points if math.isfinite(p.value)]
    fired: list[int] = []
    last: datetime | None = None
    for i, p in enumerate(finite):
        if holds(finite, i) and (last is None or p.time >= last + cooldown):
            fired.append(i)
            last = p.time
    return fired
