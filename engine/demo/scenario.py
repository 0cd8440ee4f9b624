"""The demo's simulated training, logged with the SDK exactly as a training script would.

Each step below is what makes one example rule fire (engine/demo/rules.py: EXPECTED):

1. `prepare-mnist` logs the dataset `mnist` (v0 becomes `latest`); the collection is tagged
   `needs-review`.
2. A sweep of three runs trains side by side; each one's accuracy climbs past 0.6. Meanwhile
   a data-loading burst keeps every CPU busy (real work in child processes), which the runs'
   system-metric samplers record as `system/cpu`. Each sweep run logs its model.
3. Four runs at once: `finetune-plateau` (the loss plateaus, then a learning-rate drop cuts
   it by more than a quarter), `resnet-bad-aug` (its loss goes NaN, it alerts, then an
   exception escapes its `with` block: failed), `resnet-spike` (a bad batch: its loss jumps
   far above the 30 values before it, a z-score) and `resnet-long` (killed by an
   administrator: killed runs never trigger).
4. `prepare-mnist-v2` logs mnist v1 (`latest` moves to it); mnist is reviewed (its
   `needs-review` tag taken off) and tagged `golden`; the best model is promoted to
   `production`, linked into the `model` registry and tagged `europe-west`.
5. `resnet-hang` logs a few steps, then hangs (its system metrics go on). The demo's stall
   rules look ahead on the clock by their `after` less HANG_SECONDS (clock.skipped_ahead), so
   the evaluation service finds the run silent past its deadline after HANG_SECONDS of real
   silence; once the stall has fired, an administrator kills the run.

Curves are deterministic (a seeded generator), so every demo tells the same story.
"""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TypeVar

import psutil

import engine
from engine import clock
from engine.sdk import ArtifactVersion

T = TypeVar("T")

SAMPLE_INTERVAL = 0.2  # seconds between system metric samples (15 s outside the demo)
HANG_SECONDS = 3.0  # real silence after which the demo's stall rules find resnet-hang stalled
STALL_WAIT = 30.0  # seconds resnet-hang waits for the stall trigger before it is killed anyway


@dataclass
class RunView:
    """What the live table shows about one run; written by the scenario's threads."""

    name: str
    note: str  # what the run is for, then what became of it
    state: str = "waiting"
    step: int = -1
    metrics: dict[str, float] = field(default_factory=dict)


class CpuBurst:
    """Keep every CPU busy for a while: one low-priority spinning process per CPU."""

    CODE = "import os, sys, time\nos.nice(19)\nend = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < end:\n    pass\n"

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        # the CPUs this process may use, at most 32 spinners (a big machine gets a lowered
        # threshold and a note instead: see engine/cli/demo.py)
        usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        self.cpus = max(1, min(usable, 32))

    def start(self, seconds: float) -> None:
        self.procs = [
            subprocess.Popen([sys.executable, "-c", self.CODE, str(seconds)], stdin=subprocess.DEVNULL)
            for _ in range(self.cpus)
        ]

    def wait(self) -> None:
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs = []

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        self.wait()

    @classmethod
    def measure(cls, seconds: float = 0.5) -> float:
        """The machine's CPU percent (all CPUs) while a burst runs: below ~95 % means the
        demo's processes cannot fill the CPUs psutil sees (a container's CPU quota, say)."""
        burst = cls()
        burst.start(seconds + 0.3)
        try:
            time.sleep(0.15)  # let the spinners start
            return psutil.cpu_percent(interval=seconds)
        finally:
            burst.stop()


class Scenario:
    """Runs the story in a background thread; `views`, `phase` and `error` are read by the display."""

    def __init__(
        self, project: str, *, burst_seconds: float = 2.5, stall_rules: dict[str, timedelta] | None = None
    ):
        self.project = project
        self.burst_seconds = burst_seconds
        # the demo's stall automations (name -> after), and set once one of them has fired
        self.stall_rules = dict(stall_rules or {})
        self.stall_fired = threading.Event()
        self.phase = "starting"
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.views: dict[str, RunView] = {}
        self._rng = random.Random(20240601)
        self._rng_lock = threading.Lock()
        self._burst = CpuBurst()
        self._thread = threading.Thread(target=self._main, name="demo-scenario", daemon=True)
        for name, note in (
            ("prepare-mnist", "logs the dataset mnist"),
            ("sweep-lr-0.01", "sweep"),
            ("sweep-lr-0.003", "sweep"),
            ("sweep-lr-0.001", "sweep"),
            ("finetune-plateau", "loss plateaus, then the LR drops"),
            ("resnet-bad-aug", "will fail"),
            ("resnet-spike", "a bad batch will spike the loss"),
            ("resnet-long", "will be killed"),
            ("prepare-mnist-v2", "logs a new mnist version"),
            ("resnet-hang", "will hang"),
        ):
            self.views[name] = RunView(name, note)

    # -- control ----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def stop(self) -> None:
        self._burst.stop()

    def _main(self) -> None:
        try:
            self.phase = "1/5 logging the dataset mnist (v0 becomes latest)"
            self._dataset("prepare-mnist", rows=60_000)
            engine.Api(user="bob").add_collection_tag(f"{self.project}/mnist", "needs-review")
            self.phase = (
                f"2/5 sweep: 3 runs training; a data-loading burst keeps {self._burst.cpus} CPU(s) busy"
            )
            best = self._sweep()
            self.phase = "3/5 finetune-plateau trains; resnet-bad-aug fails; resnet-spike spikes; resnet-long gets killed"
            self._together(self._finetune_plateau, self._bad_augmentation, self._spike, self._long_and_killed)
            self.phase = "4/5 mnist v1 becomes latest; best model promoted to production, linked, tagged"
            self._dataset("prepare-mnist-v2", rows=70_000)
            api = engine.Api(user="carol")
            api.remove_collection_tag(f"{self.project}/mnist", "needs-review")  # reviewed
            api.add_collection_tag(f"{self.project}/mnist", "golden")
            api.add_alias(best, "production")
            staging = api.link_artifact(best, registry="model", collection="staging")
            api.link_artifact(best, registry="model", collection="vision-classifier")
            api.unlink_artifact(staging)  # promoted: it leaves staging
            api.add_tag(best, "europe-west")
            api.add_tag(best, "europe-north")
            api.remove_tag(best, "europe-north")  # a region given by mistake
            self.phase = "5/5 resnet-hang hangs: no metric value, its system metrics go on"
            self._hang()
            self.phase = "waiting for the last triggers and deliveries"
        except BaseException as exc:  # shown by the command, which exits 1
            self.error = exc
        finally:
            self._burst.stop()
            self.done.set()

    # -- helpers ----------------------------------------------------------------------------
    def _noise(self, scale: float) -> float:
        with self._rng_lock:
            return self._rng.gauss(0.0, scale)

    def _jitter(self, half_width: float) -> float:
        with self._rng_lock:
            return self._rng.uniform(-half_width, half_width)

    def _together(self, *jobs: Callable[[], T]) -> list[T]:
        """Run jobs in threads (runs of one process may log concurrently); re-raise the first error."""
        results: dict[int, T] = {}
        errors: list[BaseException] = []

        def call(i: int, job: Callable[[], T]) -> None:
            try:
                results[i] = job()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=call, args=(i, job), daemon=True) for i, job in enumerate(jobs)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return [results[i] for i in range(len(jobs))]

    def _log(self, run: engine.Run, view: RunView, data: dict[str, float], step: int) -> None:
        run.log(data, step=step)
        view.step = step
        view.metrics.update(data)

    # -- the story --------------------------------------------------------------------------
    def _dataset(self, name: str, rows: int) -> ArtifactVersion:
        view = self.views[name]
        view.state = "running"
        with engine.init(
            project=self.project,
            name=name,
            user="bob",
            config={"source": "mnist", "rows": rows},
            system_metrics_interval=0,
        ) as run:
            version = run.log_artifact("mnist", type="dataset", metadata={"rows": rows, "format": "parquet"})
        view.state = run.state
        view.note = f"mnist:v{version.version_index} ({rows} rows)"
        return version

    def _sweep(self) -> ArtifactVersion:
        # (learning rate, best accuracy, speed): all three pass 0.6, at different steps
        configs = [(0.01, 0.78, 7.0), (0.003, 0.91, 9.0), (0.001, 0.72, 13.0)]
        # the burst starts once the runs' samplers have a few quiet samples
        burst = threading.Timer(0.8, self._burst.start, args=(self.burst_seconds,))
        burst.start()
        try:
            models = self._together(*(lambda c=c: self._sweep_run(*c) for c in configs))
        finally:
            burst.cancel()
            self._burst.wait()
        return max(models, key=lambda v: v.metadata["accuracy"])

    def _sweep_run(self, lr: float, top: float, speed: float) -> ArtifactVersion:
        view = self.views[f"sweep-lr-{lr}"]
        view.state = "running"
        config = {"lr": lr, "batch_size": 128, "optimizer": "adamw", "epochs": 40}
        with engine.init(
            project=self.project,
            name=view.name,
            user="alice",
            config=config,
            system_metrics_interval=SAMPLE_INTERVAL,
        ) as run:
            for step in range(40):
                accuracy = 0.1 + (top - 0.1) * (1 - math.exp(-step / speed)) + self._noise(0.008)
                loss = 0.25 + 2.05 * math.exp(-step / speed) + abs(self._noise(0.015))
                self._log(run, view, {"accuracy": accuracy, "loss": loss}, step)
                time.sleep(0.1)
            model = run.log_artifact(
                "resnet",
                type="model",
                metadata={"accuracy": round(accuracy, 4), "lr": lr},
                aliases=["candidate"],
            )
        view.state = run.state
        view.note = f"resnet:v{model.version_index} (accuracy {accuracy:.2f})"
        return model

    def _finetune_plateau(self) -> None:
        view = self.views["finetune-plateau"]
        view.state = "running"
        with engine.init(
            project=self.project,
            name=view.name,
            user="alice",
            config={"lr": 1e-4, "schedule": "step"},
            system_metrics_interval=SAMPLE_INTERVAL,
        ) as run:
            for step in range(85):
                lr = 1e-4 if step < 65 else 1e-5
                # fine-tuning from a checkpoint: flat at ~0.92, until the learning rate drops at step 65
                loss = 0.92 if step < 65 else 0.45 + 0.47 * math.exp(-(step - 65) / 3)
                # bounded noise: a flat loss with it never spikes 3σ (that is resnet-spike's story)
                self._log(run, view, {"loss": loss + self._jitter(0.017), "lr": lr}, step)
                time.sleep(0.035)
        view.state = run.state
        view.note = "loss 0.92 flat, then 0.45 after the LR drop"

    def _bad_augmentation(self) -> None:
        view = self.views["resnet-bad-aug"]
        view.state = "running"
        try:
            with engine.init(
                project=self.project,
                name=view.name,
                user="dave",
                config={"augment": "mixup+cutmix"},
                system_metrics_interval=SAMPLE_INTERVAL,
            ) as run:
                for step in range(40):
                    loss = 2.3 - 0.03 * step + abs(self._noise(0.02)) if step < 14 else float("nan")
                    self._log(run, view, {"loss": loss, "accuracy": 0.1 + 0.01 * step}, step)
                    if loss != loss:  # NaN: raised at each step, sent once (wait_duration)
                        run.alert("loss is NaN", f"step {step}: augmentation broke the loss", "error", 300)
                    if step == 15:
                        raise RuntimeError("CUDA error: illegal memory access")
                    time.sleep(0.08)
        except RuntimeError as exc:
            view.note = f"{type(exc).__name__}: {exc}"
        view.state = run.state

    def _long_and_killed(self) -> None:
        view = self.views["resnet-long"]
        view.state = "running"
        killed = threading.Event()
        with engine.init(
            project=self.project,
            name=view.name,
            user="erin",
            config={"epochs": 300},
            system_metrics_interval=SAMPLE_INTERVAL,
        ) as run:

            def kill() -> None:
                engine.Api(user="admin").kill_run(self.project, run.id)
                killed.set()

            threading.Timer(1.8, kill).start()
            step = 0
            while not killed.is_set():
                self._log(
                    run, view, {"loss": 2.3 * math.exp(-step / 60), "accuracy": 0.1 + 0.004 * step}, step
                )
                step += 1
                time.sleep(0.1)
        view.state = run.state  # the run was killed meanwhile, so finishing it leaves it killed
        view.note = "killed by admin (never triggers)"

    def _spike(self) -> None:
        view = self.views["resnet-spike"]
        view.state = "running"
        rng = random.Random(7)  # its own generator: the same curve whatever the other threads draw
        with engine.init(
            project=self.project,
            name=view.name,
            user="dave",
            config={"batch_size": 256},
            system_metrics_interval=SAMPLE_INTERVAL,
        ) as run:
            for step in range(45):
                # a slow descent with noise; a corrupt batch at step 36 triples the loss for one step
                loss = 1.2 - 0.004 * step + rng.gauss(0.0, 0.02) + (2.4 if step == 36 else 0.0)
                self._log(run, view, {"loss": loss, "accuracy": 0.3 + 0.004 * step}, step)
                time.sleep(0.04)
        view.state = run.state
        view.note = "loss jumped at step 36 (a corrupt batch)"

    def _hang(self) -> None:
        """A training loop that stops logging; its sampler keeps going (system metrics do not
        count). The stall rules' `after` passes in HANG_SECONDS of real silence: their checks
        look ahead by the rest (the run's stamps and the deadline stay on the real clock)."""
        view = self.views["resnet-hang"]
        view.state = "running"
        ahead = {
            name: max(timedelta(0), after - timedelta(seconds=HANG_SECONDS))
            for name, after in self.stall_rules.items()
        }
        with engine.init(
            project=self.project,
            name=view.name,
            user="frank",
            config={"num_workers": 8},
            system_metrics_interval=SAMPLE_INTERVAL,
        ) as run:
            for step in range(10):
                self._log(run, view, {"loss": 1.9 - 0.04 * step, "accuracy": 0.2 + 0.01 * step}, step)
                time.sleep(0.05)
            run.flush()
            view.note = f"hangs after step 9 (a dataloader deadlock); stall rules: {HANG_SECONDS:g} s stand for their `after`"
            with clock.skipped_ahead(ahead):
                fired = self.stall_fired.wait(STALL_WAIT if ahead else HANG_SECONDS)
            engine.Api(user="admin").kill_run(self.project, run.id)
        view.state = run.state
        view.note = "stalled: found by run-stalled, then killed by admin" if fired else "killed by admin"
