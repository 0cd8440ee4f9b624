"""The pure parts of engine/explain/: thinning a long series for the terminal, drawing
an explanation built in memory, and the queries it names."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

import engine.explain.data
from engine.db import query_names
from engine.explain import Explanation, Point, Window, render_png, render_terminal
from engine.explain.terminal import _envelope
from engine.explain.text import spans
from engine.rules import Automation

T = datetime(2026, 1, 1, tzinfo=UTC)


def _series(values: list[float]) -> tuple[Point, ...]:
    return tuple(Point(pos=i + 1, step=10 * i, time=T, value=v) for i, v in enumerate(values))


def _threshold_explanation(series: tuple[Point, ...], position: int, window: int) -> Explanation:
    rule = Automation.model_validate(
        {
            "name": "loss-low",
            "scope": {"project": "acme/vision"},
            "action": {"type": "no_op"},
            "event": {
                "type": "run_metric_threshold",
                "metric": "loss",
                "window": window,
                "aggregation": "min",
                "operator": "<",
                "threshold": 0.2,
            },
        }
    )
    points = series[position - window : position]
    aggregate = min(p.value for p in points)
    return Explanation(
        trigger_id=7,
        fired_at=T,
        automation="loss-low",
        automation_version=1,
        scope=rule.scope.describe(),
        aggregation="min",
        operator="<",
        threshold=0.2,
        rule_type="run_metric_threshold",
        condition=rule.event.describe(),
        run=None,
        delivery=None,
        metric="loss",
        position=position,
        step=points[-1].step,
        value_time=T,
        value=aggregate,
        series=series,
        windows=(
            Window(
                name="window",
                first_pos=position - window + 1,
                last_pos=position,
                points=points,
                aggregate=aggregate,
                recorded=tuple(p.value for p in points),
            ),
        ),
    )


def test_every_query_explain_uses_exists():
    # named queries are run through the gateway's helpers (one, rows) or db.query
    used = set(re.findall(r'"(explain_\w+)"', Path(engine.explain.data.__file__).read_text()))
    assert used == {"explain_trigger", "explain_series", "explain_event"} and used <= query_names()


def test_a_long_series_is_thinned_for_the_terminal_keeping_its_extremes():
    values = [math.sin(i / 500) for i in range(100_000)]
    values[61_234] = 50.0  # one spike among 100 000 values
    series = _series(values)
    kept = _envelope(series, 400)
    assert len(kept) <= 800
    assert [p.pos for p in kept] == sorted(p.pos for p in kept)
    assert series[61_234] in kept and max(p.value for p in kept) == 50.0
    assert min(p.value for p in kept) == min(values)
    short = series[:500]
    assert _envelope(short, 400) is short  # short series are drawn whole


def test_a_window_of_one_value_gets_a_visible_band():
    expl = _threshold_explanation(_series([1.0, 0.5, 0.1, 0.3]), position=3, window=1)
    ((window, (x0, x1)),) = spans(expl)
    assert (window.first_pos, window.last_pos) == (3, 3)
    assert (x0, x1) == (15.0, 25.0)  # half the step gap (10) on each side of step 20


def test_a_long_series_drawn_in_memory_at_the_size_asked(tmp_path):
    series = _series([1.0 - i / 50_000 for i in range(50_000)])
    expl = _threshold_explanation(series, position=45_000, window=20)
    text = render_terminal(expl, width=70, height=15)
    plot, words = text.split("\n\n", 1)
    rows = plot.splitlines()
    assert len(rows) == 15 + 2  # the plot, then the key wrapped at 70 characters
    assert max(len(r) for r in rows[:15]) == 70 and all(len(r) <= 70 for r in rows[15:])
    assert "min of the window = 0.10002 < 0.2  → fired" in words
    assert (
        "window #44981–#45000 (steps 449800–449990): 0.1004, 0.10038, 0.10036, 0.10034, 0.10032, … " in words
    )
    assert "(20 values)" in words
    path = render_png(expl, tmp_path / "long.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_data_is_plain_json_and_refuses_unknown_fields():
    expl = _threshold_explanation(_series([1.0, 0.5, 0.1, 0.3]), position=3, window=2)
    assert Explanation.model_validate_json(expl.model_dump_json()) == expl
    with pytest.raises(ValidationError, match="colour"):
        Point(pos=1, step=0, time=T, value=1.0, colour="red")
