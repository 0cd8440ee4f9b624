"""`engine explain` in a subprocess, as a user runs it after `engine history`."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import matplotlib.image
import pytest

import engine
from tests.integration.evaluation_helpers import apply_yaml, rule, tick, triggers

ENGINE = Path(sys.executable).parent / "engine"
REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 3, 1, tzinfo=UTC)


def engine_cli(*args: str) -> subprocess.CompletedProcess[str]:
    # ENGINE_DATABASE_URL comes from the database_url fixture; stdout is a pipe: no colors.
    return subprocess.run(
        [str(ENGINE), *args], env=dict(os.environ), cwd=REPO, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def fired(conn, database_url) -> dict[str, int]:
    """Trigger ids of a threshold, a change and a run-state automation."""
    apply_yaml(
        conn,
        rule(
            "acc-high",
            '{type: run_metric_threshold, metric: accuracy, window: 2, operator: ">=", threshold: 0.5}',
        ),
    )
    apply_yaml(
        conn,
        rule(
            "loss-up",
            "{type: run_metric_change, metric: loss, current_window: 2, prior_window: 3,"
            " change: absolute, direction: increase, amount: 0.5}",
        ),
    )
    apply_yaml(conn, rule("finished", "{type: run_state, states: [finished]}"))
    with engine.init(project="acme/vision", name="cli-run", system_metrics_interval=0) as run:
        for i, (acc, loss) in enumerate([(0.1, 1.0), (0.3, 1.0), (0.6, 1.0), (0.7, 2.0), (0.8, 2.0)]):
            run.log({"accuracy": acc, "loss": loss}, step=i, time=T0 + timedelta(seconds=i))
    tick(database_url)
    return {t["automation"]: t["id"] for t in triggers(conn)}


def test_explain_threshold_and_change_write_pngs(fired, tmp_path):
    for name, words in (
        ("acc-high", "avg of the window = 0.65 >= 0.5"),
        ("loss-up", "d = cur − prior = +1; d ≥ 0.5"),
    ):
        png = tmp_path / f"{name}.png"
        result = engine_cli("explain", str(fired[name]), "--png", str(png), "--width", "80")
        assert result.returncode == 0, result.stderr
        assert name in result.stdout and words in result.stdout
        assert "\x1b[" not in result.stdout
        assert max(len(line) for line in result.stdout.splitlines()) <= 120  # the plot is 80 wide
        assert f"wrote {png}" in result.stdout
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and 10_000 < len(data) < 2_000_000
        assert matplotlib.image.imread(png).shape[:2] == (500, 1000)


def test_explain_event_trigger_is_text_and_refuses_png(fired, tmp_path):
    result = engine_cli("explain", str(fired["finished"]))
    assert result.returncode == 0, result.stderr
    assert "run state: running → finished (exit code 0)" in result.stdout
    png = tmp_path / "event.png"
    result = engine_cli("explain", str(fired["finished"]), "--png", str(png))
    assert result.returncode == 1 and not png.exists()
    assert "run state: running → finished" in result.stdout  # the explanation is still printed
    assert "no metric series to draw" in result.stderr


def test_history_hints_at_explain_and_unknown_ids_are_explained(fired):
    history = engine_cli("history")
    assert history.returncode == 0, history.stderr
    # the newest trigger first (the tick evaluates on two connections: any of the three)
    assert any(f"engine explain {trigger_id}" in history.stdout for trigger_id in fired.values())
    result = engine_cli("explain", "999999")
    assert result.returncode == 1 and result.stdout == ""
    assert "no trigger 999999" in result.stderr and "engine history" in result.stderr


def test_png_without_matplotlib_names_the_extra(tmp_path):
    # matplotlib is an optional extra; None in sys.modules makes it absent as an uninstalled
    # package is, while the rest of this environment is used as it is.
    script = (
        "import sys; sys.modules['matplotlib'] = None; "
        "from engine.cli import main; "
        "sys.argv = ['engine', 'explain', '1', '--png', sys.argv[1]]; main()"
    )
    png = tmp_path / "why.png"
    result = subprocess.run(
        [sys.executable, "-c", script, str(png)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    assert (
        result.stderr == "error: --png needs matplotlib, which is not installed: pip install 'engine[png]'\n"
    )
    assert result.stdout == "" and not png.exists()
