"""A plain-Python reference implementation of SPEC section 2's metric semantics, written
from the SPEC alone (not from the compiler), for tests to compare the engine against."""

from __future__ import annotations

import math
import operator
import statistics
from dataclasses import dataclass
from datetime import datetime, timedelta
from fractions import Fraction

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


def zscore(finite: list[Point], i: int, window: int) -> float | None:
    """z of the value at i against the `window` finite values just before it (population
    standard deviation); None when that window is not full or σ = 0."""
    if i < window:
        return None
    reference = [p.value for p in finite[i - window : i]]
    sigma = statistics.pstdev(reference)
    if sigma == 0:
        return None
    return (finite[i].value - statistics.fmean(reference)) / sigma


def zscore_holds(finite: list[Point], i: int, window: int, threshold: float, direction: str) -> bool:
    """increase: z > threshold; decrease: z < -threshold; any: |z| > threshold. Decided
    exactly (z > t as (v - μ) > t·σ, squared, in fractions), so that a z on the threshold is
    on it, whatever the rounding of σ."""
    if zscore(finite, i, window) is None:
        return False
    reference = [Fraction(p.value) for p in finite[i - window : i]]
    d = Fraction(finite[i].value) - statistics.mean(reference)
    beyond = d * d > Fraction(threshold) ** 2 * statistics.pvariance(reference)
    if direction == "increase":
        return d > 0 and beyond
    if direction == "decrease":
        return d < 0 and beyond
    return beyond


def nonfinite_kind(value: float) -> str | None:
    """`nan`, `inf` or `-inf`; None for a finite value."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return None


def nonfinite_fire_steps(points: list[Point], values: list[str], cooldown: timedelta) -> list[int]:
    """Steps of the values where a non-finite rule fires for one run (every value counts)."""
    fired: list[int] = []
    last: datetime | None = None
    for p in points:
        if nonfinite_kind(p.value) in values and (last is None or p.time >= last + cooldown):
            fired.append(p.step)
            last = p.time
    return fired


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
