"""The least-privilege roles of engine/sql/grants.sql, as a team uses them (docs/production.md): a
training node logs as a member of engine_ingest, `engine serve` runs as a member of
engine_service, an analyst reads as a member of engine_reader, each over TCP with a password,
against a server of its own. Each can do its job, and nothing more; `engine doctor` runs as
each of them and says what it could not check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from tests.acceptance.service_helpers import ServeProcess, wait_until
from tests.receiver import Receiver
from tests.team_deployment import GRANTS, ROLES, TeamDatabase

ENGINE = Path(sys.executable).parent / "engine"
RULE = """\
name: accuracy-high
scope: {{project: acme/vision}}
event: {{type: run_metric_threshold, metric: acc, window: 3, aggregation: avg, operator: ">", threshold: 0.6}}
action: {{type: webhook, url: "{url}"}}
"""
# Everything a training job does through the SDK: a run with config, points, system metrics,
# an artifact version with aliases and tags, a registry link and its alias, a resume, a kill;
# then what it must not do: change the automations.
INGEST_SCRIPT = textwrap.dedent(r"""
    import json, time
    import engine
    from engine.exceptions import EngineError

    with engine.init(project="acme/vision", id="lp-1", config={"lr": 0.1}, system_metrics_interval=0.05) as run:
        for step in range(10):
            run.log({"acc": 0.5 + step / 20, "loss": 1 / (step + 1)}, step=step)
        time.sleep(0.3)  # the training: a few system metric samples
        version = run.log_artifact("resnet", type="model", aliases=["candidate"], tags=["eu"])
    api = engine.Api()
    api.add_alias(version, "production")
    api.add_tag(version, "checked")
    link = api.link_artifact(version, registry="model", collection="classifier")
    api.add_alias(link, "staging")
    with engine.init(project="acme/vision", id="lp-1", resume=True, system_metrics_interval=0) as run:
        run.log({"acc": 0.99})
    engine.init(project="acme/vision", id="lp-2", system_metrics_interval=0)
    killed = api.kill_run("acme/vision", "lp-2")
    try:
        api.apply("name: sneaky\nscope: {project: acme/vision}\nevent: {type: run_state, states: [failed]}\n"
                  "action: {type: no_op}\n")
        refused = None
    except EngineError as exc:
        refused = str(exc)
    print(json.dumps({"killed": killed, "apply": refused}))
""")


@dataclass
class Deployment:
    database: TeamDatabase
    urls: dict[str, str]  # role group -> login URL
    rules: Path
    receiver: Receiver
    ingest_output: dict
    serve_log: str


def env_for(url: str, rules: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_") or k == "ENGINE_SQL_DIR"}
    env |= {"ENGINE_DATABASE_URL": url, "ENGINE_WEBHOOK_ALLOW_HOSTS": "127.0.0.1"}
    if rules is not None:
        env["ENGINE_RULES_PATH"] = str(rules)
    return env


def engine_cli(url: str, *args: str, rules: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ENGINE), *args], env=env_for(url, rules), capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """The story once: the service applies a rule and runs, a training job logs (and fires
    it), the webhook is delivered."""
    folder = tmp_path_factory.mktemp("least-privilege")
    with TeamDatabase() as database, Receiver() as receiver:
        urls = {
            "engine_service": database.login("svc", "svc-secret", member_of="engine_service"),
            "engine_ingest": database.login("trainer", "trainer-secret", member_of="engine_ingest"),
            "engine_reader": database.login("analyst", "analyst-secret", member_of="engine_reader"),
        }
        rules = folder / "rules"
        rules.mkdir()
        (rules / "accuracy.yaml").write_text(RULE.format(url=receiver.url("/ci")))
        applied = engine_cli(urls["engine_service"], "rules", "apply", str(rules))
        assert applied.returncode == 0, applied.stderr
        serve = ServeProcess(
            urls["engine_service"],
            folder / "serve.log",
            interval=0.5,
            extra_env={"ENGINE_WEBHOOK_ALLOW_HOSTS": "127.0.0.1"},
        ).start()
        try:
            assert wait_until(lambda: "evaluating every" in (folder / "serve.log").read_text())
            ingest = subprocess.run(
                [sys.executable, "-c", INGEST_SCRIPT],
                env=env_for(urls["engine_ingest"]),
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert ingest.returncode == 0, ingest.stderr
            receiver.wait_for(1, timeout=30)
            with database.admin() as conn:
                assert wait_until(
                    lambda: (
                        conn.execute("SELECT delivery_status FROM automation_history").fetchall()
                        == [("succeeded",)]
                    ),
                    timeout=30,
                )
            assert serve.terminate() == 0
        finally:
            serve.stop_quietly()
        yield Deployment(
            database,
            urls,
            rules,
            receiver,
            json.loads(ingest.stdout.strip().splitlines()[-1]),
            (folder / "serve.log").read_text(),
        )


def refused(url: str, statement: str) -> str:
    with (
        psycopg.connect(url, autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege) as caught,
    ):
        conn.execute(statement)
    return str(caught.value)


def test_the_grants_are_group_roles_and_applying_them_again_changes_nothing(deployment):
    with deployment.database.admin() as conn:
        conn.execute(GRANTS.read_text())
        roles = dict(
            conn.execute(
                "SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname = ANY(%s)", (list(ROLES),)
            ).fetchall()
        )
    assert roles == {role: False for role in ROLES}


def test_a_training_node_stores_everything_it_logs_as_the_ingest_role(deployment):
    with deployment.database.admin() as conn:
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM metric_points), (SELECT count(*) FROM system_metrics) > 0,"
            " (SELECT array_agg(state ORDER BY run_id) FROM runs),"
            " (SELECT array_agg(alias ORDER BY alias) FROM artifact_aliases),"
            " (SELECT array_agg(tag ORDER BY tag) FROM artifact_tags),"
            " (SELECT array_agg(alias) FROM registry_aliases),"
            " (SELECT count(*) FROM registry_links)"
        ).fetchone()
    assert counts == (
        21,
        True,
        ["finished", "killed"],
        ["candidate", "latest", "production"],
        ["checked", "eu"],
        ["latest", "staging"],
        1,
    )
    assert deployment.ingest_output["killed"] is True


def test_the_ingest_role_cannot_touch_automations_history_or_data(deployment):
    url = deployment.urls["engine_ingest"]
    assert (
        "permission denied for table automations" in deployment.ingest_output["apply"]
    )  # engine.Api().apply
    for statement, table in (
        ("DELETE FROM triggers", "triggers"),
        ("DELETE FROM deliveries", "deliveries"),
        ("UPDATE automations SET enabled = false", "automations"),
        ("SELECT * FROM automations", "automations"),
        ("DELETE FROM metric_points", "metric_points"),
        ("DELETE FROM runs", "runs"),
        ("DELETE FROM events", "events"),
        ("UPDATE projects SET name = 'x'", "projects"),
    ):
        assert f"permission denied for table {table}" in refused(url, statement), statement
    result = engine_cli(url, "rules", "apply", str(deployment.rules))
    assert result.returncode == 1
    assert "error: permission denied for table automations" in result.stderr
    assert "engine/sql/grants.sql" in result.stderr  # the refusal says where the roles' grants are
    assert "Traceback" not in result.stderr


def test_the_service_role_evaluates_and_delivers_but_cannot_erase_history_or_data(deployment):
    assert "at most 5 database connections" in deployment.serve_log
    assert "permission denied" not in deployment.serve_log
    request = deployment.receiver.requests[0]
    assert request.path == "/ci"
    url = deployment.urls["engine_service"]
    for statement, table in (
        ("DELETE FROM triggers", "triggers"),
        ("DELETE FROM automations", "automations"),  # `rules delete` marks it deleted instead
        ("DELETE FROM delivery_attempts", "delivery_attempts"),
        ("DELETE FROM metric_points", "metric_points"),
        ("INSERT INTO runs (project_id, run_id, name, state) VALUES (1, 'x', 'x', 'running')", "runs"),
        ("UPDATE runs SET state = 'failed'", "runs"),
    ):
        assert f"permission denied for table {table}" in refused(url, statement), statement


def test_an_analyst_reads_everything_and_changes_nothing(deployment):
    url = deployment.urls["engine_reader"]
    history = engine_cli(url, "history")
    assert history.returncode == 0, history.stderr
    assert "accuracy-high" in history.stdout and "succeeded" in history.stdout
    listed = engine_cli(url, "rules", "list")
    assert listed.returncode == 0, listed.stderr
    assert "accuracy-high" in listed.stdout
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM automation_history").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM metric_points").fetchone()[0] == 21
    applied = engine_cli(url, "rules", "apply", str(deployment.rules))
    assert applied.returncode == 1
    assert "error: permission denied for table automations" in applied.stderr
    assert "Traceback" not in applied.stderr
    for statement, table in (
        ("DELETE FROM triggers", "triggers"),
        ("INSERT INTO metric_keys (key) VALUES ('x')", "metric_keys"),
    ):
        assert f"permission denied for table {table}" in refused(url, statement), statement


@pytest.mark.parametrize(
    "role, login", [("engine_service", "svc"), ("engine_ingest", "trainer"), ("engine_reader", "analyst")]
)
def test_doctor_runs_as_each_role_and_says_what_it_could_not_check(deployment, role, login):
    result = engine_cli(deployment.urls[role], "doctor", "--timeout", "2", rules=deployment.rules)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "Traceback" not in result.stderr and f"{login}-secret" not in out + result.stderr  # the password
    assert (
        "✓ TimescaleDB installed and preloaded: TimescaleDB " in out
        and f"loaded (so preloaded; the role {login} may not read shared_preload_libraries itself, which needs "
        "pg_read_all_settings)"
        in out
    ), out
    assert "✓ migrations applied" in out
    assert f"✓ webhook target http://127.0.0.1:{deployment.receiver.port}" in out
    if role == "engine_ingest":
        assert (
            "✓ rule files valid: 1 rule in 1 file" in out
            and "whether they are applied was not checked" in out
        )
        for check, table in (
            ("stored automations load and run", "automations"),
            ("deliveries succeeding", "deliveries"),
        ):
            assert (
                f"– {check}: not checked: the role trainer may not read what it needs "
                f"(permission denied for table {table})\n"
                "    fix: to check it, `GRANT engine_reader TO trainer` (see engine/sql/grants.sql)"
            ) in out, out
        assert "5 of 7 checks passed, 2 not checked (–)." in out
    else:
        assert "✓ rule files valid: 1 rule in 1 file" in out and "all applied" in out
        assert "✓ stored automations load and run: 1 automation (1 enabled) load; none is failing" in out
        assert "✓ deliveries succeeding: no delivery failed in the last 24 h" in out
        assert "all 7 checks passed." in out


def test_the_service_role_silences_digests_and_rate_limits_and_the_reader_only_looks(deployment):
    from datetime import timedelta

    from psycopg.types.json import Jsonb

    from engine import clock, db
    from engine.actions import flow
    from engine.actions.outbox import delivery_rows
    from engine.evaluation.firing import Firing, trigger_row

    service, reader = deployment.urls["engine_service"], deployment.urls["engine_reader"]
    added = engine_cli(
        service, "silence", "add", "--project", "acme/other", "--for", "1h", "--reason", "upgrade"
    )
    assert added.returncode == 0, added.stderr
    silence_id = added.stdout.split()[1].rstrip(":")
    assert engine_cli(service, "silence", "end", silence_id).returncode == 0
    listed = json.loads(engine_cli(reader, "silence", "list", "--all", "--format", "json").stdout)
    assert [(str(s["id"]), s["project"], s["ended_by"] is not None) for s in listed] == [
        (silence_id, "acme/other", True)
    ]
    denied = engine_cli(reader, "silence", "add", "--project", "acme/x", "--for", "1h", "--reason", "no")
    assert denied.returncode == 1 and "permission denied" in denied.stderr

    # a digested, rate-limited action fired and closed with the service's privileges
    action = {
        "type": "webhook",
        "url": "http://127.0.0.1:9/",
        "digest": "1m",
        "rate_limit": {"count": 5, "per": "1h"},
    }
    with psycopg.connect(service, autocommit=True) as conn:
        automation_id, version = conn.execute(
            "SELECT id, version FROM automations WHERE name = 'accuracy-high'"
        ).fetchone()
        stored = type("Stored", (), {"id": automation_id, "version": version})
        rows = delivery_rows(automation_id, [action])
        fired = [
            trigger_row(stored, Firing("accuracy-high", "run_metric_threshold", f"lp:{i}", clock.now()))
            | {"n": i}
            for i in range(2)
        ]
        with conn.transaction():
            flow.lock_gates(conn, rows)
            conn.execute(
                db.query("insert_triggers"),
                {
                    "triggers": Jsonb(fired),
                    "actions": Jsonb(rows),
                    "now": clock.now(),
                    # no triggers inserted by a metric group's own statement
                    "fired_ids": [],
                    "fired_automations": [],
                    "fired_runs": [],
                },
            )
        with clock.frozen(clock.now() + timedelta(minutes=2)):
            closed = flow.close_due_digests(conn)
    assert [(c["status"], c["members"]) for c in closed] == [("pending", 2)]
