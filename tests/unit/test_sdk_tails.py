"""The tails a flush sends to upsert_series: the shortcut for the usual run (the same keys in
every call, finite values) gives what the general reading of the records gives."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from engine.sdk.flush import DatabaseTransport


def _transport(tail: int) -> DatabaseTransport:
    transport = object.__new__(DatabaseTransport)  # _tails needs no connection
    transport.tail = tail
    return transport


@pytest.mark.parametrize(("records_count", "tail"), [(1, 8), (7, 8), (8, 8), (500, 128), (129, 128)])
def test_the_usual_run_shortcut_gives_the_general_tails(records_count, tail):
    rng = random.Random(records_count)
    keys = ("loss", "acc", "lr")
    slots = {keys: [(11, 12, 13), records_count]}
    start = datetime(2026, 1, 1, tzinfo=UTC)
    records = [
        (start + timedelta(seconds=s), s * 2, keys, tuple(rng.uniform(-1, 1) for _ in keys))
        for s in range(records_count)
    ]
    n_finite = dict.fromkeys((11, 12, 13), records_count)
    transport = _transport(tail)
    shortcut = transport._tails(records, slots, n_finite, odd=False)
    general = transport._tails(records, slots, n_finite, odd=True)  # the odd flag takes the general path
    assert shortcut == general
    assert shortcut[12][0] == [r[1] for r in records[-tail:]]
    assert shortcut[13][2] == [r[3][2] for r in records[-tail:]]
