"""`engine silence add|list|end` as an operator runs them, and what `engine history` and
`engine deliveries` then show for the triggers a silence and a rate limit held back."""

from __future__ import annotations

import json
import subprocess

import engine
from tests.acceptance.service_helpers import ENGINE
from tests.integration.evaluation_helpers import apply_yaml, tick

RULES = """\
name: noisy
scope: {project: acme/vision}
event: {type: run_metric_threshold, metric: loss, window: 1, operator: ">", threshold: 1}
action: {type: webhook, url: "http://127.0.0.1:9/hook"}
---
name: limited
scope: {project: acme/audio}
event: {type: run_metric_threshold, metric: loss, window: 1, operator: ">", threshold: 1}
action: {type: webhook, url: "http://127.0.0.1:9/hook", rate_limit: {count: 1, per: 1h}}
"""


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ENGINE, *args], capture_output=True, text=True, timeout=120, check=False)


def crossing(project: str, count: int) -> None:
    for i in range(count):
        run = engine.init(project=project, name=f"r{i}", system_metrics_interval=0)
        run.log({"loss": 5.0}, step=0)
        run.finish()


def test_silence_commands_and_the_statuses_history_and_deliveries_show(conn, database_url):
    apply_yaml(conn, RULES)
    added = cli("silence", "add", "--automation", "noisy", "--for", "2h", "--reason", "known flaky metric")
    assert added.returncode == 0, added.stderr
    assert added.stdout.startswith("silence 1: automation noisy until ")
    assert "engine silence end 1" in added.stdout

    crossing("acme/vision", 2)
    crossing("acme/audio", 2)
    tick(database_url)

    listed = json.loads(cli("silence", "list", "--format", "json").stdout)
    assert [(s["id"], s["automation"], s["reason"], s["active"], s["silenced"]) for s in listed] == [
        (1, "noisy", "known flaky metric", True, 2)
    ]
    table = cli("silence", "list").stdout
    assert "automation noisy" in table and "active" in table

    history = json.loads(cli("history", "--format", "json").stdout)
    by_automation = sorted((h["automation"], h["delivery_status"]) for h in history)
    assert by_automation == [
        ("limited", "pending"),
        ("limited", "suppressed"),
        ("noisy", "silenced"),
        ("noisy", "silenced"),
    ]
    suppressed = json.loads(cli("deliveries", "--status", "suppressed", "--format", "json").stdout)
    assert [(d["automation"], d["last_error"]) for d in suppressed] == [
        ("limited", "rate limit reached (1 per 1h)")
    ]
    silenced = cli("deliveries", "--status", "silenced").stdout
    assert "silenced by silence 1: known flaky metric" in silenced

    ended = cli("silence", "end", "1")
    assert ended.returncode == 0 and ended.stdout.startswith("silence 1 ended at ")
    assert json.loads(cli("silence", "list", "--format", "json").stdout) == []
    again = cli("silence", "end", "1")
    assert again.returncode == 1 and "silence 1 already ended" in again.stderr
    refused = cli(
        "redeliver",
        str(json.loads(cli("deliveries", "--status", "silenced", "--format", "json").stdout)[0]["id"]),
    )
    assert refused.returncode == 1 and "it is never sent" in refused.stderr


def test_silence_add_says_what_is_missing(conn, database_url):
    both = cli(
        "silence", "add", "--automation", "a", "--project", "acme/vision", "--for", "1h", "--reason", "x"
    )
    assert both.returncode == 2 and "exactly one of --automation NAME or --project" in both.stderr
    past = cli("silence", "add", "--project", "acme/vision", "--until", "2020-01-01", "--reason", "x")
    assert past.returncode == 2 and "is not in the future" in past.stderr
    ghost = cli("silence", "add", "--automation", "ghost", "--for", "1h", "--reason", "x")
    assert ghost.returncode == 1 and "no automation named 'ghost'" in ghost.stderr
    future = cli(
        "silence",
        "add",
        "--project",
        "acme/new-sweep",
        "--until",
        "2999-01-01T00:00",
        "--reason",
        "before it starts",
    )
    assert future.returncode == 0 and "project acme/new-sweep until 2999-01-01 00:00:00 UTC" in future.stdout
