"""System metrics sampled while a run is active, with W&B's key names.

Stored as `system/<name>` in `metric_keys` / `system_metrics`; a sample's index in the run's
sequence (0, 1, 2, ...) is its step. GPU metrics appear only when pynvml is importable and
sees a GPU.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psutil

from engine.names import SYSTEM_PREFIX

log = logging.getLogger(__name__)
MB = 1024 * 1024


class SystemSampler:
    """Reads the machine's and the process's counters; `sample()` gives one set of values."""

    def __init__(self) -> None:
        self._proc = psutil.Process()
        psutil.cpu_percent(interval=None)  # primes the counter: the next call measures from here
        self._disk0 = _disk()
        self._net0 = psutil.net_io_counters()
        self._nvml = _nvml()

    def sample(self) -> list[tuple[str, float]]:
        """`[("system/cpu", 12.5), ("system/memory_percent", 40.1), ...]`"""
        p = self._proc
        with p.oneshot():
            rss = p.memory_info().rss
            values = [
                ("cpu", psutil.cpu_percent(interval=None)),
                ("memory_percent", psutil.virtual_memory().percent),
                ("proc.memory.rssMB", rss / MB),
                ("proc.memory.percent", p.memory_percent()),
                ("proc.cpu.threads", p.num_threads()),
            ]
        disk = _disk()
        if disk is not None and self._disk0 is not None:
            values += [
                ("disk.in", (disk.read_bytes - self._disk0.read_bytes) / MB),
                ("disk.out", (disk.write_bytes - self._disk0.write_bytes) / MB),
            ]
        net = psutil.net_io_counters()
        if net is not None and self._net0 is not None:
            values += [
                ("network.sent", net.bytes_sent - self._net0.bytes_sent),
                ("network.recv", net.bytes_recv - self._net0.bytes_recv),
            ]
        if self._nvml is not None:
            values += _gpu_values(self._nvml)
        return [(SYSTEM_PREFIX + name, float(value)) for name, value in values]


class SamplerThread:
    """Calls `emit(sampler.sample())` every `interval` seconds until `stop()`."""

    def __init__(self, emit: Callable[[list[tuple[str, float]]], None], interval: float):
        self._emit = emit
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="engine-sdk-system", daemon=True)
        self._sampler = SystemSampler()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._emit(self._sampler.sample())
            except Exception:  # a sampler problem must never break the training job
                log.warning("system metrics sample failed", exc_info=True)


def _disk():
    try:
        return psutil.disk_io_counters()
    except Exception:  # no disk counters in some containers
        return None


def _nvml():
    try:
        import pynvml  # type: ignore[import-not-found]  # optional; not a dependency

        pynvml.nvmlInit()
        return pynvml
    except Exception:
        return None


def _gpu_values(nvml) -> list[tuple[str, float]]:
    values: list[tuple[str, float]] = []
    try:
        for i in range(nvml.nvmlDeviceGetCount()):
            h = nvml.nvmlDeviceGetHandleByIndex(i)
            util = nvml.nvmlDeviceGetUtilizationRates(h)
            values += [
                (f"gpu.{i}.gpu", util.gpu),
                (f"gpu.{i}.memory", util.memory),  # W&B: percent of time memory was read or written
                (f"gpu.{i}.temp", nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU)),
                (f"gpu.{i}.powerWatts", nvml.nvmlDeviceGetPowerUsage(h) / 1000.0),
            ]
    except Exception:
        log.debug("GPU metrics unavailable", exc_info=True)
    return values
