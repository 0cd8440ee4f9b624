"""`engine rules …` in a subprocess, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import engine as engine_sdk
from tests.integration.evaluation_helpers import tick
from tests.integration.test_rule_store import row_counts

ENGINE = Path(sys.executable).parent / "engine"
REPO = Path(__file__).resolve().parents[2]

BAD = """\
name: broken
scope:
  registry: model
event:
  type: run_metric_threshold
  metric: accuracy
  window: 0
  operator: ">"
action:
  type: webhook
  url: https://ci.example.com/hook
  access_token: literal-token
"""


def engine_sdk_run():
    return engine_sdk.init(project="acme/vision", name="cli-run", system_metrics_interval=0)


def engine(
    *args: str, cwd: Path = REPO, stdin: str | None = None, columns: int = 200
) -> subprocess.CompletedProcess[str]:
    # ENGINE_DATABASE_URL and ENGINE_DATA_DIR come from the fixtures (or are absent).
    env = {**os.environ, "COLUMNS": str(columns)}
    return subprocess.run(
        [str(ENGINE), "rules", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        input=stdin,
    )


def test_validate_example_rules(monkeypatch):
    # Their receivers are on 127.0.0.1, allowed as the demo and the tour do (else each warns).
    monkeypatch.setenv("ENGINE_WEBHOOK_ALLOW_HOSTS", "127.0.0.1")
    result = engine("validate", "rules/")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok: 16 rules in 16 files"
    assert result.stderr == ""


def test_validate_defaults_to_the_rules_folder():
    result = engine("validate")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok: 16 rules in 16 files"


def test_validate_reports_every_error_with_file_and_line(tmp_path):
    (tmp_path / "bad.yaml").write_text(BAD)
    result = engine("validate", "bad.yaml", cwd=tmp_path, columns=40)  # never wrapped: one issue per line
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "bad.yaml:7: event.window: must be ≥ 1",
        "bad.yaml:4: event.threshold: field required",
        "bad.yaml:12: action.access_token: secrets come from the environment: write {env: NAME}, never the secret itself",
        "3 errors",
    ]
    assert "literal-token" not in result.stderr


def test_validate_prints_warnings_but_succeeds(tmp_path):
    (tmp_path / "warn.yaml").write_text(
        "name: w\nscope: {project: acme/vision}\nevent:\n  type: artifact_alias_added\n  alias_regex: production\n"
        "action: {type: no_op}\n"
    )
    result = engine("validate", "warn.yaml", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.strip() == "ok: 1 rule in 1 file"
    # at the field's line, as errors are
    assert "warn.yaml:5: warning: event.alias_regex: 'production' matches anywhere" in result.stderr


def test_missing_file(tmp_path):
    result = engine("validate", "nope.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert "nope.yaml: rule file not found: nope.yaml" in result.stderr


def test_apply_list_show_enable_disable_delete(database_url, tmp_path):
    first = engine("apply", "rules/")
    assert first.returncode == 0, first.stderr
    assert sorted(first.stdout.split()) == sorted(
        ["created"] * 16
        + ["accuracy-above-0.6", "loss-down-25pct", "run-failed", "cpu-above-90",
           "production-alias", "europe-tag", "model-registry-link", "dataset-latest",
           "training-alert", "europe-tag-removed", "registry-unlinked", "dataset-golden", "dataset-reviewed",
           "loss-spike-zscore", "loss-nan", "run-stalled"]
    )  # fmt: skip
    again = engine("apply", "rules/")
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("unchanged") == 16

    listed = engine("list")
    assert listed.returncode == 0, listed.stderr
    for name in ("accuracy-above-0.6", "model-registry-link", "registry:model", "acme/vision/mnist"):
        assert name in listed.stdout

    shown = engine("show", "accuracy-above-0.6")
    assert shown.returncode == 0, shown.stderr
    assert "name: accuracy-above-0.6" in shown.stdout
    assert "threshold: 0.6" in shown.stdout
    assert "# version: 1" in shown.stdout
    assert "env: ENGINE_DEMO_HMAC" in shown.stdout

    assert engine("disable", "run-failed").stdout.strip() == "disabled run-failed"
    assert engine("disable", "run-failed").stdout.strip() == "run-failed was already disabled"
    assert "# version: 2" in engine("show", "run-failed").stdout
    assert engine("enable", "run-failed").stdout.strip() == "enabled run-failed"

    refused = engine("delete", "europe-tag", stdin="n\n")
    assert refused.returncode == 1
    deleted = engine("delete", "europe-tag", "--yes")
    assert deleted.returncode == 0 and deleted.stdout.strip() == "deleted europe-tag"

    missing = engine("show", "europe-tags")
    assert missing.returncode == 1
    assert "no automation named 'europe-tags'" in missing.stderr
    gone = engine("show", "europe-tag")
    assert gone.returncode == 1
    assert "no automation named 'europe-tag': it was deleted on" in gone.stderr
    assert "(its history: engine history --automation europe-tag)" in gone.stderr

    (tmp_path / "only.yaml").write_text((REPO / "rules" / "run-failed.yaml").read_text())
    pruned = engine("apply", str(tmp_path / "only.yaml"), "--prune")
    assert pruned.returncode == 0, pruned.stderr
    lines = pruned.stdout.splitlines()
    assert lines[0].split() == ["unchanged", "run-failed"]
    assert sorted(line.split()[0] for line in lines[1:]) == ["deleted"] * 14


def test_apply_refuses_bad_rules_and_writes_nothing(database_url, tmp_path):
    (tmp_path / "bad.yaml").write_text(BAD)
    result = engine("apply", "bad.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert "bad.yaml:7: event.window: must be ≥ 1" in result.stderr
    listed = engine("list")
    assert "no automations" in listed.stdout


@pytest.mark.parametrize("command", [["list"], ["apply", "rules/"]])
def test_unmigrated_database_says_what_to_do(database_url, command):
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DELETE FROM schema_migrations WHERE version = '0002'")
    result = engine(*command)
    assert result.returncode == 1
    assert "run `engine db migrate`" in result.stderr


def history_json(*args: str) -> list[dict]:
    result = subprocess.run(
        [str(ENGINE), "history", "--format", "json", *args],
        env=dict(os.environ),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_prune_and_delete_keep_the_history_and_dry_run_changes_nothing(conn, database_url, tmp_path):
    assert engine("apply", "rules/").returncode == 0
    with pytest.raises(ValueError):
        with engine_sdk_run() as run:  # accuracy-above-0.6 fires, then run-failed
            for step, value in enumerate([0.7, 0.8, 0.9, 0.9, 0.9]):
                run.log({"accuracy": value}, step=step)
            raise ValueError("the run fails")
    tick(database_url)
    before = {item["trigger_id"]: item for item in history_json()}
    assert sorted(item["automation"] for item in before.values()) == ["accuracy-above-0.6", "run-failed"]

    (tmp_path / "only.yaml").write_text((REPO / "rules" / "run-failed.yaml").read_text())
    counts = row_counts(conn)
    dry = engine("apply", str(tmp_path / "only.yaml"), "--prune", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stderr.strip() == "dry run: nothing was changed; apply would do this:"
    assert row_counts(conn) == counts
    pruned = engine("apply", str(tmp_path / "only.yaml"), "--prune")
    assert pruned.returncode == 0, pruned.stderr
    assert pruned.stdout == dry.stdout and pruned.stderr == ""
    assert dry.stdout.splitlines()[0].split() == ["unchanged", "run-failed"]
    assert sorted(line.split()[0] for line in dry.stdout.splitlines()[1:]) == ["deleted"] * 15

    deleted = engine("delete", "run-failed", "--yes")
    assert deleted.returncode == 0 and deleted.stdout.strip() == "deleted run-failed"
    assert engine("list").stdout.strip() == "no automations (apply some with `engine rules apply`)"

    after = {item["trigger_id"]: item for item in history_json()}
    assert after.keys() == before.keys()
    for trigger_id, item in after.items():
        assert item["automation_deleted_at"] is not None
        assert item | {"automation_deleted_at": None} == before[trigger_id]  # the same rows, the name it had
    assert [item["automation"] for item in history_json("--automation", "accuracy-above-0.6")] == [
        "accuracy-above-0.6"
    ]
    table = subprocess.run(
        [str(ENGINE), "history"], env=dict(os.environ), cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert table.stdout.count("(deleted)") == 2

    # the name is free again, with a history of its own
    assert engine("apply", "rules/accuracy-above-0.6.yaml").stdout.split() == [
        "created",
        "accuracy-above-0.6",
    ]
    listed = json.loads(engine("list", "--format", "json").stdout)
    assert [(item["name"], item["triggers"]) for item in listed] == [("accuracy-above-0.6", 0)]
    assert len(history_json("--automation", "accuracy-above-0.6")) == 1


def test_dry_run_on_an_empty_database_creates_nothing(conn):
    counts = row_counts(conn)
    dry = engine("apply", "rules/", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert sorted(line.split()[0] for line in dry.stdout.splitlines()) == ["created"] * 16
    assert row_counts(conn) == counts
    assert "no automations" in engine("list").stdout
