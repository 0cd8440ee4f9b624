"""`engine rules validate` and `apply` warn (never fail) when the address policy will refuse
an action's target at send time with this shell's ENGINE_WEBHOOK_ALLOW_HOSTS."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ENGINE = Path(sys.executable).parent / "engine"


def rule(name: str, action: str) -> str:
    return f"name: {name}\nscope: {{project: acme/vision}}\nevent: {{type: run_state, states: [failed]}}\naction: {action}\n"


RULES = {
    "private.yaml": rule("private", "{type: webhook, url: 'http://10.0.0.5/hook'}"),
    "metadata.yaml": rule("metadata", "{type: webhook, url: 'http://169.254.169.254/latest/meta-data'}"),
    "public.yaml": rule("public", "{type: webhook, url: 'https://93.184.216.34/hook'}"),
    "local.yaml": rule("local", "{type: webhook, url: 'http://localhost:8765/hook'}"),
    "nodns.yaml": rule("nodns", "{type: webhook, url: 'https://nothing-here.invalid/hook'}"),
    "slack.yaml": rule("slack", "{type: slack, webhook_url: {env: TEAM_SLACK_URL}}"),
    "slack-unset.yaml": rule("slackunset", "{type: slack, webhook_url: {env: UNSET_SLACK_URL}}"),
    "discord.yaml": rule("discord", "{type: discord, webhook_url: {env: TEAM_SLACK_URL}}"),
    "pager.yaml": rule(
        "pager", "{type: pagerduty, routing_key: {env: PD_KEY}, url: 'http://10.0.0.6/v2/enqueue'}"
    ),
}
# The rules whose target the policy refuses when the shell allows nothing.
REFUSED_UNSET = {"private.yaml", "metadata.yaml", "local.yaml", "slack.yaml", "discord.yaml", "pager.yaml"}


def engine(folder: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {
        **os.environ,
        "COLUMNS": "200",
        "TEAM_SLACK_URL": "http://10.1.2.3/services/T0/B0/s3cr3t-path",
    } | env
    full.pop("UNSET_SLACK_URL", None)
    return subprocess.run(
        [str(ENGINE), "rules", *args],
        env=full,
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def warnings(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """file -> warning text, for the address-policy warnings."""
    found = {}
    for line in result.stderr.splitlines():
        if "sending will be refused" in line:
            file, _, text = line.partition(":4: warning: ")  # the line of `action:`
            found[file] = text
    return found


def write(folder: Path) -> None:
    for name, text in RULES.items():
        (folder / name).write_text(text)


def test_validate_warns_about_targets_the_policy_will_refuse(tmp_path, monkeypatch):
    monkeypatch.delenv("ENGINE_WEBHOOK_ALLOW_HOSTS", raising=False)
    write(tmp_path)
    result = engine(tmp_path, "validate", ".")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok: 9 rules in 9 files"
    found = warnings(result)
    assert set(found) == REFUSED_UNSET, result.stderr
    assert found["private.yaml"] == (
        "action.url: sending will be refused (with ENGINE_WEBHOOK_ALLOW_HOSTS unset, as in this shell): webhook target "
        "10.0.0.5 resolves to a private address 10.0.0.5 (private); allow it with ENGINE_WEBHOOK_ALLOW_HOSTS"
    )
    assert (
        "169.254.169.254 (cloud metadata)" in found["metadata.yaml"]
        and "allow it" not in found["metadata.yaml"]
    )
    assert "webhook target localhost resolves to a private address" in found["local.yaml"]
    # The Slack URL is a secret: the warning names its variable and host, never the URL.
    assert found["slack.yaml"].startswith("action.webhook_url ($TEAM_SLACK_URL): sending will be refused")
    assert found["discord.yaml"].startswith("action.webhook_url ($TEAM_SLACK_URL): sending will be refused")
    assert (
        found["pager.yaml"].startswith("action.url: sending will be refused")
        and "10.0.0.6" in found["pager.yaml"]
    )
    assert "s3cr3t-path" not in result.stderr
    # A name that does not resolve here is left to the check at send time: no warning, no failure.
    assert "nodns" not in result.stderr and "nothing-here" not in result.stderr


def test_the_allow_list_of_this_shell_is_the_one_judged(tmp_path):
    write(tmp_path)
    result = engine(tmp_path, "validate", ".", ENGINE_WEBHOOK_ALLOW_HOSTS="0.0.0.0/0,::/0")
    assert result.returncode == 0, result.stderr
    found = warnings(result)
    assert set(found) == {"metadata.yaml"}, result.stderr  # a range never opens the metadata address
    assert "(with ENGINE_WEBHOOK_ALLOW_HOSTS=0.0.0.0/0,::/0, as in this shell)" in found["metadata.yaml"]
    assert (
        "a range, or a name that also resolves to other addresses, does not open it" in found["metadata.yaml"]
    )
    exact = engine(tmp_path, "validate", ".", ENGINE_WEBHOOK_ALLOW_HOSTS="0.0.0.0/0,::/0,169.254.169.254")
    assert warnings(exact) == {}, exact.stderr


def test_apply_warns_too_and_stores_the_rules(tmp_path, database_url, monkeypatch):
    monkeypatch.delenv("ENGINE_WEBHOOK_ALLOW_HOSTS", raising=False)
    write(tmp_path)
    result = engine(tmp_path, "apply", ".")
    assert result.returncode == 0, result.stderr
    assert set(warnings(result)) == REFUSED_UNSET, result.stderr
    assert result.stdout.count("created") == 9
