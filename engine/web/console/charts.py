"""The console's pictures as inline SVG, drawn on the server from the explanation data
(engine.explain.data, the same facts `engine explain` draws) and from stored series.

No JavaScript: each shape carries a <title> (a tooltip on hover, read by screen readers) and a
class the stylesheet colours: `series`, `point`, `window`, `threshold`, `aggregate`, `fired`,
`mark` (a trigger on a run's metric), `firing` (a backtest's).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from markupsafe import Markup, escape

from engine.explain import text
from engine.explain.data import Explanation, Point

WIDTH, HEIGHT = 720, 260
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 16, 36
CONTEXT = 25  # values shown on each side of the window(s) around a firing
MAX_POINTS = 1500  # a longer series is thinned (every k-th value; marked values always kept)
DOTS = 200  # up to this many values, each is drawn as a dot too


@dataclass
class _Plot:
    x0: float
    x1: float
    y0: float
    y1: float
    label: str
    parts: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.x1 <= self.x0:
            self.x0, self.x1 = self.x0 - 1, self.x1 + 1
        if self.y1 <= self.y0:
            pad = abs(self.y0) * 0.1 or 1.0
            self.y0, self.y1 = self.y0 - pad, self.y1 + pad
        else:
            pad = (self.y1 - self.y0) * 0.08
            self.y0, self.y1 = self.y0 - pad, self.y1 + pad

    def sx(self, x: float) -> float:
        return round(LEFT + (x - self.x0) / (self.x1 - self.x0) * (WIDTH - LEFT - RIGHT), 2)

    def sy(self, y: float) -> float:
        return round(TOP + (self.y1 - y) / (self.y1 - self.y0) * (HEIGHT - TOP - BOTTOM), 2)

    def add(self, element: str, title: str | None = None, **attrs: object) -> None:
        attributes = " ".join(f'{k.rstrip("_").replace("_", "-")}="{escape(v)}"' for k, v in attrs.items())
        if title is None:
            self.parts.append(f"<{element} {attributes}/>")
        else:
            self.parts.append(f"<{element} {attributes}><title>{escape(title)}</title></{element}>")

    def axes(self, x_label: str, x_text: tuple[str, str] | None = None, y_ticks: bool = True) -> None:
        bottom, right = HEIGHT - BOTTOM, WIDTH - RIGHT
        self.add("line", class_="axis", x1=LEFT, y1=bottom, x2=right, y2=bottom)
        self.add("line", class_="axis", x1=LEFT, y1=TOP, x2=LEFT, y2=bottom)
        first, last = x_text or (f"{self.x0:g}", f"{self.x1:g}")
        ticks: list[tuple[float, float, str, str]] = [
            (LEFT, bottom + 14, "start", first),
            (right, bottom + 14, "end", last),
            ((LEFT + right) / 2, bottom + 28, "middle", x_label),
        ]
        if y_ticks:
            ticks += [
                (LEFT - 4, self.sy(self.y1) + 10, "end", text.num(self.y1)),
                (LEFT - 4, self.sy(self.y0), "end", text.num(self.y0)),
            ]
        for x, y, anchor, words in ticks:
            self.parts.append(
                f'<text class="tick" x="{x}" y="{y}" text-anchor="{anchor}">{escape(words)}</text>'
            )

    def render(self, description: str) -> Markup:
        return Markup(
            f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
            f'preserveAspectRatio="xMidYMid meet" xmlns="http://www.w3.org/2000/svg">'
            f"<title>{escape(self.label)}</title><desc>{escape(description)}</desc>"
            + "".join(self.parts)
            + "</svg>"
        )


def _thin(points: Sequence[Point], keep: set[int]) -> list[Point]:
    if len(points) <= MAX_POINTS:
        return list(points)
    every = math.ceil(len(points) / MAX_POINTS)
    return [p for i, p in enumerate(points) if i % every == 0 or p.pos in keep]


def _series(plot: _Plot, points: Sequence[Point], metric: str) -> None:
    if not points:
        return
    path = " ".join(f"{plot.sx(p.step)},{plot.sy(p.value)}" for p in points)
    plot.add("polyline", class_="series", points=path)
    if len(points) <= DOTS:
        for p in points:
            plot.add(
                "circle",
                f"{metric} = {text.num(p.value)} at step {p.step} (#{p.pos})",
                class_="point",
                cx=plot.sx(p.step),
                cy=plot.sy(p.value),
                r=2.5,
            )


def explanation_svg(expl: Explanation) -> Markup | None:
    """Why a metric trigger fired: its series around the firing, the window(s) shaded, the
    threshold (or the prior and current aggregates) as lines, the value that fired marked.
    None for event triggers and for a series no longer stored."""
    if not expl.is_metric or not expl.series:
        return None
    firsts = [w.first_pos for w in expl.windows] or [expl.position or 1]
    first = max(1, min(firsts) - CONTEXT)
    last = min(len(expl.series), (expl.position or len(expl.series)) + CONTEXT)
    shown = expl.series[first - 1 : last]
    fired = expl.fired_point
    points = _thin(shown, {fired.pos} if fired else set())
    ys = [p.value for p in shown]
    ys += [v for v in (expl.threshold, expl.current_aggregate, expl.prior_aggregate) if v is not None]
    if expl.threshold is None and expl.change is None and expl.value is not None:
        ys.append(expl.value)
    finite = [y for y in ys if math.isfinite(y)]
    plot = _Plot(
        shown[0].step,
        shown[-1].step,
        min(finite),
        max(finite),
        f"{expl.metric}: {text.headline(expl)}",
    )
    for window, (x0, x1) in text.spans(expl):
        a, b = plot.sx(max(x0, plot.x0)), plot.sx(min(x1, plot.x1))
        label = text.window_label(window)
        if window.aggregate is not None:
            label += f"; {text.aggregate_label(expl, window)}"
        plot.add(
            "rect",
            label,
            class_="window",
            data_window=window.name,
            x=a,
            y=TOP,
            width=max(b - a, 2),
            height=HEIGHT - TOP - BOTTOM,
        )
    plot.axes("step", (f"step {shown[0].step}", f"step {shown[-1].step}"))
    if expl.threshold is not None:
        y = plot.sy(expl.threshold)
        plot.add(
            "line",
            f"threshold {expl.operator} {expl.threshold:g}",
            class_="threshold",
            x1=LEFT,
            y1=y,
            x2=WIDTH - RIGHT,
            y2=y,
        )
    for window, (x0, x1) in text.spans(expl):
        if expl.change is not None and window.aggregate is not None:
            y = plot.sy(window.aggregate)
            plot.add(
                "line",
                text.aggregate_label(expl, window),
                class_="aggregate",
                data_window=window.name,
                x1=plot.sx(max(x0, plot.x0)),
                y1=y,
                x2=plot.sx(min(x1, plot.x1)),
                y2=y,
            )
    _series(plot, points, expl.metric or "value")
    if fired is not None:
        plot.add(
            "circle",
            f"fired: {expl.metric} = {text.num(fired.value)} at step {fired.step}; {text.headline(expl)}",
            class_="fired",
            cx=plot.sx(fired.step),
            cy=plot.sy(fired.value),
            r=6,
        )
    description = "; ".join(text.lines(expl))
    return plot.render(description)


@dataclass(frozen=True)
class Mark:
    """A trigger on a run's metric chart."""

    trigger_id: int
    step: int
    value: float
    label: str


def series_svg(metric: str, points: Sequence[Point], marks: Sequence[Mark]) -> Markup | None:
    """One metric of a run, each trigger that fired on it marked (a ring with its label)."""
    if not points:
        return None
    thinned = _thin(points, set())
    values = [p.value for p in points] + [m.value for m in marks if math.isfinite(m.value)]
    plot = _Plot(points[0].step, points[-1].step, min(values), max(values), metric)
    plot.axes("step", (f"step {points[0].step}", f"step {points[-1].step}"))
    _series(plot, thinned, metric)
    by_step = {p.step: p.value for p in points}
    for mark in marks:
        y = by_step.get(mark.step, mark.value)
        if not math.isfinite(y):
            continue
        plot.add(
            "circle",
            mark.label,
            class_="mark",
            data_trigger=mark.trigger_id,
            cx=plot.sx(mark.step),
            cy=plot.sy(y),
            r=6,
        )
    return plot.render(f"{metric}: {len(points)} values, {len(marks)} trigger(s) marked")


def firings_svg(name: str, start: datetime, end: datetime, firings: Sequence[tuple[datetime, str]]) -> Markup:
    """A backtest: when the rule would have fired over the period (one tick per firing)."""
    plot = _Plot(start.timestamp(), end.timestamp(), 0, 1, f"{name}: {len(firings)} firing(s) in the period")
    plot.axes("time", (text.time(start), text.time(end)), y_ticks=False)
    for at, label in firings:
        x = plot.sx(at.timestamp())
        plot.add(
            "line", f"{text.time(at)}: {label}", class_="firing", x1=x, y1=TOP + 10, x2=x, y2=HEIGHT - BOTTOM
        )
    return plot.render(f"{len(firings)} firing(s) between {text.time(start)} and {text.time(end)}")


def bars_svg(counts: Sequence[int], start: datetime) -> Markup:
    """Firings per day (oldest first) as small bars, each titled with its day and count."""
    width, height, gap = 6, 24, 1
    top = max(counts, default=0) or 1
    bars = []
    for i, count in enumerate(counts):
        h = round(count / top * (height - 2)) + (1 if count else 0)
        day = (start + timedelta(days=i)).date().isoformat()
        bars.append(
            f'<rect class="bar" x="{i * (width + gap)}" y="{height - h}" width="{width}" height="{max(h, 1)}">'
            f"<title>{day}: {count}</title></rect>"
        )
    total = sum(counts)
    return Markup(
        f'<svg class="bars" viewBox="0 0 {len(counts) * (width + gap)} {height}" role="img" '
        f'width="{len(counts) * (width + gap)}" height="{height}" xmlns="http://www.w3.org/2000/svg">'
        f"<title>{total} firing(s) in {len(counts)} days</title>" + "".join(bars) + "</svg>"
    )
