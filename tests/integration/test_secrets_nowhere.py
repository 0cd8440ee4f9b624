"""Secrets after a full run through the service: SDK -> `Service` (evaluator, outbox,
dispatcher) -> a careless receiver that echoes every header back, first with a 500, then a
200. The receiver gets the secrets; afterwards none of them is in a pg_dump of the database,
in any engine.* log record at DEBUG (text and JSON format), in the Prometheus metrics, or in
the output of `engine rules show`, `engine deliveries`, `engine history` and `engine doctor`.

test_actions_secrets.py checks the same of the dispatcher alone (with Slack actions too);
this one runs the whole service as deployed, with the rule applied from YAML.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
from typer.testing import CliRunner

import engine
from engine.cli import app
from engine.logs import JsonFormatter
from engine.scheduler import Service
from engine.settings import Settings
from tests.integration.actions_helpers import FINAL
from tests.integration.evaluation_helpers import apply_yaml
from tests.receiver import Received, Receiver, Reply, free_port

ENGINE = Path(sys.executable).parent / "engine"


def pg_dump() -> str:
    bindir = (
        subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True).stdout.strip()
        if shutil.which("pg_config")
        else ""
    )
    for candidate in (Path(bindir) / "pg_dump", Path("/usr/lib/postgresql/15/bin/pg_dump")):
        if candidate.exists():
            return str(candidate)
    found = shutil.which("pg_dump")
    assert found, "pg_dump not found"
    return found


def careless(status: int):
    """Echoes the headers it received (the Authorization and signature among them)."""

    def reply(request: Received) -> Reply:
        return Reply(
            status, json.dumps({"you_sent": request.headers, "body": request.body.decode()}).encode()
        )

    return reply


def test_no_secret_in_the_database_logs_metrics_or_cli_after_a_full_run(
    conn, database_url, monkeypatch, caplog
):
    token, key = "tok-" + uuid.uuid4().hex, "hmac-" + uuid.uuid4().hex
    monkeypatch.setenv("SECRET_X_TOKEN", token)
    monkeypatch.setenv("SECRET_X_HMAC", key)
    caplog.set_level(logging.DEBUG)
    json_lines = io.StringIO()
    json_handler = logging.StreamHandler(json_lines)
    json_handler.setFormatter(JsonFormatter())
    json_handler.setLevel(logging.DEBUG)
    logging.getLogger().addHandler(json_handler)
    port = free_port()
    try:
        with Receiver(careless(500), careless(200)) as rx:
            apply_yaml(
                conn,
                "name: secretive\nscope: {project: acme/vision}\n"
                'event: {type: run_metric_threshold, metric: acc, window: 1, operator: ">", threshold: 0.5}\n'
                f"action:\n  type: webhook\n  url: {rx.url('/hook')}\n"
                "  access_token: {env: SECRET_X_TOKEN}\n  secret: {env: SECRET_X_HMAC}\n"
                '  headers: {X-Copy: "k=${SECRET_X_HMAC}"}\n'
                '  payload: {token: "${ACCESS_TOKEN}", run: "${run_name}", value: "${metric_value}"}\n',
            )
            settings = Settings(
                database_url=database_url,
                webhook_allow_hosts="127.0.0.1",
                retry_base_seconds=0.05,
                interval=0.5,
                metrics_port=port,
                metrics_address="127.0.0.1",
            )
            service = Service(settings)
            service.start()
            try:
                with engine.init(
                    project="acme/vision", name="secret-run", user="alice", system_metrics_interval=0
                ) as run:
                    run.log({"acc": 0.9})
                deadline = time.monotonic() + 30
                while conn.execute("SELECT status FROM deliveries").fetchone() is None or (
                    conn.execute("SELECT status FROM deliveries").fetchone()[0] not in FINAL
                ):
                    assert time.monotonic() < deadline, "the delivery did not settle"
                    time.sleep(0.1)
                metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            finally:
                service.stop()
    finally:
        logging.getLogger().removeHandler(json_handler)

    # Positive control: the secrets did travel, to the receiver only, twice (500, then 200).
    assert [r.headers["Authorization"] for r in rx.requests] == [f"Bearer {token}"] * 2
    assert rx.requests[-1].headers["X-Copy"] == f"k={key}" and rx.requests[-1].json()["token"] == token
    body = rx.requests[-1].body
    assert (
        rx.requests[-1].headers["X-Automation-Signature"]
        == base64.b64encode(hmac.new(key.encode(), body, hashlib.sha256).digest()).decode()
    )
    assert conn.execute("SELECT status, attempts FROM deliveries").fetchone() == ("succeeded", 2)
    assert 'engine_deliveries{status="succeeded"} 1.0' in metrics

    dump = subprocess.run(
        [pg_dump(), "--dbname", database_url], capture_output=True, text=True, check=True
    ).stdout
    assert "secret-run" in dump and "[redacted]" in dump  # the data is there, the echoed headers scrubbed
    runner = CliRunner()
    cli = "\n".join(
        runner.invoke(app, args).output
        for args in (["rules", "show", "secretive"], ["deliveries"], ["history"], ["rules", "list"])
    )
    doctor = subprocess.run(
        [str(ENGINE), "doctor", "--timeout", "1"],
        env={**os.environ, "ENGINE_RULES_PATH": "/nonexistent"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "✓ secret SECRET_X_TOKEN" in doctor.stdout
    logs = caplog.text + "\n".join(r.getMessage() for r in caplog.records) + json_lines.getvalue()
    assert any(r.name.startswith("engine.actions") for r in caplog.records)  # the dispatcher did log
    assert "delivery" in json_lines.getvalue()
    for secret in (token, key, token.removeprefix("tok-"), key.removeprefix("hmac-")):
        for where, text in (
            ("pg_dump", dump),
            ("logs", logs),
            ("metrics", metrics),
            ("CLI", cli),
            ("doctor", doctor.stdout + doctor.stderr),
        ):
            assert secret not in text, f"a secret is in the {where} output"
