"""An `Explanation` in words: the labels both pictures use and the text printed under them
(or alone, for event triggers), and the window bands both pictures draw."""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Sequence
from datetime import datetime

from engine.explain.data import Delivery, Explanation, Point, RunInfo, Window

# Windows longer than this are abbreviated in text (first and last values, and the count).
SHOWN_VALUES = 10


def window_label(window: Window) -> str:
    """`window #3–#7 (steps 2–6)`."""
    first_pos, last_pos = window.first_pos, window.last_pos
    where = f"#{first_pos}" if first_pos == last_pos else f"#{first_pos}–#{last_pos}"
    if window.points:
        first, last = window.points[0].step, window.points[-1].step
        where += f" (step {first})" if first == last else f" (steps {first}–{last})"
    return f"{window.name} {where}"


def run_label(run: RunInfo) -> str:
    """`acme/vision/3f2a9c "sweep-1" (user alice, finished)`."""
    if run.run_id is None:
        return f"run #{run.pk} (deleted)"
    text = f"{run.entity}/{run.project}/{run.run_id}"
    if run.name and run.name != run.run_id:
        text += f' "{run.name}"'
    extra = [f"user {run.user}"] if run.user else []
    extra += [run.state] if run.state else []
    return text + (f" ({', '.join(extra)})" if extra else "")


def delivery_label(delivery: Delivery) -> str:
    """`webhook succeeded after 1 attempt(s), HTTP 200`."""
    if delivery.action_type == "stop_run":  # nothing is sent: the request is stored with the trigger
        return (
            "stop_run: the run was asked to stop"
            if delivery.status == "succeeded"
            else f"stop_run {delivery.status}"
        )
    text = f"{delivery.action_type} {delivery.status} after {delivery.attempts} attempt(s)"
    return text + (f", HTTP {delivery.last_http_status}" if delivery.last_http_status else "")


def aggregate_label(expl: Explanation, window: Window) -> str:
    """`avg of prior window = 0.365768` (`mean of reference window = …` for a z-score)."""
    kind = "mean" if expl.is_zscore else expl.aggregation or "aggregate"
    return f"{kind} of {window.name} = {num(window.aggregate)}"


def band_label(expl: Explanation) -> str:
    """`mean ± 3σ = [0.1, 0.5]` (a z-score's band: a value outside it fires)."""
    low, high = expl.z_band or (None, None)
    return f"mean ± {num(expl.threshold)}σ = [{num(low)}, {num(high)}]"


def _z_test(expl: Explanation) -> str:
    t = num(expl.threshold)
    return {"increase": f"z > {t}", "decrease": f"z < −{t}", "any": f"|z| > {t}"}[expl.direction or "any"]


def headline(expl: Explanation) -> str:
    """The verdict in one line: `avg = 0.72 > 0.6` or `d = -42% (decrease ≥ 25%)`."""
    if not expl.is_metric:
        return expl.condition
    if expl.rule_type == "run_metric_nonfinite":
        return f"value = {nonfinite(expl.value)}"
    if expl.is_zscore:
        return f"z = {num(expl.value)} ({_z_test(expl)})"
    if expl.threshold is not None:
        return f"{expl.aggregation} = {num(expl.value)} {expl.operator} {expl.threshold:g}"
    if expl.change is not None:
        return f"d = {change(expl.value, expl.change)} ({_change_test(expl)})"
    return f"value = {num(expl.value)}"


def lines(expl: Explanation) -> list[str]:
    """The explanation in words (printed under the plot, or alone for event triggers)."""
    out = [
        f"trigger {expl.trigger_id}: automation {expl.automation!r} (version {expl.automation_version}), "
        f"fired {time(expl.fired_at)}",
        f"condition: {expl.condition}",
    ]
    if expl.scope is not None:
        out.append(f"scope: {expl.scope}" + _run_filter(expl))
    if expl.run is not None:
        out.append(f"run: {run_label(expl.run)}")
    if expl.is_metric:
        out += _metric_lines(expl)
    else:
        out += _event_lines(expl)
    if expl.delivery:
        out.append(f"delivery: {delivery_label(expl.delivery)}")
    out += [f"warning: {w}" for w in expl.warnings]
    return out


def _metric_lines(expl: Explanation) -> list[str]:
    if expl.rule_type == "run_metric_nonfinite":
        return [
            f"metric: {expl.metric}, value {nonfinite(expl.value)} at step {expl.step}, value time {time(expl.value_time)}"
            f" ({len(expl.series)} finite values stored)"
        ]
    point = expl.fired_point
    value = f", value {num(point.value)}" if point else ""
    out = [
        f"metric: {expl.metric}, fired at finite value #{expl.position} of {len(expl.series)}: "
        f"step {expl.step}, value time {time(expl.value_time)}{value}"
    ]
    for window in expl.windows:
        # the values as stored now; as recorded if they are gone (see the warnings)
        out.append(f"{window_label(window)}: {values(window.values or window.recorded)}")
    if expl.is_zscore:
        out.append(
            f"mean = {num(expl.current_aggregate)}, σ = {num(expl.prior_aggregate)} (population); {band_label(expl)}"
        )
        out.append(f"z = (value − mean) / σ = {num(expl.value)}; {_z_test(expl)}  → fired")
    elif expl.change is not None:
        cur, prior = expl.current_aggregate, expl.prior_aggregate
        out.append(f"current {expl.aggregation} = {num(cur)}, prior {expl.aggregation} = {num(prior)}")
        formula = "cur − prior" if expl.change == "absolute" else "(cur − prior) / |prior|"
        out.append(f"d = {formula} = {change(expl.value, expl.change)}; {_change_test(expl)}  → fired")
    elif expl.threshold is not None:
        out.append(
            f"{expl.aggregation} of the window = {num(expl.value)} {expl.operator} {expl.threshold:g}  → fired"
        )
    else:
        out.append(f"aggregate = {num(expl.value)}")
    return out


def _event_lines(expl: Explanation) -> list[str]:
    if expl.rule_type == "run_stalled":
        return [
            f"stalled: no metric value for {num(expl.value)} s when it fired; deadline {time(expl.value_time)}"
        ]
    event = expl.event
    if event is None:
        return ["event: no longer stored"]
    d = event.details
    by = f" by {event.author}" if event.author else ""
    out = [f"event #{event.id} ({event.type}) at {time(event.time)}{by}"]
    if event.type == "run_state":
        moved = f"{d.get('from') or '(new run)'} → {d.get('to')}"
        exit_code = d.get("exit_code")
        out.append(f"run state: {moved}" + (f" (exit code {exit_code})" if exit_code is not None else ""))
    if expl.artifact_version:
        out.append(f"artifact version: {expl.artifact_version}")
    if d.get("registry"):
        out.append(
            f"registry: {d['registry']}/{d.get('collection')}"
            + (f" v{d['version_index']}" if d.get("version_index") is not None else "")
        )
    if expl.alias:
        out.append(f"alias: {expl.alias}")
    if expl.tag:
        out.append(f"tag: {expl.tag}")
    if event.type == "artifact_version_created" and d.get("collection_type"):
        out.append(f"collection type: {d['collection_type']}")
    if event.type == "run_alert":
        out.append(
            f"alert: {d.get('title')} ({d.get('level')})" + (f": {d['text']}" if d.get("text") else "")
        )
    if event.type == "artifact_unlinked":
        out.append("aliases it held: " + (", ".join(d.get("aliases") or []) or "none"))
    if event.type in ("collection_tag_added", "collection_tag_removed") and not d.get("registry"):
        out.append(f"collection: {d.get('collection')}")
    out.append(f"matched: {expl.condition}")
    return out


def spans(expl: Explanation) -> list[tuple[Window, tuple[float, float]]]:
    """The windows to draw, each with its x extent (steps, padded by half a step so that
    a one-value window still shows)."""
    pad = _step_pad(expl.series)
    return [(w, (w.steps[0] - pad, w.steps[-1] + pad)) for w in expl.windows if w.points]


# --------------------------------------------------------------------------------------
# formatting
# --------------------------------------------------------------------------------------
def num(value: float | None) -> str:
    return "—" if value is None else f"{value:.6g}"


def nonfinite(value: float | None) -> str:
    """`NaN`, `Infinity` or `-Infinity`, as `${metric_value}` writes them."""
    if value is None or math.isfinite(value):
        return num(value)
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def time(value: datetime | None) -> str:
    return "—" if value is None else value.isoformat(sep=" ", timespec="seconds")


def change(value: float | None, kind: str) -> str:
    if value is None:
        return "—"
    return f"{value * 100:+.4g}%" if kind == "relative" else f"{value:+.6g}"


def _change_test(expl: Explanation) -> str:
    amount = change(expl.amount, expl.change or "absolute").lstrip("+")
    tests = {"increase": f"d ≥ {amount}", "decrease": f"−d ≥ {amount}", "any": f"|d| ≥ {amount}"}
    return tests[expl.direction or "any"]


def values(numbers: Sequence[float]) -> str:
    """`0.5, 0.6, 0.7` or, for long windows, `0.5, 0.6, … 0.9 (50 values)`."""
    if len(numbers) <= SHOWN_VALUES:
        return ", ".join(num(v) for v in numbers)
    half = SHOWN_VALUES // 2
    head = ", ".join(num(v) for v in numbers[:half])
    tail = ", ".join(num(v) for v in numbers[-half:])
    return f"{head}, … {tail} ({len(numbers)} values)"


def _run_filter(expl: Explanation) -> str:
    user, name_regex = expl.run_filter_user, expl.run_filter_name_regex
    if user is None and name_regex is None:
        return ""
    parts = ([f"user = {user}"] if user else []) + ([f"name ~ {name_regex}"] if name_regex else [])
    return "; run filter: " + ", ".join(parts)


def _step_pad(series: Sequence[Point]) -> float:
    """Half the usual gap between steps: a window of one step still gets a visible band."""
    gaps = [b.step - a.step for a, b in itertools.pairwise(series) if b.step > a.step]
    return 0.5 * (statistics.median(gaps) if gaps else 1)
