"""Why a rule fired: the data behind one trigger, drawn in the terminal and as a PNG.

`explain_data(conn, trigger_id)` gathers everything into an `Explanation`: the rule as it
was at the trigger's version (`automation_versions`), the run, and for metric triggers the
metric's whole finite series in logging order, numbered 1..n as the evaluator numbers it
(the <pos> of the trigger's cause `metric:<run_pk>:<key_id>:<pos>`), with the window(s)
SPEC section 2 defines at that position:

* threshold: the window is positions pos-N+1 … pos (N = `window`);
* change: the current window pos-cw+1 … pos, the prior window the pw positions before it.

`render_terminal()` (plotext) and `render_png()` (matplotlib) draw the same picture from
it: the series, the window(s) highlighted, the threshold (or the two aggregates over their
windows), the value that fired; `Explanation.lines()` is the text both put under it.
Event triggers (run state, artifacts, registries) are explained in text only.

    with connect() as conn:
        expl = explain_data(conn, 12)
    print(render_terminal(expl, width=100))
    render_png(expl, "why.png")
"""

from __future__ import annotations

import statistics
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row
from pydantic import ValidationError

from engine.compiler import metric_table
from engine.db import boundary, query
from engine.exceptions import NotFound
from engine.rules import Automation, RunMetricChange, RunMetricThreshold

# Windows longer than this are abbreviated in text (first and last values, and the count).
SHOWN_VALUES = 10
PNG_SIZE_IN = (10.0, 5.0)
PNG_DPI = 100


@dataclass(frozen=True)
class Point:
    """One finite value of the series: its position among the finite values (1-based)."""

    pos: int
    step: int
    time: datetime
    value: float


@dataclass(frozen=True)
class Window:
    """A window the rule aggregated: positions first_pos..last_pos of the series."""

    name: str  # "window", "prior window" or "current window"
    first_pos: int
    last_pos: int
    points: tuple[Point, ...]  # read from the series now
    aggregate: float | None  # as the trigger recorded it
    recorded: tuple[float, ...]  # the values the trigger recorded (equal to the points' values)

    @property
    def values(self) -> list[float]:
        return [p.value for p in self.points]

    @property
    def steps(self) -> list[int]:
        return [p.step for p in self.points]

    def label(self) -> str:
        """`window #3–#7 (steps 2–6)`."""
        where = (
            f"#{self.first_pos}" if self.first_pos == self.last_pos else f"#{self.first_pos}–#{self.last_pos}"
        )
        if self.points:
            first, last = self.points[0].step, self.points[-1].step
            where += f" (step {first})" if first == last else f" (steps {first}–{last})"
        return f"{self.name} {where}"


@dataclass(frozen=True)
class RunInfo:
    pk: int
    entity: str | None
    project: str | None
    run_id: str | None
    name: str | None
    user: str | None
    state: str | None

    def label(self) -> str:
        """`acme/vision/3f2a9c "sweep-1" (user alice, finished)`."""
        if self.run_id is None:
            return f"run #{self.pk} (deleted)"
        text = f"{self.entity}/{self.project}/{self.run_id}"
        if self.name and self.name != self.run_id:
            text += f' "{self.name}"'
        extra = [f"user {self.user}"] if self.user else []
        extra += [self.state] if self.state else []
        return text + (f" ({', '.join(extra)})" if extra else "")


@dataclass(frozen=True)
class EventInfo:
    """The row of `events` behind an event trigger."""

    id: int
    type: str
    time: datetime
    author: str | None
    details: dict[str, Any]


@dataclass(frozen=True)
class Explanation:
    """Everything `engine explain` shows about one trigger."""

    trigger_id: int
    fired_at: datetime
    automation: str
    automation_version: int
    rule: Automation | None  # None only if the stored rule no longer loads
    rule_type: str  # the rule's event.type when it fired
    condition: str  # the trigger's details.metric_filter (the rule's describe())
    run: RunInfo | None
    delivery: str | None
    # metric triggers
    metric: str | None = None
    position: int | None = None
    step: int | None = None
    value_time: datetime | None = None
    value: float | None = None  # what the trigger recorded: the aggregate, or the change d
    series: tuple[Point, ...] = ()
    windows: tuple[Window, ...] = ()
    current_aggregate: float | None = None
    prior_aggregate: float | None = None
    # event triggers
    event: EventInfo | None = None
    alias: str | None = None
    tag: str | None = None
    artifact_version: str | None = None
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def is_metric(self) -> bool:
        return self.metric is not None

    @property
    def is_change(self) -> bool:
        return self.rule_type == "run_metric_change"

    @property
    def fired_point(self) -> Point | None:
        """The value that fired (the last of the current window)."""
        if self.position is None or not 1 <= self.position <= len(self.series):
            return None
        return self.series[self.position - 1]

    @property
    def threshold(self) -> float | None:
        event = self.rule.event if self.rule else None
        return event.threshold if isinstance(event, RunMetricThreshold) else None

    @property
    def aggregation(self) -> str:
        event = self.rule.event if self.rule else None
        return event.aggregation if isinstance(event, (RunMetricThreshold, RunMetricChange)) else "aggregate"

    def spans(self) -> list[tuple[Window, tuple[float, float]]]:
        """The windows to draw, each with its x extent (steps, padded by half a step so that
        a one-value window still shows)."""
        pad = _step_pad(self.series)
        return [(w, (w.steps[0] - pad, w.steps[-1] + pad)) for w in self.windows if w.points]

    def aggregate_label(self, window: Window) -> str:
        """`avg of prior window = 0.365768`."""
        return f"{self.aggregation} of {window.name} = {_num(window.aggregate)}"

    def headline(self) -> str:
        """The verdict in one line: `avg = 0.72 > 0.6` or `d = -42% (decrease ≥ 25%)`."""
        if not self.is_metric:
            return self.condition
        event = self.rule.event if self.rule else None
        if isinstance(event, RunMetricThreshold):
            return f"{event.aggregation} = {_num(self.value)} {event.operator} {event.threshold:g}"
        if isinstance(event, RunMetricChange):
            return f"d = {_change(self.value, event.change)} ({_change_test(event)})"
        return f"value = {_num(self.value)}"

    def lines(self) -> list[str]:
        """The explanation in words (printed under the plot, or alone for event triggers)."""
        out = [
            f"trigger {self.trigger_id}: automation {self.automation!r} (version {self.automation_version}), "
            f"fired {_time(self.fired_at)}",
            f"condition: {self.condition}",
        ]
        if self.rule is not None:
            out.append(f"scope: {self.rule.scope.describe()}" + _run_filter(self.rule))
        if self.run is not None:
            out.append(f"run: {self.run.label()}")
        if self.is_metric:
            out += self._metric_lines()
        else:
            out += self._event_lines()
        if self.delivery:
            out.append(f"delivery: {self.delivery}")
        out += [f"warning: {w}" for w in self.warnings]
        return out

    def _metric_lines(self) -> list[str]:
        point = self.fired_point
        value = f", value {_num(point.value)}" if point else ""
        out = [
            f"metric: {self.metric}, fired at finite value #{self.position} of {len(self.series)}: "
            f"step {self.step}, value time {_time(self.value_time)}{value}"
        ]
        for window in self.windows:
            # the values as stored now; as recorded if they are gone (see the warnings)
            out.append(f"{window.label()}: {_values(window.values or window.recorded)}")
        event = self.rule.event if self.rule else None
        if isinstance(event, RunMetricChange):
            cur, prior = self.current_aggregate, self.prior_aggregate
            out.append(
                f"current {event.aggregation} = {_num(cur)}, prior {event.aggregation} = {_num(prior)}"
            )
            formula = "cur − prior" if event.change == "absolute" else "(cur − prior) / |prior|"
            out.append(f"d = {formula} = {_change(self.value, event.change)}; {_change_test(event)}  → fired")
        elif isinstance(event, RunMetricThreshold):
            out.append(
                f"{event.aggregation} of the window = {_num(self.value)} {event.operator} {event.threshold:g}  → fired"
            )
        else:
            out.append(f"aggregate = {_num(self.value)}")
        return out

    def _event_lines(self) -> list[str]:
        event = self.event
        if event is None:
            return ["event: no longer stored"]
        d = event.details
        by = f" by {event.author}" if event.author else ""
        out = [f"event #{event.id} ({event.type}) at {_time(event.time)}{by}"]
        if event.type == "run_state":
            moved = f"{d.get('from') or '(new run)'} → {d.get('to')}"
            exit_code = d.get("exit_code")
            out.append(f"run state: {moved}" + (f" (exit code {exit_code})" if exit_code is not None else ""))
        if self.artifact_version:
            out.append(f"artifact version: {self.artifact_version}")
        if d.get("registry"):
            out.append(
                f"registry: {d['registry']}/{d.get('collection')}"
                + (f" v{d['version_index']}" if d.get("version_index") is not None else "")
            )
        if self.alias:
            out.append(f"alias: {self.alias}")
        if self.tag:
            out.append(f"tag: {self.tag}")
        if event.type == "artifact_version_created" and d.get("collection_type"):
            out.append(f"collection type: {d['collection_type']}")
        out.append(f"matched: {self.condition}")
        return out


# --------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------
def explain_data(conn: psycopg.Connection, trigger_id: int) -> Explanation:
    """The explanation of one trigger; NotFound when there is no such trigger."""
    with boundary():
        cur = conn.cursor(row_factory=dict_row)
        row = cur.execute(query("explain_trigger"), {"trigger_id": trigger_id}).fetchone()
        if row is None:
            raise NotFound(f"no trigger {trigger_id}: `engine history` lists the trigger ids")
        warnings: list[str] = []
        try:
            rule: Automation | None = Automation.model_validate(row["rule"])
        except ValidationError:
            rule = None
            warnings.append(
                f"the rule of version {row['automation_version']} cannot be read by this engine version"
            )
        details = row["details"] or {}
        run = None
        if row["run_pk"] is not None or row["cause"].startswith("metric:"):
            run_pk = row["run_pk"] if row["run_pk"] is not None else int(row["cause"].split(":")[1])
            run = RunInfo(
                run_pk,
                row["entity"],
                row["project"],
                row["run_id"],
                row["run_name"],
                row["user_name"],
                row["run_state"],
            )
        common: dict[str, Any] = {
            "trigger_id": row["id"],
            "fired_at": row["fired_at"],
            "automation": row["automation"],
            "automation_version": row["automation_version"],
            "rule": rule,
            "rule_type": row["event_type"],
            "condition": details.get("metric_filter")
            or (rule.event.describe() if rule else row["event_type"]),
            "run": run,
            "delivery": _delivery(row),
        }
        if row["cause"].startswith("metric:"):
            return _metric_explanation(cur, row, common, warnings)
        event = None
        if row["event_id"] is not None:
            e = cur.execute(query("explain_event"), {"event_id": row["event_id"]}).fetchone()
            event = EventInfo(e["id"], e["type"], e["time"], e["author"], e["details"] or {}) if e else None
        return Explanation(
            **common,
            event=event,
            alias=row["alias"],
            tag=row["tag"],
            artifact_version=row["artifact_version"],
            warnings=tuple(warnings),
        )


def _metric_explanation(
    cur: psycopg.Cursor, row: dict[str, Any], common: dict[str, Any], warnings: list[str]
) -> Explanation:
    _, run_pk, key_id, pos = row["cause"].split(":")
    run_pk, key_id, position = int(run_pk), int(key_id), int(pos)
    metric = row["metric"]
    system = metric_table(metric) == "system_metrics"
    series = tuple(
        Point(r["pos"], r["step"], r["time"], r["value"])
        for r in cur.execute(query("explain_series"), {"system": system, "run_pk": run_pk, "key_id": key_id})
    )
    window_values = tuple(row["window_values"] or ())
    prior_values = tuple(row["prior_values"] or ())
    rule: Automation | None = common["rule"]
    event = rule.event if rule else None
    # The window sizes come from the rule at the trigger's version (what the evaluator used);
    # the recorded windows' lengths are the same numbers when the rule cannot be read.
    if isinstance(event, RunMetricThreshold):
        sizes = [event.window]
    elif isinstance(event, RunMetricChange):
        sizes = [event.prior_window, event.current_window]
    else:
        sizes = [len(prior_values), len(window_values)] if prior_values else [len(window_values)]
    if len(sizes) == 1:
        recorded = [("window", window_values, row["value"])]
    else:
        recorded = [
            ("prior window", prior_values, row["prior_aggregate"]),
            ("current window", window_values, row["current_aggregate"]),
        ]
    windows = []
    last = position - sum(sizes)  # the position just before the first window
    for size, (name, values, aggregate) in zip(sizes, recorded):
        first, last = last + 1, last + size
        points = series[max(first, 1) - 1 : max(last, 0)]
        windows.append(Window(name, first, last, points, aggregate, values))

    if not series:
        warnings.append(f"no finite value of {metric} is stored for this run any more")
    elif position > len(series):
        warnings.append(
            f"the run has only {len(series)} finite values of {metric} stored now (fired at #{position})"
        )
    elif any(tuple(w.values) != w.recorded for w in windows):
        warnings.append("the stored values differ from the window(s) the trigger recorded")
    return Explanation(
        **common,
        metric=metric,
        position=position,
        step=row["step"],
        value_time=row["value_time"],
        value=row["value"],
        series=series,
        windows=tuple(windows),
        current_aggregate=row["current_aggregate"],
        prior_aggregate=row["prior_aggregate"],
        warnings=tuple(warnings),
    )


def _delivery(row: dict[str, Any]) -> str | None:
    if row["action_type"] is None:
        return None
    text = f"{row['action_type']} {row['delivery_status']} after {row['attempts']} attempt(s)"
    return text + (f", HTTP {row['last_http_status']}" if row["last_http_status"] else "")


# --------------------------------------------------------------------------------------
# formatting
# --------------------------------------------------------------------------------------
def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.6g}"


def _time(value: datetime | None) -> str:
    return "—" if value is None else value.isoformat(sep=" ", timespec="seconds")


def _change(value: float | None, kind: str) -> str:
    if value is None:
        return "—"
    return f"{value * 100:+.4g}%" if kind == "relative" else f"{value:+.6g}"


def _change_test(event: RunMetricChange) -> str:
    amount = _change(event.amount, event.change).lstrip("+")
    return {"increase": f"d ≥ {amount}", "decrease": f"−d ≥ {amount}", "any": f"|d| ≥ {amount}"}[
        event.direction
    ]


def _values(values: Sequence[float]) -> str:
    """`0.5, 0.6, 0.7` or, for long windows, `0.5, 0.6, … 0.9 (50 values)`."""
    if len(values) <= SHOWN_VALUES:
        return ", ".join(_num(v) for v in values)
    half = SHOWN_VALUES // 2
    head = ", ".join(_num(v) for v in values[:half])
    tail = ", ".join(_num(v) for v in values[-half:])
    return f"{head}, … {tail} ({len(values)} values)"


def _run_filter(rule: Automation) -> str:
    f = rule.run_filter
    if f is None:
        return ""
    parts = ([f"user = {f.user}"] if f.user else []) + ([f"name ~ {f.name_regex}"] if f.name_regex else [])
    return "; run filter: " + ", ".join(parts)


def _step_pad(series: Sequence[Point]) -> float:
    """Half the usual gap between steps: a window of one step still gets a visible band."""
    gaps = [b.step - a.step for a, b in zip(series, series[1:]) if b.step > a.step]
    return 0.5 * (statistics.median(gaps) if gaps else 1)


# --------------------------------------------------------------------------------------
# terminal
# --------------------------------------------------------------------------------------
# Terminal styles: (symbol, color). Distinct symbols, so the plot reads without colors too;
# None is plotext's own fine line (half-block pixels).
_SERIES = (None, "blue")
_THRESHOLD = ("─", "red")
_FIRED = ("✖", "red")
_TERMINAL_WINDOWS = {
    "window": ("●", "orange"),
    "current window": ("●", "orange"),
    "prior window": ("○", "magenta"),
}


def render_terminal(
    expl: Explanation, width: int = 100, height: int | None = None, *, color: bool = False
) -> str:
    """The picture as text (plotext), a key line, then `expl.lines()`; the text alone for
    event triggers. `color` adds ANSI colors (for a terminal)."""
    text = "\n".join(expl.lines())
    if not expl.is_metric or not expl.series:
        return text
    import plotext

    def marker(style: tuple[str | None, str]) -> Any:
        return plotext.marker(style[0], plotext.pixel(foreground=style[1]))

    height = height or max(12, min(30, width // 4))
    fig = plotext.figure  # plotext draws on one module-level figure: reset it first
    fig.clear()
    plotext.terminal.limit(False, False)  # the size asked for, whatever the terminal is
    fig.plot_size(width, height)
    fig.theme("simple")
    fig.legend(False)  # a key line under the plot instead: a boxed legend hides half of it

    # Drawn in this order (later on top); the key lists them as a reader looks for them.
    shown = _envelope(expl.series, 4 * width)
    fig.draw(fig.signal([p.step for p in shown], [p.value for p in shown], marker=marker(_SERIES)).lines())
    key: list[tuple[tuple[str | None, str], str]] = [(_SERIES, str(expl.metric))]
    aggregates: list[tuple[tuple[str | None, str], str]] = []
    if expl.threshold is not None:
        fig.line(expl.threshold, pixel=plotext.pixel(foreground=_THRESHOLD[1]))
        aggregates.append((_THRESHOLD, f"threshold {_num(expl.threshold)}"))
    for window, (x0, x1) in expl.spans():
        if window.aggregate is not None:
            style = ("━", _TERMINAL_WINDOWS[window.name][1])
            fig.draw(fig.segment((x0, x1), (window.aggregate, window.aggregate), marker=marker(style)))
            aggregates.append((style, expl.aggregate_label(window)))
    for window, _ in expl.spans():
        style = _TERMINAL_WINDOWS[window.name]
        fig.draw(fig.signal(window.steps, window.values, marker=marker(style)))
        key.append((style, window.label()))
    key += aggregates
    point = expl.fired_point
    if point is not None:
        fig.draw(fig.signal([point.step], [point.value], marker=marker(_FIRED)))
        key.append((_FIRED, f"fired at step {point.step}"))
    fig.title(f"{expl.automation}: {expl.headline()}")
    fig.label("step", "x")
    fig.label(str(expl.metric), "y")
    plot = fig.build().string(colorless=not color).rstrip("\n")
    # The key, wrapped at the plot's width (lengths counted without the color codes).
    rows: list[str] = []
    used = width
    for (symbol, colour), label in key:
        shown = symbol or "▚"
        part = (
            (plotext.colorize(shown, plotext.pixel(foreground=colour)).string() if color else shown)
            + " "
            + label
        )
        size = len(shown) + 1 + len(label)
        if rows and used + 3 + size <= width:
            rows[-1] += "   " + part
            used += 3 + size
        else:
            rows.append(part)
            used = size
    return plot + "\n" + "\n".join(rows) + "\n\n" + text


def _envelope(series: Sequence[Point], buckets: int) -> Sequence[Point]:
    """At most ~2 × `buckets` points: the lowest and highest of each run of consecutive
    points, in order. A terminal cannot show more, and plotext is slow with many (a spike
    still shows; the windows and the value that fired are drawn from the full series)."""
    if len(series) <= 2 * buckets:
        return series
    size = -(-len(series) // buckets)  # ceiling division
    kept: list[Point] = []
    for start in range(0, len(series), size):
        chunk = series[start : start + size]
        low, high = min(chunk, key=lambda p: p.value), max(chunk, key=lambda p: p.value)
        kept += sorted({low, high}, key=lambda p: p.pos)
    return kept


# --------------------------------------------------------------------------------------
# PNG
# --------------------------------------------------------------------------------------
_WINDOW_COLORS = {"window": "tab:orange", "current window": "tab:orange", "prior window": "tab:purple"}


def render_png(expl: Explanation, path: str | Path) -> Path:
    """Write the picture as a PNG (matplotlib, Agg: no display needed). Metric triggers only."""
    if not expl.is_metric:
        raise ValueError(
            f"trigger {expl.trigger_id} fired on an event ({expl.rule_type}): there is no series to draw"
        )
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=PNG_SIZE_IN, dpi=PNG_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    steps, values = [p.step for p in expl.series], [p.value for p in expl.series]
    run = expl.run.label() if expl.run else "run"
    ax.plot(
        steps,
        values,
        color="tab:blue",
        lw=1.3,
        marker="." if len(steps) <= 200 else None,
        ms=4,
        label=f"{expl.metric} ({len(steps)} finite values)",
        zorder=2,
    )
    for window, (x0, x1) in expl.spans():
        colour = _WINDOW_COLORS[window.name]
        ax.axvspan(x0, x1, color=colour, alpha=0.15, lw=0, label=window.label())
        ax.plot(
            window.steps, window.values, "o", color=colour, ms=5 if len(window.points) <= 30 else 3, zorder=3
        )
        if window.aggregate is not None:
            ax.hlines(
                window.aggregate, x0, x1, colors=colour, lw=2.5, zorder=4, label=expl.aggregate_label(window)
            )
    if expl.threshold is not None:
        ax.axhline(
            expl.threshold, color="tab:red", ls="--", lw=1.2, label=f"threshold {_num(expl.threshold)}"
        )
    point = expl.fired_point
    if point is not None:
        ax.plot(
            [point.step],
            [point.value],
            ls="none",
            marker="*",
            ms=16,
            color="red",
            mec="black",
            zorder=5,
            label=f"fired: step {point.step}, value {_num(point.value)}",
        )
    title = f"{expl.automation}: {expl.condition}\n{expl.headline()} · trigger {expl.trigger_id}"
    ax.set_title("\n".join(textwrap.fill(line, 90) for line in title.splitlines()), fontsize=11)
    ax.set_xlabel("step")
    ax.set_ylabel(expl.metric)
    ax.grid(True, alpha=0.3)
    # Outside the axes on the right: the legend never hides a value.
    ax.legend(
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=9,
        frameon=False,
        title=textwrap.fill(run, 40),
        title_fontsize=9,
        alignment="left",
    )
    path = Path(path)
    fig.savefig(path, format="png", dpi=PNG_DPI)
    return path
