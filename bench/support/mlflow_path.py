"""The MLflow path of bench/ingest.py: the official MLflow client's batch logging into a real
`engine web` (its /mlflow endpoint), one run at a time.

`engine web` runs as an operator starts it (a subprocess on 127.0.0.1, one worker) on its own
database, with an ingest key; the client is configured as its users configure it
(MLFLOW_TRACKING_URI, MLFLOW_TRACKING_TOKEN). A run is timed from `create_run` to
`set_terminated`, its points sent with `log_batch` in MLflow's batches of at most 1,000
metrics (the client's own limit), each point with its step and timestamp.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg

from engine import keys

MLFLOW_BATCH = 1000  # metrics per log_batch request: the MLflow client refuses more


class MlflowPath:
    """Each `run(r)` logs one run through the MLflow client and returns the seconds it took."""

    def __init__(self, url: str, data: list[dict[str, float]]):
        with psycopg.connect(url, autocommit=True) as conn:
            token, _ = keys.create(conn, "bench-mlflow", role="ingest", scopes=["*"])
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        engine_cli = str(Path(sys.executable).parent / "engine")
        env = {**os.environ, "ENGINE_DATABASE_URL": url, "ENGINE_LOG_LEVEL": "WARNING"}
        self.web = subprocess.Popen(
            [engine_cli, "web", "--port", str(port)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.web.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("engine web did not start for the MLflow path")
            time.sleep(0.2)
        os.environ["MLFLOW_TRACKING_URI"] = base + "/mlflow"
        os.environ["MLFLOW_TRACKING_TOKEN"] = token
        from mlflow import MlflowClient
        from mlflow.entities import Metric

        self.client = MlflowClient()
        self.experiment_id = self.client.create_experiment("bench/ingest")
        start = int(time.time() * 1000)
        # the same values as the other paths, as MLflow metrics (built once, like their payloads)
        points = [
            Metric(k, v, start + step, step) for step, values in enumerate(data) for k, v in values.items()
        ]
        self.batches = [points[i : i + MLFLOW_BATCH] for i in range(0, len(points), MLFLOW_BATCH)]

    def run(self, r: int) -> float:
        client = self.client
        begin = time.perf_counter()
        run_id = client.create_run(self.experiment_id, run_name=f"run-{r}").info.run_id
        for batch in self.batches:
            client.log_batch(run_id, metrics=batch)
        client.set_terminated(run_id)
        return time.perf_counter() - begin

    def close(self) -> None:
        self.web.send_signal(signal.SIGTERM)
        try:
            self.web.wait(20)
        except subprocess.TimeoutExpired:
            self.web.kill()
            self.web.wait(10)
