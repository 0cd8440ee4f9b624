"""An `Explanation` drawn in the terminal (plotext), with a key line and the text under it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engine.explain import text as words
from engine.explain.data import Explanation, Point

# Terminal styles: (symbol, color). Distinct symbols, so the plot reads without colors too;
# None is plotext's own fine line (half-block pixels).
_SERIES = (None, "blue")
_THRESHOLD = ("─", "red")
_FIRED = ("✖", "red")
_TERMINAL_WINDOWS = {
    "window": ("●", "orange"),
    "current window": ("●", "orange"),
    "prior window": ("○", "magenta"),
    "reference window": ("○", "magenta"),
}


def render_terminal(
    expl: Explanation, width: int = 100, height: int | None = None, *, color: bool = False
) -> str:
    """The picture as text (plotext), a key line, then the explanation in words; the words
    alone for event triggers. `color` adds ANSI colors (for a terminal)."""
    text = "\n".join(words.lines(expl))
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
    band = expl.z_band
    if band is not None:  # a z-score: mean ± threshold·σ
        for edge in band:
            fig.line(edge, pixel=plotext.pixel(foreground=_THRESHOLD[1]))
        aggregates.append((_THRESHOLD, words.band_label(expl)))
    elif expl.threshold is not None:
        fig.line(expl.threshold, pixel=plotext.pixel(foreground=_THRESHOLD[1]))
        aggregates.append((_THRESHOLD, f"threshold {words.num(expl.threshold)}"))
    spans = words.spans(expl)
    for window, (x0, x1) in spans:
        if window.aggregate is not None:
            style = ("━", _TERMINAL_WINDOWS[window.name][1])
            fig.draw(fig.segment((x0, x1), (window.aggregate, window.aggregate), marker=marker(style)))
            aggregates.append((style, words.aggregate_label(expl, window)))
    for window, _ in spans:
        style = _TERMINAL_WINDOWS[window.name]
        fig.draw(fig.signal(window.steps, window.values, marker=marker(style)))
        key.append((style, words.window_label(window)))
    key += aggregates
    point = expl.fired_point
    if point is not None:
        fig.draw(fig.signal([point.step], [point.value], marker=marker(_FIRED)))
        key.append((_FIRED, f"fired at step {point.step}"))
    fig.title(f"{expl.automation}: {words.headline(expl)}")
    fig.label("step", "x")
    fig.label(str(expl.metric), "y")
    plot = fig.build().string(colorless=not color).rstrip("\n")
    # The key, wrapped at the plot's width (lengths counted without the color codes).
    rows: list[str] = []
    used = width
    for (symbol, colour), label in key:
        drawn = symbol or "▚"
        part = (
            (plotext.colorize(drawn, plotext.pixel(foreground=colour)).string() if color else drawn)
            + " "
            + label
        )
        size = len(drawn) + 1 + len(label)
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
        kept += [low] if low is high else sorted((low, high), key=lambda p: p.pos)
    return kept
