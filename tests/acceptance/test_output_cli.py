"""`engine rules list`, `engine history` and `engine deliveries` piped into another program,
as scripts use them: whole tables (not squeezed into 80 columns), `--format json|tsv`, and
`--since` in every form it accepts, including each one its error suggests."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import engine
from tests.integration.evaluation_helpers import apply_yaml, rule, tick, triggers

ENGINE = Path(sys.executable).parent / "engine"
REPO = Path(__file__).resolve().parents[2]
LONG = "accuracy-of-the-long-running-resnet-sweep-on-the-vision-project-is-above-the-bar"  # 82 characters
PROJECT = "acme-research-laboratories/vision-transformers-large-scale"
ERROR = "HTTP 503 from receiver:\n\tline two\\with a backslash"


def engine_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """As a script runs it: stdout is a pipe, and no COLUMNS tells rich a width."""
    full = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")} | env
    return subprocess.run(
        [str(ENGINE), *args], env=full, cwd=REPO, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def fired(conn, database_url) -> list[dict]:
    """Two automations that fired on one run (a long name, a long scope), and a delivery
    whose error holds a newline, a tab and a backslash."""
    apply_yaml(
        conn,
        rule(
            LONG,
            '{type: run_metric_threshold, metric: accuracy, window: 1, operator: ">", threshold: 0.5}',
            scope=f"{{project: {PROJECT}}}",
        ),
    )
    apply_yaml(
        conn, rule("finished", "{type: run_state, states: [finished]}", scope=f"{{project: {PROJECT}}}")
    )
    with engine.init(
        project=PROJECT, name="resnet-50-sweep-with-a-long-display-name", system_metrics_interval=0
    ) as run:
        run.log({"accuracy": 0.9}, step=0)
    tick(database_url)
    conn.execute(
        "UPDATE deliveries SET status = 'failed', last_error = %s WHERE automation_id = "
        "(SELECT id FROM automations WHERE name = %s)",
        (ERROR, LONG),
    )
    return triggers(conn)


def test_piped_tables_keep_every_cell_whole(fired):
    listed = engine_cli("rules", "list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    (row,) = [line for line in lines if LONG in line]
    assert PROJECT in row and "updated" in listed.stdout  # the updated column too, as on a wide terminal
    assert max(len(line) for line in lines) > 120

    history = engine_cli("history")
    assert history.returncode == 0, history.stderr
    (row,) = [line for line in history.stdout.splitlines() if LONG in line]
    assert "resnet-50-sweep-with-a-long-display-name" in row and "failed (0)" in row

    deliveries = engine_cli("deliveries")
    assert deliveries.returncode == 0, deliveries.stderr
    (row,) = [line for line in deliveries.stdout.splitlines() if LONG in line]
    ids = {str(d) for (d,) in _delivery_ids(fired)}
    assert any(delivery_id in row for delivery_id in ids)  # the whole id, not its first 8 characters
    assert (
        "HTTP 503 from receiver: line two\\with a backslash" in row
    )  # whole (blanks folded), on the row's line


def _delivery_ids(fired: list[dict]) -> list[tuple]:
    import psycopg

    with psycopg.connect(os.environ["ENGINE_DATABASE_URL"]) as conn:
        return conn.execute("SELECT id FROM deliveries ORDER BY id").fetchall()


def test_json_has_stable_keys_and_every_value(fired):
    listed = json.loads(engine_cli("rules", "list", "--format", "json").stdout)
    assert [item["name"] for item in listed] == sorted([LONG, "finished"])
    assert list(listed[0]) == [
        "name",
        "enabled",
        "version",
        "rule_type",
        "scope",
        "triggers",
        "updated_at",
        "last_error",
    ]
    by_name = {item["name"]: item for item in listed}
    assert by_name[LONG] | {"updated_at": None} == {
        "name": LONG, "enabled": True, "version": 1, "rule_type": "run_metric_threshold", "scope": PROJECT,
        "triggers": 1, "updated_at": None, "last_error": None,
    }  # fmt: skip
    datetime.fromisoformat(by_name[LONG]["updated_at"])

    history = json.loads(engine_cli("history", "--format", "json").stdout)
    assert sorted(item["trigger_id"] for item in history) == sorted(t["id"] for t in fired)
    assert list(history[0]) == [
        "trigger_id", "fired_at", "automation", "event_type", "entity", "project", "run_id", "run_name", "metric",
        "value", "step", "alias", "tag", "artifact_version", "action_type", "delivery_status", "attempts",
        "last_http_status", "last_error", "automation_deleted_at", "rule_type",
    ]  # fmt: skip
    (metric,) = [item for item in history if item["automation"] == LONG]
    assert (metric["event_type"], metric["rule_type"]) == ("RUN_METRIC", "run_metric_threshold")
    assert (metric["value"], metric["step"], metric["metric"], metric["delivery_status"]) == (
        0.9,
        0,
        "accuracy",
        "failed",
    )
    assert metric["last_error"] == ERROR and metric["automation_deleted_at"] is None

    deliveries = json.loads(engine_cli("deliveries", "--format", "json").stdout)
    assert sorted(item["id"] for item in deliveries) == sorted(str(d) for (d,) in _delivery_ids(fired))
    assert {item["automation"]: item["status"] for item in deliveries} == {
        LONG: "failed",
        "finished": "skipped",
    }

    empty = engine_cli("deliveries", "--status", "pending", "--format", "json")
    assert empty.returncode == 0 and json.loads(empty.stdout) == []


def test_tsv_is_one_line_per_row_with_escaped_values(fired):
    result = engine_cli("deliveries", "--format", "tsv")
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.rstrip("\n").split("\n")
    keys = header.split("\t")
    assert keys[:5] == ["id", "trigger_id", "automation", "action_type", "status"]
    assert len(rows) == 2 and all(len(row.split("\t")) == len(keys) for row in rows)
    (row,) = [dict(zip(keys, row.split("\t"))) for row in rows if LONG in row]
    assert row["last_error"] == "HTTP 503 from receiver:\\n\\tline two\\\\with a backslash"
    assert row["last_http_status"] == ""  # empty, not None

    for command in (["rules", "list"], ["history"]):
        result = engine_cli(*command, "--format", "tsv")
        assert result.returncode == 0, result.stderr
        lines = result.stdout.rstrip("\n").split("\n")
        assert len(lines) == 3 and len({len(line.split("\t")) for line in lines}) == 1


def test_since_reads_dates_without_a_zone_and_day_names(fired):
    today = datetime.now(UTC).date()
    every = {t["id"] for t in fired}
    for since in (
        "today",
        "yesterday",
        "1h",
        str(today),
        f"{today}T00:00",
        f"{today - timedelta(days=1)}T23:00+00:00",
    ):
        result = engine_cli("history", "--since", since, "--format", "json")
        assert result.returncode == 0, (since, result.stderr)
        assert {item["trigger_id"] for item in json.loads(result.stdout)} == every, since
    tomorrow = engine_cli("history", "--since", str(today + timedelta(days=1)), "--format", "json")
    assert tomorrow.returncode == 0 and json.loads(tomorrow.stdout) == []


def since_error(*command: str) -> tuple[str, list[str]]:
    """The message of a --since the command cannot read, and the values it suggests."""
    result = engine_cli(*command, "--since", "7 days", COLUMNS="400")
    assert result.returncode == 2  # a usage error, not a traceback
    found = re.search(
        r"(Invalid value for '--since': .*?try one of: (.*?)) │ ╰", " ".join(result.stderr.split())
    )
    assert found, result.stderr
    return found.group(1), found.group(2).split(", ")


@pytest.mark.slow
def test_every_suggestion_of_a_since_error_reads(database_url):
    message, suggestions = since_error("history")
    assert "cannot read '7 days'" in message
    assert suggestions[0] == "7d" and len(suggestions) >= 5
    for suggestion in suggestions:
        again = engine_cli("history", "--since", suggestion)
        assert again.returncode == 0, (suggestion, again.stderr)
    # `rules test` reads --since with the same parser: the same advice
    assert since_error("rules", "test", "rules/run-failed.yaml") == (message, suggestions)
    assert engine_cli("rules", "test", "rules/run-failed.yaml", "--since", suggestions[-1]).returncode == 0
