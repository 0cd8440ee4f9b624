"""`engine doctor` in a subprocess, as a user runs it: a healthy installation passes (exit 0),
and each thing that can be wrong is named in words with its fix (exit 1)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.automations import apply_rules
from engine.db import migrations
from engine.rules import parse_rules_text
from tests.integration.actions_helpers import fire, make_run
from tests.receiver import Receiver, free_port

ENGINE = Path(sys.executable).parent / "engine"


def rule(name: str, url: str, token_env: str = "DOCTOR_TOKEN") -> str:
    return (
        f"name: {name}\nscope: {{project: acme/vision}}\nevent: {{type: run_state, states: [failed]}}\n"
        f"action: {{type: webhook, url: '{url}', access_token: {{env: {token_env}}}}}\n"
    )


def doctor(rules: Path, **env: str) -> subprocess.CompletedProcess[str]:
    # ENGINE_DATABASE_URL, ENGINE_DATA_DIR and ENGINE_WEBHOOK_ALLOW_HOSTS come from the fixtures.
    full = {**os.environ, "ENGINE_RULES_PATH": str(rules), "DOCTOR_TOKEN": "tok-123", **env}
    return subprocess.run(
        [str(ENGINE), "doctor", "--timeout", "2"], env=full, capture_output=True, text=True, timeout=60
    )


def lines(result: subprocess.CompletedProcess[str], symbol: str) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.startswith(symbol)]


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    folder = tmp_path / "rules"
    folder.mkdir()
    return folder


def apply(conn, folder: Path) -> None:
    texts = "---\n".join(p.read_text() for p in sorted(folder.glob("*.yaml")))
    apply_rules(conn, [r.automation for r in parse_rules_text(texts)])


def test_a_healthy_installation_passes_without_sending_anything(conn, database_url, rules):
    with Receiver() as rx:
        (rules / "ci.yaml").write_text(rule("ci", rx.url("/hook")))
        apply(conn, rules)
        result = doctor(rules)
    assert result.returncode == 0, result.stdout + result.stderr
    shown = result.stdout.splitlines()
    checks = [line for line in shown if line[:1] and line[:1] in "✓!✗–"]
    assert checks and all(line.startswith("✓") for line in checks), result.stdout
    for expected in (
        "✓ database reachable: connected to ",
        "✓ TimescaleDB installed and preloaded: TimescaleDB ",
        f"✓ migrations applied: all {len(migrations())} migrations applied",
        f"✓ rule files valid: 1 rule in 1 file under {rules}, all applied",
        "✓ stored automations load and run: 1 automation (1 enabled) load; none is failing",
        f"✓ webhook target http://127.0.0.1:{rx.port} (ci): resolves to 127.0.0.1, allowed, accepts connections",
        "✓ secret DOCTOR_TOKEN (access_token of ci): set in this environment (its value is not shown)",
        "✓ deliveries succeeding: no delivery failed in the last 24 h",
    ):
        assert any(line.startswith(expected) for line in shown), f"{expected!r} not in:\n{result.stdout}"
    assert "all 8 checks passed." in result.stdout
    assert rx.requests == []  # a TCP handshake, no request
    assert "tok-123" not in result.stdout


def test_a_bad_rule_file_is_reported_with_file_line_and_field(conn, database_url, rules):
    (rules / "bad.yaml").write_text(
        "name: bad\nscope: {project: acme/vision}\nevent: {type: run_state, states: [killed]}\naction: {type: no_op}\n"
    )
    result = doctor(rules)
    assert result.returncode == 1
    assert f"✗ rule files valid: 1 problem in the rule files under {rules}:" in result.stdout
    assert (
        f"{rules}/bad.yaml:3: event.states[0]: killed runs never trigger an automation: remove `killed`"
        in result.stdout
    )
    assert (
        "fix: correct the lines named above, then check again with `engine rules validate`" in result.stdout
    )


def test_unreachable_and_refused_webhook_targets_and_a_missing_secret(conn, database_url, rules):
    port = free_port()
    (rules / "down.yaml").write_text(rule("down", f"http://127.0.0.1:{port}/hook"))
    (rules / "metadata.yaml").write_text(rule("metadata", "http://169.254.169.254/latest/meta-data"))
    (rules / "nosecret.yaml").write_text(
        rule("nosecret", "https://127.0.0.1:1/x", token_env="DOCTOR_MISSING")
    )
    apply(conn, rules)
    result = doctor(rules)
    assert result.returncode == 1
    out = result.stdout
    assert (
        f"✗ webhook target http://127.0.0.1:{port} (down): nothing accepts connections at 127.0.0.1 port {port} (connection refused)"
        in out
    )
    assert "fix: start the receiver, open the firewall, or correct the URL in the rule" in out
    assert "✗ webhook target http://169.254.169.254:80 (metadata): refused by the address policy:" in out
    assert "169.254.169.254 (cloud metadata)" in out and "add it to ENGINE_WEBHOOK_ALLOW_HOSTS" not in out
    assert (
        "✗ secret DOCTOR_MISSING (access_token of nosecret): environment variable DOCTOR_MISSING is not set"
        in out
    )
    assert "✓ secret DOCTOR_TOKEN (access_token of down, access_token of metadata)" in out


def test_missing_migrations_are_named_with_the_command_that_applies_them(conn, database_url, rules):
    last = migrations()[-1][1].name
    conn.execute("DELETE FROM schema_migrations WHERE name = %s", (last,))
    result = doctor(rules)
    assert result.returncode == 1
    assert (
        f"✗ migrations applied: 1 of {len(migrations())} migrations not applied: {last}\n    fix: run `engine db migrate`"
        in result.stdout
    )
    assert "– stored automations: not checked: migrations not applied" in result.stdout


def test_a_failing_automation_and_failed_deliveries_are_reported(conn, database_url, rules):
    (rules / "ci.yaml").write_text(rule("ci", "http://127.0.0.1:9/x"))
    apply(conn, rules)
    automation_id = conn.execute("SELECT id FROM automations WHERE name = 'ci'").fetchone()[0]
    conn.execute(
        "UPDATE automation_state SET last_error = 'query cancelled by statement_timeout', last_error_at = now(), failures = 3"
    )
    _, ids = fire(
        conn, automation_id, [{"type": "webhook", "url": "http://127.0.0.1:9/x"}], run_pk=make_run(conn)
    )
    conn.execute(
        "UPDATE deliveries SET status = 'failed', last_error = 'HTTP 500 Internal Server Error' WHERE id = %s",
        (ids[0],),
    )
    result = doctor(rules)
    out = result.stdout
    assert result.returncode == 1
    assert "✗ stored automations load and run: 1 of 1 automation with a problem:" in out
    assert "ci: failing (3 times, last at " in out and "): query cancelled by statement_timeout" in out
    assert (
        "✗ deliveries succeeding: 1 delivery failed in the last 24 h:\n      ci: 1 failed, last error: HTTP 500 Internal Server Error"
        in out
    )
    assert "`engine redeliver ID`" in out


def test_no_database_is_said_once_and_the_rest_is_not_checked(rules):
    (rules / "ci.yaml").write_text(rule("ci", "http://127.0.0.1:9/x"))
    result = doctor(
        rules, ENGINE_DATABASE_URL=f"postgresql://engine:pw-not-shown@127.0.0.1:{free_port()}/engine"
    )
    assert result.returncode == 1
    out = result.stdout
    assert (
        "✗ database reachable: cannot connect to postgresql://engine:***@127.0.0.1:" in out
        and "pw-not-shown" not in out
    )
    assert "fix: start the server, or correct ENGINE_DATABASE_URL" in out
    assert "– migrations applied: not checked: no database" in out
    assert "✓ rule files valid: 1 rule in 1 file" in out  # the files are checked without it


def test_after_the_demo_the_example_rules_are_not_suggested_for_applying(conn, database_url, rules):
    # What `engine demo` leaves behind, made with its own code: the example rules applied as
    # demo.<name> in a project of the demo's, then disabled.
    from engine import automations
    from engine.demo.rules import EXAMPLES, demo_rules

    demo = [
        automation
        for automation, _ in demo_rules(EXAMPLES, "acme/vision-demo-20261203-101010", "http://127.0.0.1:9")
    ]
    apply_rules(conn, demo)
    for automation in demo:
        automations.disable(conn, automation.name)
    result = doctor(EXAMPLES)
    out = result.stdout
    assert result.returncode == 0, out
    assert "fix: run `engine rules apply`" not in out
    assert (
        f"✓ rule files valid: 16 rules in 16 files under {EXAMPLES}; 16 rules not applied as such because "
        "`engine demo` ran them as demo.<name> in its own projects (" in out
    )
    assert "to use one for real, set its scope and action to yours first, then `engine rules apply`" in out
    assert (
        "✓ stored automations load and run: 16 automations (0 enabled, 16 of them from `engine demo`) load"
        in out
    )

    # a rule of your own beside the examples is still named, with a command that applies it alone
    for path in EXAMPLES.glob("*.yaml"):
        (rules / path.name).write_text(path.read_text())
    (rules / "mine.yaml").write_text(rule("mine", "http://127.0.0.1:9/x"))
    out = doctor(rules).stdout
    assert (
        f"! rule files valid: 17 rules in 17 files under {rules}; not applied (or changed since): mine; 16 rules "
        in out
    )
    assert f"    fix: run `engine rules apply {rules}/<file>` for it when ready to run" in out


def test_email_and_pagerduty_actions_have_their_server_and_routing_key_checked(conn, database_url, rules):
    port = free_port()
    (rules / "mail.yaml").write_text(
        "name: mail\nscope: {project: acme/vision}\nevent: {type: run_state, states: [failed]}\n"
        "action: {type: email, to: ml@example.com}\n"
    )
    (rules / "pager.yaml").write_text(
        "name: pager\nscope: {project: acme/vision}\nevent: {type: run_state, states: [failed]}\n"
        f"action: {{type: pagerduty, routing_key: {{env: DOCTOR_PD}}, url: 'http://127.0.0.1:{port}/v2/enqueue'}}\n"
    )
    apply(conn, rules)
    unset = doctor(rules).stdout
    assert "✗ SMTP server (mail): ENGINE_SMTP_URL is not set (needed by email actions)" in unset
    assert "fix: set ENGINE_SMTP_URL (and ENGINE_SMTP_FROM) where `engine serve` runs" in unset
    assert "✗ secret DOCTOR_PD (routing_key of pager): environment variable DOCTOR_PD is not set" in unset
    assert f"✗ webhook target http://127.0.0.1:{port} (pager): nothing accepts connections" in unset
    with Receiver() as rx:
        result = doctor(rules, ENGINE_SMTP_URL=f"smtp://127.0.0.1:{rx.port}", DOCTOR_PD="k" * 32)
    assert (
        f"✓ SMTP server smtp://127.0.0.1:{rx.port} (mail): resolves to 127.0.0.1, allowed, accepts connections"
        in result.stdout
    )
    assert "✓ secret DOCTOR_PD (routing_key of pager)" in result.stdout
    assert rx.requests == []  # a TCP handshake only
