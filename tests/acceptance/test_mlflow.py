"""The official MLflow client (mlflow-skinny from PyPI) logging into a real `engine web` on
127.0.0.1 through its /mlflow endpoint, and what it logs firing automations (evaluator ticks).

The client runs in this process, configured only as its users configure it:
MLFLOW_TRACKING_URI and MLFLOW_TRACKING_TOKEN (an engine API key)."""

from __future__ import annotations

import math
import time

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from tests.acceptance.web_helpers import WebProcess, make_key
from tests.integration.evaluation_helpers import apply_yaml, rule, tick, triggers


@pytest.fixture
def web(conn, database_url, tmp_path, monkeypatch):
    """engine web, and the MLflow client pointed at it with an ingest key for acme/* and the
    `mlflow` registry."""
    key = make_key(conn, "mlflow-trainer", "ingest", "acme/*", "mlflow/*", "registry:mlflow")
    with WebProcess(database_url, tmp_path / "web.log") as process:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"{process.url}/mlflow")
        monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", key)
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        mlflow.set_tracking_uri(f"{process.url}/mlflow")
        yield process
        while mlflow.active_run() is not None:
            mlflow.end_run()
    assert key not in process.log()


def run_row(conn, run_id: str) -> dict:
    cur = conn.cursor(row_factory=__import__("psycopg").rows.dict_row)
    return cur.execute(
        "SELECT p.entity || '/' || p.name AS project, r.name, r.user_name, r.state, r.config, r.tags "
        "FROM runs r JOIN projects p ON p.id = r.project_id WHERE r.run_id = %s",
        (run_id,),
    ).fetchone()


def points(conn, run_id: str) -> list[tuple]:
    return conn.execute(
        "SELECT k.key, m.step, m.value, m.time FROM metric_points m JOIN metric_keys k ON k.id = m.key_id "
        "JOIN runs r ON r.id = m.run_pk WHERE r.run_id = %s ORDER BY m.seq",
        (run_id,),
    ).fetchall()


def test_experiments_runs_metrics_params_and_tags(web, conn, database_url):
    apply_yaml(
        conn,
        rule(
            "low-loss", '{type: run_metric_threshold, metric: loss, window: 1, operator: "<", threshold: 0.2}'
        ),
    )
    apply_yaml(
        conn,
        rule(
            "acc-jump",
            "{type: run_metric_change, metric: acc, current_window: 1, prior_window: 1, change: absolute, "
            "direction: increase, amount: 0.3}",
        ),
    )
    experiment_id = mlflow.set_experiment("acme/vision").experiment_id  # get-by-name, then create
    assert mlflow.set_experiment("acme/vision").experiment_id == experiment_id  # found by name now
    assert MlflowClient().get_experiment(experiment_id).name == "acme/vision"

    t0 = int(time.time() * 1000) - 60_000
    with mlflow.start_run(run_name="resnet-50") as run:
        run_id = run.info.run_id
        mlflow.log_param("lr", 0.1)
        mlflow.log_params({"layers": 50, "optimizer": "adam"})
        mlflow.set_tag("team", "vision")
        mlflow.set_tags({"stage": "dev", "flag": ""})
        mlflow.set_tag("stage", "prod")  # replaces the earlier value
        mlflow.log_metric("loss", 0.9, step=0, timestamp=t0)
        mlflow.log_metrics({"loss": 0.5, "acc": 0.4}, step=1, timestamp=t0 + 1000)
        mlflow.log_metrics({"loss": 0.1, "acc": 0.8}, step=2, timestamp=t0 + 2000)
        mlflow.log_metric("acc", float("nan"), step=3)
        mlflow.log_metric("acc", float("inf"), step=4)
        mlflow.log_metric("test_acc", 0.95)  # MLflow's default step 0: stored at the run's step (4)
        with pytest.raises(MlflowException, match="Changing param values is not allowed"):
            mlflow.log_param("lr", 0.2)

    row = run_row(conn, run_id)
    assert row["project"] == "acme/vision" and row["name"] == "resnet-50" and row["state"] == "finished"
    assert row["config"] == {"lr": "0.1", "layers": "50", "optimizer": "adam"}
    assert {"team=vision", "stage=prod", "flag"} <= set(row["tags"]) and "stage=dev" not in row["tags"]
    stored = points(conn, run_id)
    assert [(k, s) for k, s, _, _ in stored] == [
        ("loss", 0), ("loss", 1), ("acc", 1), ("loss", 2), ("acc", 2), ("acc", 3), ("acc", 4), ("test_acc", 4)
    ]  # fmt: skip
    assert stored[0][3].timestamp() * 1000 == t0
    assert math.isnan(stored[5][2]) and stored[6][2] == math.inf

    fetched = MlflowClient().get_run(run_id)
    assert fetched.info.status == "FINISHED" and fetched.info.experiment_id == experiment_id
    assert fetched.data.params == {"lr": "0.1", "layers": "50", "optimizer": "adam"}
    assert fetched.data.tags["team"] == "vision" and fetched.data.tags["mlflow.runName"] == "resnet-50"
    assert fetched.data.metrics["loss"] == 0.1

    tick(database_url)
    low = triggers(conn, "low-loss")
    assert [(t["run_id"], t["metric"], t["step"], t["value"]) for t in low] == [(run_id, "loss", 2, 0.1)]
    jump = triggers(conn, "acc-jump")
    assert [(t["run_id"], t["step"]) for t in jump] == [(run_id, 2)]


def test_end_run_statuses_map_to_run_states_and_fire_run_state_automations(web, conn, database_url):
    apply_yaml(conn, rule("ended", "{type: run_state, states: [finished, failed]}"))
    mlflow.set_experiment("acme/vision")
    ids = {}
    for status in ("FINISHED", "FAILED", "KILLED"):
        run = mlflow.start_run()
        mlflow.end_run(status=status)
        ids[status] = run.info.run_id
    assert {s: run_row(conn, i)["state"] for s, i in ids.items()} == {
        "FINISHED": "finished",
        "FAILED": "failed",
        "KILLED": "killed",
    }
    # continuing a run (start_run with its id) sets it RUNNING again
    with mlflow.start_run(run_id=ids["FAILED"]):
        assert run_row(conn, ids["FAILED"])["state"] == "running"
    assert MlflowClient().get_run(ids["FAILED"]).info.status == "FINISHED"
    tick(database_url)
    fired = triggers(conn, "ended")
    # killed runs never trigger automations (the continued run's finish is within its cooldown)
    assert {t["run_id"] for t in fired} == {ids["FINISHED"], ids["FAILED"]}


def test_a_bare_experiment_name_goes_to_the_mlflow_entity_and_the_default_experiment_too(web, conn):
    mlflow.set_experiment("demo")
    with mlflow.start_run() as run:
        mlflow.log_metric("x", 1.0)
    assert run_row(conn, run.info.run_id)["project"] == "mlflow/demo"
    assert MlflowClient().get_experiment_by_name("demo").name == "mlflow/demo"
    client = MlflowClient()
    default_run = client.create_run("0")
    client.set_terminated(default_run.info.run_id)
    assert run_row(conn, default_run.info.run_id)["project"] == "mlflow/Default"
    with pytest.raises(MlflowException, match="entity/project"):
        mlflow.set_experiment("not a valid name")


def test_log_batch_with_params_tags_and_metrics_in_any_order(web, conn, database_url):
    apply_yaml(
        conn,
        rule(
            "high-loss",
            '{type: run_metric_threshold, metric: loss, window: 1, operator: ">", threshold: 5}',
            scope="{project: acme/batch}",
        ),
    )
    client = MlflowClient()
    experiment_id = client.create_experiment("acme/batch")
    run = client.create_run(experiment_id, run_name="autolog")
    now = int(time.time() * 1000)
    metrics = [Metric("loss", float(10 - step), now + step, step) for step in reversed(range(10))]
    metrics += [Metric("acc", step / 10, now + step, step) for step in range(10)]
    for _ in range(2):  # the same request again (a retry after a lost answer): stored once
        client.log_batch(
            run.info.run_id,
            metrics=metrics,
            params=[Param("epochs", "10")],
            tags=[RunTag("framework", "torch")],
        )
    client.set_terminated(run.info.run_id, "FINISHED")
    stored = points(conn, run.info.run_id)
    assert len(stored) == 20
    assert [s for k, s, _, _ in stored if k == "loss"] == list(range(10))
    row = run_row(conn, run.info.run_id)
    assert row["config"] == {"epochs": "10"} and "framework=torch" in row["tags"]
    tick(database_url)
    steps = [t["step"] for t in triggers(conn, "high-loss")]  # in step order, though sent in reverse
    assert steps[:1] == [0] and set(steps) <= {0, 1, 2, 3, 4}


def test_model_registry_versions_and_aliases_fire_registry_automations(web, conn, database_url):
    apply_yaml(conn, rule("linked", "{type: registry_version_linked}", scope="{registry: mlflow}"))
    apply_yaml(
        conn,
        rule(
            "champion", '{type: artifact_alias_added, alias_regex: "^champion$"}', scope="{registry: mlflow}"
        ),
    )
    mlflow.set_experiment("acme/vision")
    with mlflow.start_run() as run:
        mlflow.log_metric("loss", 0.1)
    client = MlflowClient()
    model = client.create_registered_model("resnet")
    assert model.name == "resnet"
    with pytest.raises(MlflowException, match="already exists"):
        client.create_registered_model("resnet")
    v1 = client.create_model_version(
        "resnet", "s3://bucket/resnet/1", run_id=run.info.run_id, tags={"k": "v"}
    )
    v2 = client.create_model_version("resnet", "s3://bucket/resnet/2", run_id=run.info.run_id)
    assert (v1.version, v2.version) == ("1", "2") and v1.status == "READY"
    got = client.get_model_version("resnet", "1")
    assert got.source == "s3://bucket/resnet/1" and got.run_id == run.info.run_id and got.tags == {"k": "v"}
    client.set_registered_model_alias("resnet", "champion", "1")
    client.set_registered_model_alias("resnet", "champion", "2")  # moved: a new alias event
    assert client.get_model_version_by_alias("resnet", "champion").version == "2"
    assert client.get_registered_model("resnet").aliases == {"champion": "2"}
    client.delete_registered_model_alias("resnet", "champion")
    with pytest.raises(MlflowException, match="not found"):
        client.get_model_version_by_alias("resnet", "champion")
    with pytest.raises(MlflowException, match="not found"):
        client.get_model_version("resnet", "7")

    tick(database_url)
    linked = triggers(conn, "linked")
    assert len(linked) == 2
    assert [t["alias"] for t in triggers(conn, "champion")] == ["champion", "champion"]


def test_unsupported_calls_answer_in_mlflows_error_format_naming_the_call(web, conn):
    client = MlflowClient()
    with pytest.raises(MlflowException) as raised:
        client.search_experiments()
    assert raised.value.error_code == "NOT_IMPLEMENTED"
    assert "experiments/search" in raised.value.message and "not supported" in raised.value.message
    with pytest.raises(MlflowException) as raised:
        client.delete_experiment("1")
    assert "experiments/delete" in raised.value.message
    import httpx

    with httpx.Client(base_url=web.url) as http:
        answer = http.get(
            "/mlflow/nowhere", headers={"Authorization": f"Bearer {make_key(conn, 'r', 'ingest')}"}
        )
        assert answer.status_code == 404
        assert (
            answer.json()["error_code"] == "ENDPOINT_NOT_FOUND"
            and "GET /mlflow/nowhere" in answer.json()["message"]
        )
        # no key, or a key that does not cover the project: MLflow's errors, nothing written
        assert (
            http.get("/mlflow/api/2.0/mlflow/experiments/get-by-name?experiment_name=acme/x").json()[
                "error_code"
            ]
            == "UNAUTHENTICATED"
        )
        other = make_key(conn, "other", "ingest", "other/*")
        refused = http.post(
            "/mlflow/api/2.0/mlflow/experiments/create",
            json={"name": "acme/secret"},
            headers={"Authorization": f"Bearer {other}"},
        )
        assert refused.status_code == 403 and refused.json()["error_code"] == "PERMISSION_DENIED"
    assert conn.execute("SELECT count(*) FROM projects WHERE name = 'secret'").fetchone()[0] == 0


def test_bad_input_is_refused_in_mlflows_format_naming_the_field_and_stores_nothing(web, conn):
    import httpx

    run_id = MlflowClient().create_run(MlflowClient().create_experiment("acme/bad")).info.run_id
    headers = {"Authorization": f"Bearer {make_key(conn, 'raw', 'ingest', 'acme/*')}"}
    api = "/mlflow/api/2.0/mlflow"
    with httpx.Client(base_url=web.url, headers=headers) as http:
        cases = [
            ("/runs/log-metric", {"run_id": run_id, "key": "loss", "value": "high", "step": 0}, "metrics[0]"),
            ("/runs/log-metric", {"run_id": run_id, "key": "system/cpu", "value": 1, "step": 0}, "reserved"),
            ("/runs/log-metric", {"run_id": run_id, "key": "loss", "value": 1, "step": "x"}, "'step'"),
            ("/runs/log-batch", {"run_id": run_id, "metrics": "loss"}, "'metrics'"),
            ("/runs/set-tag", {"run_id": run_id, "key": "note", "value": "line\nbreak"}, "tag 'note'"),
            ("/runs/log-metric", {"run_id": "nope", "key": "loss", "value": 1}, "nope"),
        ]
        for path, body, named in cases:
            answer = http.post(api + path, json=body)
            assert answer.status_code in (400, 404), (path, answer.text)
            assert answer.json()["error_code"] in ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST")
            assert named in answer.json()["message"], (path, answer.text)
        not_json = http.post(api + "/runs/log-batch", content=b"{")
        assert not_json.status_code == 400 and not_json.json()["error_code"] == "MALFORMED_REQUEST"
    assert points(conn, run_id) == []
    assert not any(tag.startswith("note") for tag in run_row(conn, run_id)["tags"])
