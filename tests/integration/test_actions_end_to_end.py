"""SDK -> evaluator -> outbox -> dispatcher -> a signed webhook at a local receiver, for every
event kind: the payload carries the values that caused the firing (issue 5, "Done when")."""

from __future__ import annotations

import base64
import hashlib
import hmac

from actions_helpers import settle
from evaluation_helpers import apply_yaml, tick

import engine
from engine.actions.dispatcher import Dispatcher
from engine.settings import Settings
from tests.receiver import Receiver, Reply

SECRET = "e2e-signing-key"


def rules(url: str) -> str:
    action = "action: {type: webhook, url: %s/%s, secret: {env: E2E_HMAC}}\n"
    parts = [
        (
            "acc",
            "{project: acme/vision}",
            '{type: run_metric_threshold, metric: accuracy, window: 3, operator: ">", threshold: 0.6}',
        ),
        ("failed", "{project: acme/vision}", "{type: run_state, states: [failed]}"),
        ("created", "{project: acme/vision}", "{type: artifact_version_created}"),
        ("prod", "{project: acme/vision}", '{type: artifact_alias_added, alias_regex: "^production$"}'),
        ("eu", "{project: acme/vision}", "{type: artifact_tag_added, tag_regex: europe}"),
        ("linked", "{registry: model}", "{type: registry_version_linked}"),
        ("staging", "{registry: model}", '{type: artifact_alias_added, alias_regex: "^staging$"}'),
    ]
    return "---\n".join(f"name: {n}\nscope: {s}\nevent: {e}\n" + action % (url, n) for n, s, e in parts)


def signed(request) -> bool:
    expected = base64.b64encode(hmac.new(SECRET.encode(), request.body, hashlib.sha256).digest()).decode()
    return hmac.compare_digest(expected, request.headers["X-Automation-Signature"])


def test_every_event_kind_arrives_signed_with_its_values(conn, database_url, monkeypatch):
    monkeypatch.setenv("E2E_HMAC", SECRET)
    settings = Settings(database_url=database_url, webhook_allow_hosts="127.0.0.1", retry_base_seconds=0.05)
    with Receiver(Reply(200)) as rx, Dispatcher(database_url, settings) as dispatcher:
        apply_yaml(conn, rules(rx.url("")))
        run = engine.init(
            project="acme/vision", name='resnet "50" \\ wide', user="alice", system_metrics_interval=0
        )
        for step, value in enumerate([0.5, 0.7, 0.8, 0.9]):
            run.log({"accuracy": value}, step=step)
        run.flush()
        version = run.log_artifact(
            "mnist", type="dataset", metadata={"rows": 60000, "split": "train"}, aliases=["production"]
        )
        api = engine.Api(user="bob")
        api.add_tag(version, "europe")
        link = api.link_artifact(version, registry="model", collection="resnet")
        api.add_alias(link, "staging")
        tick(database_url)
        ids = [r[0] for r in conn.execute("SELECT id FROM deliveries")]
        settle(dispatcher, conn, ids)  # delivered while the run is still running
        run.finish(exit_code=1)
        tick(database_url)
        ids = [r[0] for r in conn.execute("SELECT id FROM deliveries")]
        settle(dispatcher, conn, ids)

    got = {r.path.strip("/"): r for r in rx.requests}
    assert sorted(got) == sorted(["acc", "failed", "created", "prod", "eu", "linked", "staging"])
    assert all(signed(r) for r in rx.requests)
    body = {name: r.json() for name, r in got.items()}

    acc = body["acc"]
    assert acc["event_type"] == "RUN_METRIC" and acc["automation_name"] == "acc"
    assert (acc["entity_name"], acc["project_name"], acc["run_id"]) == ("acme", "vision", run.id)
    assert acc["run_name"] == 'resnet "50" \\ wide' and acc["run_status"] == "running"
    assert acc["metric_name"] == "accuracy" and acc["metric_step"] == "2"
    assert acc["metric_values"] == [0.5, 0.7, 0.8] and float(acc["metric_value"]) == sum([0.5, 0.7, 0.8]) / 3
    assert acc["metric_filter"] == "avg(accuracy) over 3 > 0.6"
    assert acc["event_author"] == "alice" and acc["run_url"] == f"engine://acme/vision/runs/{run.id}"

    failed = body["failed"]
    assert (
        failed["event_type"] == "RUN_STATE"
        and failed["run_status"] == "failed"
        and failed["run_id"] == run.id
    )

    created = body["created"]
    assert created["event_type"] == "CREATE_ARTIFACT"
    assert created["artifact_version"] == f"artifact://{version.id}"
    assert created["artifact_version_string"] == "acme/vision/mnist:v0"
    assert (created["artifact_collection_name"], created["artifact_version_index"]) == ("mnist", "0")
    assert created["artifact_metadata.rows"] == "60000" and created["artifact_metadata.split"] == "train"
    assert created["event_author"] == "alice"

    assert body["prod"]["event_type"] == "ADD_ARTIFACT_ALIAS" and body["prod"]["alias"] == "production"
    assert body["eu"]["event_type"] == "ADD_ARTIFACT_TAG" and body["eu"]["tag"] == "europe"
    assert body["eu"]["event_author"] == "bob"

    linked = body["linked"]
    assert linked["event_type"] == "LINK_ARTIFACT" and linked["registry_name"] == "model"
    assert (
        linked["artifact_version_string"] == "model/resnet:v0"
        and linked["artifact_collection_name"] == "resnet"
    )
    assert linked["artifact_version"] == f"artifact://{version.id}" and linked["event_author"] == "bob"

    staging = body["staging"]
    assert staging["event_type"] == "ADD_ARTIFACT_ALIAS" and staging["alias"] == "staging"
    assert staging["artifact_version_string"] == "model/resnet:v0" and staging["registry_name"] == "model"

    history = conn.execute(
        "SELECT automation, delivery_status, attempts, last_http_status FROM automation_history"
    ).fetchall()
    assert sorted(history) == sorted((name, "succeeded", 1, 200) for name in got)

    # one vocabulary: the view's event_type is the delivered ${event_type}; rule_type the rule's kind
    kinds = {
        name: (event_type, rule_type)
        for name, event_type, rule_type in conn.execute(
            "SELECT automation, event_type, rule_type FROM automation_history"
        )
    }
    assert {name: event_type for name, (event_type, _) in kinds.items()} == {
        n: p["event_type"] for n, p in body.items()
    }
    assert kinds["acc"][1] == "run_metric_threshold" and kinds["staging"][1] == "artifact_alias_added"


def test_the_preview_and_a_delivery_word_the_condition_alike(conn, database_url):
    """`engine actions test` and a real delivery render one `${metric_filter}` (the rule's
    event in words), for a threshold rule and a change rule; `engine rules show` words it alike."""
    from typer.testing import CliRunner

    from engine.cli import app

    action = 'action: {type: webhook, url: "%s/%s", payload: {why: "${metric_filter}"}}\n'
    settings = Settings(database_url=database_url, webhook_allow_hosts="127.0.0.1", retry_base_seconds=0.05)
    with Receiver(Reply(200)) as rx, Dispatcher(database_url, settings) as dispatcher:
        apply_yaml(
            conn,
            "---\n".join(
                [
                    "name: high\nscope: {project: acme/vision}\n"
                    'event: {type: run_metric_threshold, metric: accuracy, window: 2, operator: ">=", threshold: 0.75}\n'
                    + action
                    % (rx.url(""), "high"),
                    "name: drop\nscope: {project: acme/vision}\n"
                    "event: {type: run_metric_change, metric: loss, current_window: 2, prior_window: 2, direction: decrease, amount: 0.25}\n"
                    + action
                    % (rx.url(""), "drop"),
                ]
            ),
        )
        run = engine.init(project="acme/vision", name="r", user="alice", system_metrics_interval=0)
        for step, (accuracy, loss) in enumerate([(0.5, 1.0), (0.6, 1.0), (0.8, 0.5), (0.9, 0.4)]):
            run.log({"accuracy": accuracy, "loss": loss}, step=step)
        run.flush()
        tick(database_url)
        settle(dispatcher, conn, [r[0] for r in conn.execute("SELECT id FROM deliveries")])
        delivered = {r.path.strip("/"): r.json()["why"] for r in rx.requests}
        for name in ("high", "drop"):
            result = CliRunner().invoke(app, ["actions", "test", name])
            assert result.exit_code == 0, result.output
        previewed = {r.path.strip("/"): r.json()["why"] for r in rx.requests[len(delivered) :]}
        shown = CliRunner().invoke(app, ["rules", "show", "drop"])
        run.finish()

    assert (
        delivered
        == previewed
        == {
            "high": "avg(accuracy) over 2 >= 0.75",
            "drop": "avg(loss) over 2 vs prior 2 decreased by ≥ 25%",
        }
    )
    assert "# condition: avg(loss) over 2 vs prior 2 decreased by ≥ 25%" in shown.output
