"""The system metrics sampler: W&B's key names under system/, sample index as step."""

from __future__ import annotations

import threading
import time

import engine
from engine.sdk.system import SystemSampler
from tests.integration.sdk_helpers import set_env, wait_for

EXPECTED = {
    "system/cpu",
    "system/memory_percent",
    "system/proc.memory.rssMB",
    "system/proc.memory.percent",
    "system/proc.cpu.threads",
    "system/network.sent",
    "system/network.recv",
}


def _system_rows(conn, run_pk: int) -> list[tuple]:
    return conn.execute(
        "SELECT k.key, s.step, s.value FROM system_metrics s JOIN metric_keys k ON k.id = s.key_id"
        " WHERE s.run_pk = %s ORDER BY s.seq",
        (run_pk,),
    ).fetchall()


def _sampler_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "engine-sdk-system"]


def test_a_sample_has_the_wandb_names():
    sample = dict(SystemSampler().sample())
    assert set(sample) >= EXPECTED
    assert all(isinstance(v, float) for v in sample.values())
    assert 0 <= sample["system/cpu"] <= 100 * 64 and sample["system/proc.memory.rssMB"] > 1
    assert sample["system/proc.cpu.threads"] >= 1
    assert not any(k.startswith("system/gpu.") for k in sample)  # pynvml is not installed here


def test_samples_land_in_system_metrics_and_series_state(conn, database_url, monkeypatch):
    set_env(monkeypatch, flush_interval=0.2)
    before = len(_sampler_threads())
    run = engine.init(project="acme/vision", system_metrics_interval=0.2)
    run.log({"loss": 1.0})
    assert wait_for(
        lambda: len({s for k, s, _ in _system_rows(conn, run.pk) if k == "system/cpu"}) >= 3, timeout=15
    )
    run.finish()
    rows = _system_rows(conn, run.pk)
    assert {k for k, _, _ in rows} >= EXPECTED
    cpu_steps = [s for k, s, _ in rows if k == "system/cpu"]
    assert cpu_steps == list(range(len(cpu_steps)))  # each sample's index is its step
    n_finite, tail_step = conn.execute(
        "SELECT n_finite, tail_step FROM series_state s JOIN metric_keys k ON k.id = s.key_id"
        " WHERE s.run_pk = %s AND k.key = 'system/cpu'",
        (run.pk,),
    ).fetchone()
    assert n_finite == len(cpu_steps) and tail_step == cpu_steps
    # the user's own metrics stay in metric_points, the samples out of it
    assert conn.execute("SELECT count(*) FROM metric_points WHERE run_pk = %s", (run.pk,)).fetchone()[0] == 1
    # the sampler stops at finish
    assert len(_sampler_threads()) == before
    time.sleep(0.5)
    assert len(_system_rows(conn, run.pk)) == len(rows)


def test_interval_zero_disables_the_sampler(conn, database_url):
    before = len(_sampler_threads())
    with engine.init(project="acme/vision", system_metrics_interval=0) as run:
        assert len(_sampler_threads()) == before
        time.sleep(0.3)
    assert _system_rows(conn, run.pk) == []


def test_the_interval_comes_from_the_settings(conn, database_url, monkeypatch):
    set_env(monkeypatch, system_metrics_interval=0.1)
    with engine.init(project="acme/vision") as run:
        assert wait_for(lambda: run._stream.system_step >= 1, timeout=10)
    assert {s for k, s, _ in _system_rows(conn, run.pk) if k == "system/cpu"} >= {0, 1}


def test_a_resumed_run_continues_the_sample_index(conn, database_url):
    with engine.init(project="acme/vision", id="sys", system_metrics_interval=0.1) as run:
        assert wait_for(lambda: run._stream.system_step >= 1, timeout=10)
    first = max(s for k, s, _ in _system_rows(conn, run.pk) if k == "system/cpu")
    with engine.init(project="acme/vision", id="sys", resume=True, system_metrics_interval=0.1) as again:
        assert wait_for(lambda: again._stream.system_step > first, timeout=10)
    steps = [s for k, s, _ in _system_rows(conn, run.pk) if k == "system/cpu"]
    assert steps == list(range(len(steps)))
