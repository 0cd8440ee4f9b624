"""Run `engine serve` in subprocesses, as a user (or systemd) would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ENGINE = str(Path(sys.executable).with_name("engine"))


class ServeProcess:
    def __init__(
        self, url: str, log_path: Path, interval: float = 0.5, extra_env: dict[str, str] | None = None
    ):
        self.url, self.log_path, self.interval = url, log_path, interval
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen | None = None

    def start(self) -> ServeProcess:
        env = {**os.environ, "ENGINE_DATABASE_URL": self.url, "ENGINE_LOG_LEVEL": "INFO", **self.extra_env}
        with self.log_path.open("ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [ENGINE, "serve", "--interval", str(self.interval)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 20) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop_quietly(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def wait_until(predicate: Callable[[], bool], timeout: float = 30, every: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return predicate()
