"""The everyday CLI over HTTP: `engine rules|history|deliveries|redeliver|explain` with
ENGINE_URL + ENGINE_API_KEY and no database credentials, against a real `engine web`.

Each command is run twice on the same data, once through the database and once through
the server, and prints the same; the keys' roles and scopes hold; errors are one line
that never shows the key."""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import matplotlib.image
import numpy
import pytest

import engine
from tests.acceptance.service_helpers import ENGINE
from tests.acceptance.web_helpers import WebProcess, free_port, make_key
from tests.integration.evaluation_helpers import tick, triggers

T0 = datetime(2026, 3, 1, tzinfo=UTC)
RULES = {
    "acme.yaml": """\
name: acc-high
scope: {project: acme/vision}
event: {type: run_metric_threshold, metric: accuracy, window: 2, operator: ">=", threshold: 0.5}
action: {type: webhook, url: "https://hooks.example.com/acc"}
---
name: loss-up
scope: {project: acme/vision}
event: {type: run_metric_change, metric: loss, current_window: 2, prior_window: 3, change: absolute, direction: increase, amount: 0.5}
action: {type: no_op}
""",
    "other.yaml": """\
name: other-finished
scope: {project: other/proj}
event: {type: run_state, states: [finished]}
action: {type: no_op}
""",
}
BROKEN = """\
name: bad
scope: {project: acme/vision}
event: {type: run_metric_threshold, metric: loss, window: 0, operator: "<", threshold: 1}
action: {type: no_op}
---
name: bad-regex
scope: {project: acme/vision}
run_filter: {name_regex: "(?P<n>x)"}
event: {type: run_state, states: [failed]}
action: {type: no_op}
"""


class Cli:
    """`engine` in a subprocess: `local` with ENGINE_DATABASE_URL, `remote` with ENGINE_URL and
    a key and no database settings at all (ENGINE_DATA_DIR points where nothing may appear)."""

    def __init__(self, database_url: str, web: WebProcess, tmp_path: Path):
        self.database_url, self.web, self.tmp_path = database_url, web, tmp_path
        self.no_data = tmp_path / "must-stay-absent"
        self.keys: set[str] = set()

    def _run(
        self, env: dict[str, str], args: tuple[str, ...], stdin: str | None
    ) -> subprocess.CompletedProcess[str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_") or k == "ENGINE_SQL_DIR"}
        return subprocess.run(
            [ENGINE, *args],
            env=base | {"COLUMNS": "200", "NO_COLOR": "1"} | env,
            cwd=self.tmp_path,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def local(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return self._run({"ENGINE_DATABASE_URL": self.database_url}, args, stdin)

    def remote(
        self, key: str | None, *args: str, url: str | None = None, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = {"ENGINE_URL": url or self.web.url, "ENGINE_DATA_DIR": str(self.no_data)}
        if key is not None:
            env["ENGINE_API_KEY"] = key
            self.keys.add(key)
        result = self._run(env, args, stdin)
        assert not self.no_data.exists(), "the CLI over HTTP touched a database"
        if key:
            assert key not in result.stdout + result.stderr
        assert "Traceback" not in result.stderr, result.stderr
        return result


@pytest.fixture
def setup(conn, database_url, tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    for name, text in RULES.items():
        (rules / name).write_text(text)
    with WebProcess(database_url, tmp_path / "web.log") as web:
        cli = Cli(database_url, web, tmp_path)
        yield cli, rules
    assert not [key for key in cli.keys if key in web.log()]  # no key in the server's log either


def same(local: subprocess.CompletedProcess[str], remote: subprocess.CompletedProcess[str]) -> None:
    assert (remote.returncode, remote.stdout, remote.stderr) == (local.returncode, local.stdout, local.stderr)


@pytest.mark.slow
def test_every_everyday_command_prints_over_http_what_it_prints_from_the_database(setup, conn, database_url):
    cli, rules = setup
    admin = make_key(conn, "ci", "admin", "*")

    # validate: the same `ok`, the same errors at the same file:line (the regex judged by PostgreSQL)
    same(
        cli.local("rules", "validate", "--check-db", str(rules)),
        cli.remote(admin, "rules", "validate", str(rules)),
    )
    broken = cli.tmp_path / "broken.yaml"
    broken.write_text(BROKEN)
    local = cli.local("rules", "validate", "--check-db", str(broken))
    assert local.returncode == 1 and "broken.yaml:3: event.window:" in local.stderr
    assert "broken.yaml:8: run_filter.name_regex: PostgreSQL refuses this regex" in local.stderr
    same(local, cli.remote(admin, "rules", "validate", str(broken)))
    same(cli.local("rules", "apply", str(broken)), cli.remote(admin, "rules", "apply", str(broken)))

    # apply: dry run, then for real over HTTP; the database says unchanged afterwards as HTTP does
    dry = cli.remote(admin, "rules", "apply", "--dry-run", str(rules))
    same(cli.local("rules", "apply", "--dry-run", str(rules)), dry)
    applied = cli.remote(admin, "rules", "apply", str(rules))
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.split() == [
        "created",
        "acc-high",
        "created",
        "loss-up",
        "created",
        "other-finished",
    ]
    assert dry.stdout == applied.stdout
    same(cli.local("rules", "apply", str(rules)), cli.remote(admin, "rules", "apply", str(rules)))
    sources = dict(conn.execute("SELECT name, source FROM automations").fetchall())
    assert sources == {
        "acc-high": str(rules / "acme.yaml"),
        "loss-up": str(rules / "acme.yaml"),
        "other-finished": str(rules / "other.yaml"),
    }

    # data: a run that fires both acme rules, a run in other/proj that finishes
    with engine.init(project="acme/vision", name="cli-run", system_metrics_interval=0) as run:
        for i, (acc, loss) in enumerate([(0.1, 1.0), (0.3, 1.0), (0.6, 1.0), (0.7, 2.0), (0.8, 2.0)]):
            run.log({"accuracy": acc, "loss": loss}, step=i, time=T0 + timedelta(seconds=i))
    with engine.init(project="other/proj", name="o", system_metrics_interval=0):
        pass
    tick(database_url)
    fired = {t["automation"]: t["id"] for t in triggers(conn)}
    assert set(fired) == {"acc-high", "loss-up", "other-finished"}

    for fmt in ("json", "table"):
        same(cli.local("rules", "list", "--format", fmt), cli.remote(admin, "rules", "list", "--format", fmt))
        same(cli.local("history", "--format", fmt), cli.remote(admin, "history", "--format", fmt))
        same(cli.local("deliveries", "--format", fmt), cli.remote(admin, "deliveries", "--format", fmt))
    listed = cli.remote(admin, "history", "--format", "json")
    assert '"automation": "acc-high"' in listed.stdout and '"automation": "other-finished"' in listed.stdout
    for args in (
        ("history", "--automation", "loss-up", "--since", "30d", "--format", "json"),
        ("history", "--limit", "2", "--format", "json"),
        ("deliveries", "--status", "pending", "--automation", "acc-high", "--format", "json"),
        ("rules", "show", "acc-high"),
        ("rules", "show", "nope"),
        ("rules", "test", str(rules), "--since", "3650d"),
    ):
        same(cli.local(*args), cli.remote(admin, *args))
    tested = cli.remote(admin, "rules", "test", str(rules), "--since", "3650d")
    assert "acc-high: 1 would fire" in tested.stdout and "cli-run" in tested.stdout

    # explain: the same picture and words, the same PNG, from the JSON explanation
    for name in ("acc-high", "loss-up", "other-finished"):
        args = ("explain", str(fired[name]), "--width", "100")
        same(cli.local(*args), cli.remote(admin, *args))
    local_png, remote_png = cli.tmp_path / "local.png", cli.tmp_path / "remote.png"
    assert cli.local("explain", str(fired["loss-up"]), "--png", str(local_png)).returncode == 0
    drawn = cli.remote(admin, "explain", str(fired["loss-up"]), "--png", str(remote_png))
    assert drawn.returncode == 0 and f"wrote {remote_png}" in drawn.stdout, drawn.stderr
    assert numpy.array_equal(matplotlib.image.imread(local_png), matplotlib.image.imread(remote_png))
    same(cli.local("explain", "999999"), cli.remote(admin, "explain", "999999"))

    # redeliver: queued for `engine serve`, as from the database
    (delivery_id,) = conn.execute(
        "SELECT d.id FROM deliveries d JOIN triggers t ON t.id = d.trigger_id WHERE t.id = %s",
        (fired["acc-high"],),
    ).fetchone()
    conn.execute(
        "UPDATE deliveries SET status = 'failed', attempts = max_attempts WHERE id = %s", (delivery_id,)
    )
    queued = cli.remote(admin, "redeliver", str(delivery_id)[:8])
    assert queued.returncode == 0, queued.stderr
    assert f"delivery {delivery_id} (acc-high, webhook) queued" in queued.stdout
    status, attempts, budget = conn.execute(
        "SELECT status, attempts, max_attempts FROM deliveries WHERE id = %s", (delivery_id,)
    ).fetchone()
    assert status == "pending" and attempts < budget  # a fresh attempt budget
    here = cli.remote(admin, "redeliver", str(delivery_id), "--here")
    assert here.returncode == 1 and "--here` is not available over HTTP" in here.stderr

    # enable / disable / delete
    assert cli.remote(admin, "rules", "disable", "loss-up").stdout == "disabled loss-up\n"
    same(cli.local("rules", "disable", "loss-up"), cli.remote(admin, "rules", "disable", "loss-up"))
    assert cli.remote(admin, "rules", "enable", "loss-up").stdout == "enabled loss-up\n"
    refused = cli.remote(admin, "rules", "delete", "loss-up", stdin="n\n")
    assert refused.returncode == 1 and conn.execute(
        "SELECT deleted_at FROM automations WHERE name = 'loss-up'"
    ).fetchone() == (None,)
    deleted = cli.remote(admin, "rules", "delete", "loss-up", "--yes")
    assert deleted.returncode == 0 and deleted.stdout == "deleted loss-up\n", deleted.stderr
    # the server's 404 names no other automation and no deletion date (they may be outside the key's scopes)
    again = cli.remote(admin, "rules", "delete", "loss-up", "--yes")
    assert (again.returncode, again.stderr) == (1, "error: no automation named 'loss-up'\n")
    assert "it was deleted on" in cli.local("rules", "delete", "loss-up", "--yes").stderr
    assert "loss-up" not in cli.remote(admin, "rules", "list").stdout


def counts(conn) -> tuple:
    return conn.execute(
        "SELECT (SELECT count(*) FROM automations), (SELECT count(*) FROM automation_versions),"
        " (SELECT max(updated_at) FROM automations)"
    ).fetchone()


def test_a_read_key_reads_but_cannot_apply_and_a_scoped_admin_key_applies_only_inside_its_scope(setup, conn):
    cli, rules = setup
    admin = make_key(conn, "ci", "admin", "*")
    assert cli.remote(admin, "rules", "apply", str(rules)).returncode == 0
    reader = make_key(conn, "analyst", "read", "*")
    before = counts(conn)

    assert cli.remote(reader, "rules", "list").returncode == 0
    for args in (
        ("rules", "apply", str(rules)),
        ("rules", "disable", "acc-high"),
        ("rules", "delete", "acc-high", "--yes"),
    ):
        refused = cli.remote(reader, *args)
        assert refused.returncode == 1
        assert refused.stderr == (
            f"error: refused by {cli.web.url}: API key 'analyst' has role read; this needs admin\n"
        ), refused.stderr
    assert counts(conn) == before

    # the acme team's CI: its rules change, other/proj's rule is neither touched nor pruned
    acme = make_key(conn, "acme-ci", "admin", "acme/*")
    mine = cli.tmp_path / "acme-only"
    mine.mkdir()
    (mine / "acme.yaml").write_text(RULES["acme.yaml"].split("---\n")[0].replace("0.5}", "0.6}"))
    pruned = cli.remote(acme, "rules", "apply", "--prune", str(mine))
    assert pruned.returncode == 0, pruned.stderr
    assert pruned.stdout.split() == ["updated", "acc-high", "deleted", "loss-up"]
    alive = {name for (name,) in conn.execute("SELECT name FROM automations WHERE deleted_at IS NULL")}
    assert alive == {"acc-high", "other-finished"}

    before = counts(conn)
    outside = cli.remote(acme, "rules", "apply", str(rules / "other.yaml"))
    assert outside.returncode == 1
    assert outside.stderr.startswith(
        f"error: refused by {cli.web.url}: API key 'acme-ci' does not cover other/proj"
    )
    for args in (("rules", "disable", "other-finished"), ("rules", "show", "other-finished")):
        refused = cli.remote(acme, *args)
        assert refused.returncode == 1 and "does not cover other/proj" in refused.stderr
    assert counts(conn) == before
    listed = cli.remote(acme, "rules", "list", "--format", "tsv")
    assert [line.split("\t")[0] for line in listed.stdout.splitlines()] == ["name", "acc-high"]


def test_errors_are_one_line_naming_the_cause_and_never_the_key(setup, conn):
    cli, _ = setup
    reader = make_key(conn, "analyst", "read", "*")
    key = reader[:-4] + ("aaaa" if not reader.endswith("aaaa") else "bbbb")  # well-formed, unknown
    unknown = cli.remote(key, "rules", "list")
    assert (unknown.returncode, unknown.stderr) == (
        1,
        f"error: ENGINE_API_KEY is refused by {cli.web.url}: unknown API key\n",
    )

    conn.execute("UPDATE api_keys SET revoked_at = now() WHERE name = 'analyst'")
    revoked = cli.remote(reader, "history")
    assert (
        revoked.returncode == 1
        and "ENGINE_API_KEY is refused" in revoked.stderr
        and "revoked" in revoked.stderr
    )

    missing = cli.remote(None, "rules", "list")
    assert missing.returncode == 1 and "ENGINE_API_KEY is not" in missing.stderr, missing.stderr

    admin = make_key(conn, "ci", "admin", "*")
    nobody = f"http://127.0.0.1:{free_port()}"
    down = cli.remote(admin, "history", url=nobody)
    assert down.returncode == 1
    assert down.stderr.startswith(f"error: cannot reach engine web at {nobody} (ENGINE_URL)"), down.stderr
    assert len(down.stderr.splitlines()) == 1

    too_many = cli.remote(admin, "deliveries", "--limit", "5000")
    assert too_many.returncode == 1 and too_many.stderr.startswith(
        f"error: refused by {cli.web.url}: limit:"
    ), too_many.stderr
