"""MLflow metrics become `run.log` rows: in step order, one row per step and timestamp, a key
at most once per row (engine/web/mlflow.py `_metric_rows`)."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from engine import clock
from engine.web.mlflow import MlflowError, _metric_rows


def at(ms: int) -> int:
    """A timestamp in milliseconds as rows hold times."""
    return clock.to_micros(datetime.fromtimestamp(ms / 1000, UTC))


def test_rows_follow_steps_whatever_the_order_sent_and_group_by_step_and_time():
    metrics = [
        {
            "key": "loss",
            "value": 0.5,
            "timestamp": "2000",
            "step": "2",
        },  # int64 as text, as protobuf JSON has it
        {"key": "acc", "value": 0.7, "timestamp": 2000, "step": 2},
        {"key": "loss", "value": "NaN", "timestamp": 1000, "step": 1},
        {"key": "loss", "value": "-Infinity", "timestamp": 1000, "step": 1},  # the same key again: a new row
        {"key": "lr", "value": 3, "timestamp": 1500, "step": 1},  # another time: a new row
    ]
    rows = _metric_rows(metrics)
    assert [(r[0], r[1], r[2]) for r in rows] == [
        (at(1000), 1, ("loss",)),
        (at(1000), 1, ("loss",)),
        (at(1500), 1, ("lr",)),
        (at(2000), 2, ("loss", "acc")),
    ]
    assert math.isnan(rows[0][3][0]) and rows[1][3] == (-math.inf,) and rows[2][3] == (3.0,)


@pytest.mark.parametrize(
    ("metric", "named"),
    [
        ({"key": "loss", "value": "high"}, "metrics[0]"),
        ({"key": "", "value": 1}, "metrics[0]"),
        ({"key": "loss", "value": None}, "metrics[0]"),
        ({"key": "loss", "value": 1, "step": -1}, "step -1"),
        ({"key": "loss", "value": 1, "step": "1.5"}, "'step'"),
        ({"key": "loss", "value": 1, "timestamp": 10**19}, "'timestamp'"),
        ({"key": "loss", "value": 1, "timestamp": 10**17}, "out of range"),
    ],
)
def test_a_bad_metric_is_refused_naming_it(metric, named):
    with pytest.raises(MlflowError) as raised:
        _metric_rows([metric])
    assert raised.value.code == "INVALID_PARAMETER_VALUE" and named in raised.value.message
