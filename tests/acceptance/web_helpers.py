"""`engine web` in a subprocess on a free port of 127.0.0.1, as an operator starts it, with
its output captured (tests read it to check that no key ever reaches a log)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from datetime import timedelta
from pathlib import Path

import httpx

from engine import keys
from engine.actions import silences
from tests.acceptance.service_helpers import ENGINE, wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WebProcess:
    def __init__(self, database_url: str, log_path: Path, *, workers: int = 1, **env: str):
        self.database_url, self.log_path, self.workers, self.env = database_url, log_path, workers, env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> WebProcess:
        env = {**os.environ, "ENGINE_DATABASE_URL": self.database_url, "ENGINE_LOG_LEVEL": "INFO", **self.env}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [ENGINE, "web", "--port", str(self.port), "--workers", str(self.workers)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        assert wait_until(self._healthy, timeout=60), self.log()
        return self

    def _healthy(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, self.log()
        try:
            return httpx.get(self.url + "/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


def make_key(conn, name: str, role: str, *scopes: str) -> str:
    key, _ = keys.create(conn, name, role=role, scopes=list(scopes or ("*",)))
    return key


# -- a deployment with two teams: `acme/vision` (the keys' scope) and `other/proj` ----------
RULE = """\
name: {name}
scope: {{project: {project}}}
event: {{type: run_metric_threshold, metric: loss, window: 1, operator: "<", threshold: 1}}
action: {{type: no_op}}
"""


class TwoTeams:
    """Runs, an artifact version, automations, a trigger and a delivery in `acme/vision` and in
    `other/proj`; `other` holds the ids of the other team's things (what scoped keys may not touch)."""

    def __init__(self, conn):
        import engine as sdk
        from engine import automations
        from tests.integration.actions_helpers import fire

        for project, run_id in (("acme/vision", "run-a"), ("other/proj", "run-o")):
            run = sdk.init(project=project, id=run_id, system_metrics_interval=0)
            run.log({"loss": 0.5})
            run.log_artifact("data", type="dataset")
            run.finish()
        automations.apply_rules(
            conn,
            [
                automations.parse_rules_text(RULE.format(name=name, project=project))[0].automation
                for name, project in (("acme-rule", "acme/vision"), ("other-rule", "other/proj"))
            ],
        )
        (other_id,) = conn.execute("SELECT id FROM automations WHERE name = 'other-rule'").fetchone()
        (run_pk,) = conn.execute("SELECT id FROM runs WHERE run_id = 'run-o'").fetchone()
        action = {"type": "webhook", "url": "https://hooks.example.com/x", "max_attempts": 1}
        self.trigger_id, (self.delivery_id,) = fire(conn, other_id, [action], run_pk=run_pk)
        silence_id = silences.add(
            conn, automation="other-rule", duration=timedelta(hours=1), reason="their own"
        )
        self.other = {
            "entity": "other",
            "project": "proj",
            "run_id": "run-o",
            "collection": "data",
            "version": "latest",
            "name": "other-rule",
            "delivery_id": str(self.delivery_id),
            "trigger_id": str(self.trigger_id),
            "silence_id": str(silence_id),
            "alias": "production",
            "tag": "europe",
            "registry": "other-reg",  # a registry the acme keys do not cover
            "registry_collection": "c",
        }
