"""A short kill soak (the same code as `bench/soak.py`, which runs >= 20 rounds): SIGKILL of
`engine serve` at a random moment of each burst of runs, inside an open digest window,
restart, and after every round the triggers equal the backtest, nothing is duplicated, and
every delivery has reached the receiver (repeats only with the same X-Automation-Delivery id).
Two automations are digested and two rate-limited: after the last round every digested
trigger is listed in exactly one delivered digest, and every rate-limited one was sent once or
`suppressed` (never both), never more than `count` in a rolling period (bench/support/soak.py
says exactly what is checked)."""

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
                assert obs is not None
                assert result.settle_s is not None, "\n".join(lines)
                assert not any(obs.faults().values()), (obs.faults(), "\n".join(lines))
                assert result.triggers > 100
                assert result.open_windows_at_kill > 0  # the kill landed inside a digest window
            final = soak.drain(on_progress=lines.append)
            summary = soak.summary()
        finally:
            sdk_session.close_all()
    assert summary["kills"] == summary["kills_inside_digest_window"] == 3, "\n".join(lines)
    assert summary["lost"] == summary["duplicates"] == summary["digest_wrong"] == 0, "\n".join(lines)
    assert summary["over_limit"] == 0 and summary["digests_open"] == 0, "\n".join(lines)
    # every automation kind fired: the rounds exercised threshold, change, state and artifact
    # rules, digests and rate limits
    fired = {name for name, _ in final.triggers}
    assert fired == {r.name for r in soak.rules}
    # every digested trigger went out in a digest, and the limits both held back and let through
    assert summary["digest_triggers"] > 0 and summary["digests"] >= 2
    delivered = sum(len(w.members) for w in final.windows if w.delivery_id in final.bodies)
    assert delivered == summary["digest_triggers"], "\n".join(lines)
    assert 0 < summary["suppressed"] < summary["rate_limited_triggers"]
