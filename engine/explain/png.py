"""An `Explanation` drawn as a PNG (matplotlib, Agg: no display needed). Metric triggers only.

matplotlib is imported by `_figure()` alone, when a PNG is asked for: nothing else of the
engine needs it."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from engine.explain import text as words
from engine.explain.data import Explanation

PNG_SIZE_IN = (10.0, 5.0)
PNG_DPI = 100
_WINDOW_COLORS = {
    "window": "tab:orange",
    "current window": "tab:orange",
    "prior window": "tab:purple",
    "reference window": "tab:purple",
}


def _figure() -> Any:
    """An empty matplotlib figure of the PNG's size, drawn by the Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=PNG_SIZE_IN, dpi=PNG_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def render_png(expl: Explanation, path: str | Path) -> Path:
    """Write the picture as a PNG. Metric triggers only."""
    if not expl.is_metric:
        raise ValueError(
            f"trigger {expl.trigger_id} fired on an event ({expl.rule_type}): there is no series to draw"
        )
    fig = _figure()
    ax = fig.add_subplot()
    steps, values = [p.step for p in expl.series], [p.value for p in expl.series]
    run = words.run_label(expl.run) if expl.run else "run"
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
    for window, (x0, x1) in words.spans(expl):
        colour = _WINDOW_COLORS[window.name]
        ax.axvspan(x0, x1, color=colour, alpha=0.15, lw=0, label=words.window_label(window))
        ax.plot(
            window.steps, window.values, "o", color=colour, ms=5 if len(window.points) <= 30 else 3, zorder=3
        )
        if window.aggregate is not None:
            ax.hlines(
                window.aggregate,
                x0,
                x1,
                colors=colour,
                lw=2.5,
                zorder=4,
                label=words.aggregate_label(expl, window),
            )
    band = expl.z_band
    if band is not None:  # a z-score: the threshold is in σ, drawn as the band around the mean
        ax.axhspan(*band, color="tab:green", alpha=0.12, lw=0, label=words.band_label(expl))
        for edge in band:
            ax.axhline(edge, color="tab:red", ls="--", lw=1.0)
    elif expl.rule_type == "run_metric_nonfinite" and expl.step is not None:
        ax.axvline(
            expl.step, color="red", ls="--", lw=1.5, label=f"{words.num(expl.value)} at step {expl.step}"
        )
    elif expl.threshold is not None:
        ax.axhline(
            expl.threshold, color="tab:red", ls="--", lw=1.2, label=f"threshold {words.num(expl.threshold)}"
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
            label=f"fired: step {point.step}, value {words.num(point.value)}",
        )
    title = f"{expl.automation}: {expl.condition}\n{words.headline(expl)} · trigger {expl.trigger_id}"
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
