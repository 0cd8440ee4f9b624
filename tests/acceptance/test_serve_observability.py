"""`engine serve --metrics-port PORT` with ENGINE_LOG_FORMAT=json, in a subprocess as it is
deployed: Prometheus can scrape it, and every line it logs is one JSON object."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

import engine
from tests.integration.evaluation_helpers import apply_yaml, rule
from tests.receiver import free_port

ENGINE = Path(sys.executable).parent / "engine"


def test_serve_exports_metrics_and_logs_json(conn, database_url, tmp_path):
    apply_yaml(
        conn,
        rule("acc", '{type: run_metric_threshold, metric: acc, window: 1, operator: ">", threshold: 0.5}'),
    )
    port = free_port()
    env = {
        **os.environ,
        "ENGINE_LOG_FORMAT": "json",
        "ENGINE_LOG_LEVEL": "INFO",
        "ENGINE_METRICS_ADDRESS": "127.0.0.1",
    }
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(ENGINE), "serve", "--interval", "0.5", "--metrics-port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        with engine.init(project="acme/vision", name="r", system_metrics_interval=0) as run:
            run.log({"acc": 0.9})
        deadline, text = time.monotonic() + 30, ""
        while time.monotonic() < deadline:
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
            except httpx.TransportError:
                text = ""
            if "engine_tick_triggers_fired_total 1.0" in text:
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

    assert "engine_tick_triggers_fired_total 1.0" in text, text[-2000:]
    assert 'engine_triggers_total{automation="acc"} 1.0' in text
    assert 'engine_deliveries{status="skipped"} 1.0' in text  # a no_op action is recorded, not sent
    lines = log_path.read_text().splitlines()
    entries = [json.loads(line) for line in lines]  # every line is JSON (raises otherwise)
    assert entries and all({"time", "level", "logger", "message"} <= entry.keys() for entry in entries)
    messages = [(e["logger"], e["message"]) for e in entries]
    assert any(logger == "engine.prometheus" and f":{port}/metrics" in m for logger, m in messages)
    assert any(logger == "engine.scheduler" and "1 fired" in m for logger, m in messages)
    assert any(
        logger == "engine.scheduler" and m.startswith("engine serve: received SIGTERM")
        for logger, m in messages
    )
