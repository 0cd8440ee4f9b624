"""A short kill soak (the same code as `bench/soak.py`, which runs >= 20 rounds): SIGKILL of
`engine serve` at a random moment of each burst of runs, restart, and after every round the
triggers equal the backtest, nothing is duplicated, and every delivery has reached the
receiver (repeats only with the same X-Automation-Delivery id)."""

from __future__ import annotations

import pytest

from bench.support.soak import Soak
from engine.sdk import session as sdk_session


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_and_duplicates_nothing(database_url, tmp_path):
    lines: list[str] = []
    with Soak(database_url, tmp_path, seed=11, runs=50, settle_timeout=90) as soak:
        try:
            for _ in range(3):
                result = soak.round(on_progress=lines.append)
                obs = result.observation
                assert result.settle_s is not None, "\n".join(lines)
                assert (
                    obs.missing,
                    obs.extra,
                    obs.duplicates,
                    obs.unfinished,
                    obs.unseen,
                    obs.unknown_ids,
                ) == (0, 0, 0, 0, 0, 0), "\n".join(lines)
                assert result.triggers > 100 and result.deliveries == result.triggers
            summary = soak.summary()
        finally:
            sdk_session.close_all()
    assert summary["kills"] == 3 and summary["lost"] == summary["duplicates"] == 0
    # every automation kind fired: the rounds exercised threshold, change, state and artifact rules
    fired = {name for name, _ in soak.results[-1].observation.triggers}
    assert fired == {r.name for r in soak.rules}
