"""The MLflow tracking REST API under /mlflow: the official MLflow client, with
`MLFLOW_TRACKING_URI=http://HOST:PORT/mlflow` and `MLFLOW_TRACKING_TOKEN=<engine API key>`,
logs into the engine, and its runs trigger automations like any other.

How MLflow's objects map onto the engine's:

* an experiment is a project: its name is `entity/project` (a name without `/` goes to entity
  ENGINE_MLFLOW_ENTITY), its id the project's id; MLflow's default experiment `0` is the
  project `ENGINE_MLFLOW_ENTITY/Default`;
* a run is a run (its MLflow id is the engine's run id, a fresh uuid); RUNNING, FINISHED,
  FAILED and KILLED are its states; params are its config (MLflow's hyperparameters are what
  `engine.init(config=…)` holds), tags its tags as `key=value` labels (`mlflow.runName` is its
  name, `mlflow.user` its user);
* metrics go through engine web's ingest path (the SDK's writer, batches stored once). The
  engine's steps belong to the run and never go back, MLflow's to each metric: a point at a
  step lower than the run's current one is stored at the current step (not dropped);
* a registered model is a collection of registry ENGINE_MLFLOW_REGISTRY; a model version is
  an artifact version (collection = the model's name, type `model`) in its run's project
  (without a run: `ENGINE_MLFLOW_ENTITY/models`) linked there, so creating one fires
  `registry_version_linked`; MLflow's version N is the link's index N-1 (the engine counts
  from 0); setting an alias fires `artifact_alias_added` in the registry.

Every other call answers in MLflow's error format (`error_code`, `message` naming the call),
which the client shows as it is. Every route authenticates with the same access dependency
as /api/v1 (the key is MLflow's bearer token) and needs role ingest, its reads too: the
client reads what it logs (an experiment by name before its runs, a run it continues), so
the endpoint is for the keys that log.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Annotated, Any

import psycopg
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.routing import APIRoute
from psycopg.types.json import Jsonb
from starlette.responses import Response

from engine import clock
from engine.db import boundary, one_row, query
from engine.exceptions import EngineError, NotFound
from engine.keys import Place
from engine.sdk import artifacts
from engine.sdk.validate import check_name, parse_project
from engine.settings import get_settings
from engine.web import ingest
from engine.web.auth import Invalid, Principal, access
from engine.web.deps import Conn
from engine.web.models import number

PREFIX = "/mlflow"
API = "/api/2.0/mlflow"
STATUS = {"running": "RUNNING", "finished": "FINISHED", "failed": "FAILED", "killed": "KILLED"}
MODEL_TYPE = "model"
DEFAULT_EXPERIMENT = "0"
SUPPORTED = [
    "experiments/get-by-name",
    "experiments/create",
    "experiments/get",
    "runs/create",
    "runs/get",
    "runs/update",
    "runs/log-metric",
    "runs/log-batch",
    "runs/log-parameter",
    "runs/set-tag",
    "registered-models/create",
    "registered-models/get",
    "registered-models/alias (POST, GET, DELETE)",
    "model-versions/create",
    "model-versions/get",
]


class MlflowError(Exception):
    """An answer in MLflow's error format: {"error_code": …, "message": …}."""

    def __init__(self, code: str, message: str, status: int = 400):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


def _answer(request: Request, exc: BaseException) -> Response:
    """Any error of an MLflow route as MLflow's error JSON (the client prints `message`)."""
    from engine.web.app import JSON, _engine_error

    headers = None
    if isinstance(exc, MlflowError):
        code, message, status = exc.code, exc.message, exc.status
    elif isinstance(exc, HTTPException):  # the access dependency's refusals
        codes = {401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "RESOURCE_DOES_NOT_EXIST"}
        code, message, status = codes.get(exc.status_code, "BAD_REQUEST"), str(exc.detail), exc.status_code
        headers = exc.headers
    elif isinstance(exc, Invalid):
        code, message, status = "INVALID_PARAMETER_VALUE", f"{exc.loc[-1]}: {exc.message}", 400
    elif isinstance(exc, NotFound):
        code, message, status = "RESOURCE_DOES_NOT_EXIST", str(exc), 404
    elif isinstance(exc, (ValueError, TypeError)):  # the SDK's checks of names and values
        code, message, status = "INVALID_PARAMETER_VALUE", str(exc) or type(exc).__name__, 400
    elif isinstance(exc, (EngineError, psycopg.Error)):
        answer = _engine_error(request, exc)  # /api/v1's classification (and its logging)
        message, status = json.loads(bytes(answer.body))["detail"], answer.status_code
        headers = {"Retry-After": "1"} if status == 503 else None
        code = {404: "RESOURCE_DOES_NOT_EXIST", 422: "INVALID_PARAMETER_VALUE", 409: "INVALID_STATE"}.get(
            status, "TEMPORARILY_UNAVAILABLE" if status == 503 else "INTERNAL_ERROR"
        )
        status = 400 if status in (409, 422) else status  # MLflow's status for a refused value
    else:
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        code, message, status = "INTERNAL_ERROR", "internal error (the server's log has the details)", 500
    return JSON({"error_code": code, "message": message}, status_code=status, headers=headers)


class _Route(APIRoute):
    """Errors (the access dependency's included) answered in MLflow's format, not /api/v1's."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:  # every error becomes MLflow's error JSON
                return _answer(request, exc)

        return handle


log = logging.getLogger(__name__)
router = APIRouter(prefix=PREFIX, route_class=_Route, include_in_schema=False)


def _post(path: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The route on MLflow's API prefix and on the `ajax-api` one that some client calls use."""

    def register(func: Callable[..., Any]) -> Callable[..., Any]:
        for base in (API, "/ajax-api/2.0/mlflow"):
            router.add_api_route(base + path, func, methods=["POST"])
        return func

    return register


def _get(
    path: str, methods: tuple[str, ...] = ("GET",)
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def register(func: Callable[..., Any]) -> Callable[..., Any]:
        for base in (API, "/ajax-api/2.0/mlflow"):
            router.add_api_route(base + path, func, methods=list(methods))
        return func

    return register


# -- request fields --------------------------------------------------------------------------
async def _args(request: Request) -> dict[str, Any]:
    """A request's fields: the query string of a GET, the JSON body otherwise."""
    if request.method == "GET":
        return dict(request.query_params)
    try:
        body = await request.json()
    except ValueError:
        raise MlflowError("MALFORMED_REQUEST", "the request body is not JSON") from None
    if not isinstance(body, dict):
        raise MlflowError("MALFORMED_REQUEST", "the request body must be a JSON object")
    return body


Args = Annotated[dict[str, Any], Depends(_args)]


def _text(args: dict[str, Any], name: str, *, required: bool = True) -> str | None:
    value = args.get(name)
    if value is None or value == "":
        if required:
            raise MlflowError("INVALID_PARAMETER_VALUE", f"missing value for required parameter '{name}'")
        return None
    if not isinstance(value, str):
        raise MlflowError("INVALID_PARAMETER_VALUE", f"parameter '{name}' must be a string")
    return value


def _int(value: Any, name: str, default: int) -> int:
    """An int64 field (MLflow's JSON may send them as strings)."""
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise MlflowError(
            "INVALID_PARAMETER_VALUE", f"parameter '{name}' must be an integer, not {value!r}"
        ) from None
    if isinstance(value, bool) or not -(2**63) <= number < 2**63:
        raise MlflowError("INVALID_PARAMETER_VALUE", f"parameter '{name}' must be an integer, not {value!r}")
    return number


def _pairs(args: dict[str, Any], name: str) -> list[tuple[str, str]]:
    """[{key, value}] (tags, params) as (key, value) pairs."""
    items = args.get(name) or []
    if not isinstance(items, list):
        raise MlflowError("INVALID_PARAMETER_VALUE", f"parameter '{name}' must be a list of {{key, value}}")
    pairs = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("key"), str) or not item["key"]:
            raise MlflowError("INVALID_PARAMETER_VALUE", f"every element of '{name}' needs a 'key'")
        value = item.get("value", "")
        pairs.append((item["key"], "" if value is None else str(value)))
    return pairs


def _ms(at: datetime | None) -> int | None:
    return None if at is None else int(at.timestamp() * 1000)


# -- experiments -----------------------------------------------------------------------------
def _project_of(name: str) -> tuple[str, str]:
    """An experiment name as (entity, project): `entity/project`, or a bare project name."""
    full = name if "/" in name else f"{get_settings().mlflow_entity}/{name}"
    try:
        return parse_project(full)
    except ValueError:
        raise MlflowError(
            "INVALID_PARAMETER_VALUE",
            f"experiment name {name!r}: the engine names experiments 'entity/project' (or 'project', in entity "
            f"{get_settings().mlflow_entity!r}), each part 1-128 letters, digits, '.', '_' or '-'",
        ) from None


def _experiment_row(conn: psycopg.Connection, experiment_id: str) -> tuple | None:
    if experiment_id == DEFAULT_EXPERIMENT:
        entity = get_settings().mlflow_entity
        return conn.execute(
            query("mlflow_project_by_name"), {"entity": entity, "project": "Default"}
        ).fetchone()
    pk = _int(experiment_id, "experiment_id", -1)
    return conn.execute(query("mlflow_project_by_id"), {"id": pk}).fetchone()


def _experiment_project(conn: psycopg.Connection, experiment_id: str) -> str:
    """`entity/project` of an experiment id (the default experiment's even before it exists)."""
    if experiment_id == DEFAULT_EXPERIMENT:
        return f"{get_settings().mlflow_entity}/Default"
    with boundary():
        row = _experiment_row(conn, experiment_id)
    if row is None:
        raise MlflowError("RESOURCE_DOES_NOT_EXIST", f"No Experiment with id={experiment_id} exists", 404)
    return f"{row[1]}/{row[2]}"


def _experiment(row: tuple, experiment_id: str | None = None) -> dict[str, Any]:
    pk, entity, name, created = row
    return {
        "experiment_id": experiment_id or str(pk),
        "name": f"{entity}/{name}",
        "artifact_location": f"mlflow-artifacts:/{pk}",
        "lifecycle_stage": "active",
        "creation_time": _ms(created),
        "last_update_time": _ms(created),
        "tags": [],
    }


def experiment_by_name(conn: psycopg.Connection, params: dict[str, str], payload: Any) -> list[Place]:
    name = _text(payload if isinstance(payload, dict) else {}, "experiment_name", required=False)
    name = name or _text(payload if isinstance(payload, dict) else {}, "name")
    assert name is not None
    return [Place("project", "/".join(_project_of(name)))]


def experiment_by_id(conn: psycopg.Connection, params: dict[str, str], payload: Any) -> list[Place]:
    experiment_id = _text(payload if isinstance(payload, dict) else {}, "experiment_id", required=False)
    return [Place("project", _experiment_project(conn, experiment_id or DEFAULT_EXPERIMENT))]


@_get("/experiments/get-by-name")
def get_experiment_by_name(
    request: Request,
    args: Args,
    principal: Annotated[Principal, access("ingest", experiment_by_name, body=True)],
    conn: Conn,
) -> dict[str, Any]:
    name = _text(args, "experiment_name")
    assert name is not None
    entity, project = _project_of(name)
    with boundary():
        row = conn.execute(query("mlflow_project_by_name"), {"entity": entity, "project": project}).fetchone()
    if row is None:
        raise MlflowError("RESOURCE_DOES_NOT_EXIST", f"Could not find experiment with name '{name}'", 404)
    return {"experiment": _experiment(row)}


@_post("/experiments/create")
def create_experiment(
    request: Request,
    args: Args,
    principal: Annotated[Principal, access("ingest", experiment_by_name, body=True)],
    conn: Conn,
) -> dict[str, Any]:
    name = _text(args, "name")
    assert name is not None
    if _pairs(args, "tags"):
        raise MlflowError(
            "INVALID_PARAMETER_VALUE", "experiment tags are not kept by the engine: create it without tags"
        )
    entity, project = _project_of(name)
    with boundary():
        row = conn.execute(query("mlflow_create_project"), {"entity": entity, "project": project}).fetchone()
    if row is None:
        raise MlflowError("RESOURCE_ALREADY_EXISTS", f"Experiment '{entity}/{project}' already exists.", 400)
    return {"experiment_id": str(row[0])}


@_get("/experiments/get")
def get_experiment(
    request: Request,
    args: Args,
    principal: Annotated[Principal, access("ingest", experiment_by_id, body=True)],
    conn: Conn,
) -> dict[str, Any]:
    experiment_id = _text(args, "experiment_id")
    assert experiment_id is not None
    with boundary():
        row = _experiment_row(conn, experiment_id)
    if row is None:
        if experiment_id == DEFAULT_EXPERIMENT:  # not created yet: its first run creates it
            return {
                "experiment": {
                    "experiment_id": DEFAULT_EXPERIMENT,
                    "name": f"{get_settings().mlflow_entity}/Default",
                    "artifact_location": "mlflow-artifacts:/0",
                    "lifecycle_stage": "active",
                    "tags": [],
                }
            }
        raise MlflowError("RESOURCE_DOES_NOT_EXIST", f"No Experiment with id={experiment_id} exists", 404)
    return {"experiment": _experiment(row, experiment_id)}


# -- runs ------------------------------------------------------------------------------------
class _Run:
    """A run row of `mlflow_run`."""

    def __init__(self, row: tuple):
        (
            self.pk,
            self.state,
            self.project_id,
            self.entity,
            self.project,
            self.run_id,
            self.name,
            self.user,
            self.config,
            self.tags,
            self.created_at,
            self.finished_at,
        ) = row

    @property
    def row(self) -> ingest.RunRow:
        return ingest.RunRow(self.pk, self.state, self.project_id)

    @property
    def label(self) -> str:
        return f"{self.entity}/{self.project}/{self.run_id}"


def _find_run(conn: psycopg.Connection, run_id: str) -> _Run:
    with boundary():
        rows = conn.execute(query("mlflow_run"), {"run_id": run_id}).fetchall()
    if not rows:
        raise MlflowError("RESOURCE_DOES_NOT_EXIST", f"Run with id={run_id} not found", 404)
    if len(rows) > 1:
        raise MlflowError(
            "INVALID_PARAMETER_VALUE",
            f"run id {run_id!r} names runs in several projects; MLflow needs a unique id "
            "(runs made through MLflow have uuids)",
        )
    return _Run(rows[0])


def _run_id(args: dict[str, Any]) -> str:
    run_id = _text(args, "run_id", required=False) or _text(args, "run_uuid", required=False)
    if run_id is None:
        raise MlflowError("INVALID_PARAMETER_VALUE", "missing value for required parameter 'run_id'")
    return run_id


def run_in_request(conn: psycopg.Connection, params: dict[str, str], payload: Any) -> list[Place]:
    run = _find_run(conn, _run_id(payload if isinstance(payload, dict) else {}))
    return [Place("project", f"{run.entity}/{run.project}")]


def _tag_pairs(labels: list[str]) -> list[dict[str, str]]:
    return [{"key": k, "value": v} for k, _, v in (label.partition("=") for label in labels)]


def _run_json(conn: psycopg.Connection, run: _Run) -> dict[str, Any]:
    with boundary():
        metrics = conn.execute(query("mlflow_run_metrics"), {"run_pk": run.pk}).fetchall()
    info: dict[str, Any] = {
        "run_id": run.run_id,
        "run_uuid": run.run_id,
        "experiment_id": str(run.project_id),
        "run_name": run.name,
        "user_id": run.user or "",
        "status": STATUS[run.state],
        "start_time": _ms(run.created_at),
        "artifact_uri": f"mlflow-artifacts:/{run.project_id}/{run.run_id}/artifacts",
        "lifecycle_stage": "active",
    }
    if run.finished_at is not None and run.state != "running":
        info["end_time"] = _ms(run.finished_at)
    tags = [*_tag_pairs(run.tags), {"key": "mlflow.runName", "value": run.name}]
    if run.user:
        tags.append({"key": "mlflow.user", "value": run.user})
    params = [
        {"key": k, "value": v if isinstance(v, str) else json.dumps(v)} for k, v in (run.config or {}).items()
    ]
    return {
        "info": info,
        "data": {
            "metrics": [
                {"key": key, "value": value, "timestamp": _ms(at), "step": step}
                for key, value, at, step in metrics
            ],
            "params": params,
            "tags": tags,
        },
        "inputs": {},
    }


def _label(key: str, value: str) -> str:
    """A MLflow tag as an engine run tag: `key=value` (`key` alone when the value is empty)."""
    label = f"{key}={value}" if value else key
    if "=" in key:
        raise MlflowError("INVALID_PARAMETER_VALUE", f"tag key {key!r}: '=' is not allowed in a tag key")
    try:
        return check_name("run tag", label)
    except ValueError:
        raise MlflowError(
            "INVALID_PARAMETER_VALUE",
            f"tag {key!r}: the engine keeps tags as run tags 'key=value' of 1-256 characters without control "
            f"characters (this one has {len(label)})",
        ) from None


def _update(
    conn: psycopg.Connection,
    run: _Run,
    params: list[tuple[str, str]],
    tags: list[tuple[str, str]],
    name: str | None = None,
) -> None:
    """Params into the run's config (a param cannot change, as in MLflow) and tags into its
    tags (a tag replaces the same key's), in one transaction."""
    if not params and not tags and name is None:
        return
    with boundary(), conn.transaction():
        stored_name, user, config, labels = one_row(
            conn.execute(query("mlflow_lock_run_attributes"), {"run_pk": run.pk})
        )
        config = dict(config)
        for key, value in params:
            check_name("param key", key)
            old = config.get(key)
            if old is not None and (old if isinstance(old, str) else json.dumps(old)) != value:
                raise MlflowError(
                    "INVALID_PARAMETER_VALUE",
                    f"Changing param values is not allowed. Param with key='{key}' was already logged with "
                    f"value='{old}' for run ID='{run.run_id}'. Attempted logging new value '{value}'.",
                )
            config[key] = value
        for key, value in tags:
            if key == "mlflow.runName":
                stored_name = check_name("run name", value)
            elif key == "mlflow.user":
                user = value
            else:
                labels = [t for t in labels if t != key and not t.startswith(key + "=")]
                labels.append(_label(key, value))
        if name is not None:
            stored_name = check_name("run name", name)
        conn.execute(
            query("mlflow_set_run_attributes"),
            {"run_pk": run.pk, "name": stored_name, "user": user, "config": Jsonb(config), "tags": labels},
        )


@_post("/runs/create")
def create_run(
    request: Request,
    args: Args,
    principal: Annotated[Principal, access("ingest", experiment_by_id, body=True)],
    conn: Conn,
) -> dict[str, Any]:
    project = _experiment_project(conn, _text(args, "experiment_id", required=False) or DEFAULT_EXPERIMENT)
    tags = dict(_pairs(args, "tags"))
    name = _text(args, "run_name", required=False) or tags.pop("mlflow.runName", None) or None
    tags.pop("mlflow.runName", None)
    user = _text(args, "user_id", required=False) or tags.get("mlflow.user") or None
    tags.pop("mlflow.user", None)
    labels = [_label(k, v) for k, v in tags.items()]
    opened = ingest.open_run(
        conn,
        project=project,
        name=name,
        user=user,
        run_id=uuid.uuid4().hex,
        config=None,
        tags=labels,
        resume=False,
    )
    return {"run": _run_json(conn, _find_run(conn, opened.id))}


@_get("/runs/get")
def get_run(
    request: Request,
    args: Args,
    principal: Annotated[Principal, access("ingest", run_in_request, body=True)],
    conn: Conn,
) -> dict[str, Any]:
    return {"run": _run_json(conn, _find_run(conn, _run_id(args)))}


@_post("/runs/update")
def update_run(
    request: Request,
    args: Args,
    principal: Annotated[Principal, access("ingest", run_in_request, body=True)],
    conn: Conn,
) -> dict[str, Any]:
    run = _find_run(conn, _run_id(args))
    status = _text(args, "status", required=False)
    name = _text(args, "run_name", required=False)
    if name is not None:
        _update(conn, run, [], [], name=name)
    if status is not None:
        if status not in ("RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED"):
            raise MlflowError("INVALID_PARAMETER_VALUE", f"unknown run status {status!r}")
        if status == "RUNNING":  # a run continued (start_run(run_id=…)): back to running
            ingest.change_state(
                conn, run.row, ("finished", "failed", "killed"), "running", None, principal.author
            )
        elif status != "SCHEDULED":
            to_state = status.lower()
            exit_code = {"finished": 0, "failed": 1}.get(to_state)
            ingest.change_state(conn, run.row, ("running",), to_state, exit_code, principal.author)
    return {"run_info": _run_json(conn, _find_run(conn, run.run_id))["info"]}


def _metric_rows(metrics: list[Any]) -> list[ingest.Row]:
    """MLflow metrics as `run.log` rows: in step order (MLflow's batches are in any order), one
    row per step and timestamp, a key at most once per row."""
    points = []
    if not isinstance(metrics, list):
        raise MlflowError("INVALID_PARAMETER_VALUE", "parameter 'metrics' must be a list")
    for index, metric in enumerate(metrics):
        if not isinstance(metric, dict):
            raise MlflowError("INVALID_PARAMETER_VALUE", f"metrics[{index}] must be an object")
        try:
            key = ingest.check_key(metric.get("key"))
            value = number(metric.get("value"))
        except (TypeError, ValueError) as exc:
            raise MlflowError("INVALID_PARAMETER_VALUE", f"metrics[{index}]: {exc}") from None
        step = _int(metric.get("step"), "step", 0)
        if step < 0:
            raise MlflowError("INVALID_PARAMETER_VALUE", f"metric {key!r}: step {step} is negative")
        ms = _int(metric.get("timestamp"), "timestamp", _ms(clock.now()) or 0)
        if not clock.UNIX_MICROS_MIN <= ms * 1000 <= clock.UNIX_MICROS_MAX:
            raise MlflowError("INVALID_PARAMETER_VALUE", f"metric {key!r}: timestamp {ms} is out of range")
        points.append((step, clock.from_unix_micros(ms * 1000), key, value))
    points.sort(key=lambda p: p[0])
    rows: list[ingest.Row] = []
    keys: list[str] = []
    values: list[float] = []
    current: tuple[int, int] | None = None
    for step, at, key, value in points:
        if current != (step, at) or key in keys:
            if keys:
                assert current is not None
                rows.append((current[1], current[0], tuple(keys), tuple(values)))
            keys, values, current = [], [], (step, at)
        keys.append(key)
        values.append(value)
    if keys and current is not None:
        rows.append((current[1], current[0], tuple(keys), tuple(values)))
    return rows


def _store_metrics(
    request: Request, conn: psycopg.Connection, run: _Run, metrics: list[Any], args: dict[str, Any]
) -> None:
    rows = _metric_rows(metrics)
    if not rows:
        return
    if sum(len(r[2]) for r in rows) > ingest.MAX_BATCH_POINTS:
        raise MlflowError(
            "INVALID_PARAMETER_VALUE", f"a batch holds at most {ingest.MAX_BATCH_POINTS} metrics"
        )
    # the same request sent again (the client retries after a lost answer) is stored once
    batch_id = (
        "mlflow-"
        + hashlib.sha256(f"{run.run_id}\0{json.dumps(args, sort_keys=True)}".encode()).hexdigest()[:48]
    )
    path = ingest.RunPath(run.entity, run.project, run.run_id)
    ingest.store_batch(conn, path, batch_id, rows, request.app.state.settings, clamp=True)


@_post("/runs/log-metric")
def log_metric(
    request: Request,
    args: Args,
    principal: Annotated[Principal, access("ingest", run_in_request, body=True)],
    conn: Conn,
) -> dict[str, Any]:
    run = _find_run(conn, _run_id(args))
    metric = {k: args.get(k) for k in ("key", "value", "timestamp", "step")}
    _store_metrics(request, conn, run, [metric], args)
    return {}


@_post("/runs/log-batch")
def log_batch(
    request: Request,
    args: Args,
    principal: Annotated[Principal, access("ingest", run_in_request, body=True)],
    conn: Conn,
) -> dict[str, Any]:
    run = _find_run(conn, _run_id(args))
    _update(conn, run, _pairs(args, "params"), _pairs(args, "tags"))
    _store_metrics(request, conn, run, args.get("metrics") or [], args)
    return {}


@_post("/runs/log-parameter")
def log_parameter(
    request: Request,
    args: Args,
    principal: Annotated[Principal, access("ingest", run_in_request, body=True)],
    conn: Conn,
) -> dict[str, Any]:
    run = _find_run(conn, _run_id(args))
    key = _text(args, "key")
    assert key is not None
    _update(conn, run, [(key, str(args.get("value") or ""))], [])
    return {}


@_post("/runs/set-tag")
def set_tag(
    request: Request,
    args: Args,
    principal: Annotated[Principal, access("ingest", run_in_request, body=True)],
    conn: Conn,
) -> dict[str, Any]:
    run = _find_run(conn, _run_id(args))
    key = _text(args, "key")
    assert key is not None
    _update(conn, run, [], [(key, str(args.get("value") or ""))])
    return {}


# -- model registry --------------------------------------------------------------------------
def _registry() -> str:
    return get_settings().mlflow_registry


def in_registry(conn: psycopg.Connection, params: dict[str, str], payload: Any) -> list[Place]:
    return [Place("registry", _registry())]


def version_places(conn: psycopg.Connection, params: dict[str, str], payload: Any) -> list[Place]:
    """A new model version: the registry, and the project its artifact version goes to."""
    return [Place("registry", _registry()), Place("project", _version_project(conn, payload))]


def _version_project(conn: psycopg.Connection, args: Any) -> str:
    run_id = _text(args if isinstance(args, dict) else {}, "run_id", required=False)
    if run_id is None:
        return f"{get_settings().mlflow_entity}/models"
    run = _find_run(conn, run_id)
    return f"{run.entity}/{run.project}"


def _model_row(conn: psycopg.Connection, name: str) -> tuple:
    with boundary():
        row = conn.execute(
            query("mlflow_registered_model"), {"registry": _registry(), "name": name}
        ).fetchone()
    if row is None:
        raise MlflowError("RESOURCE_DOES_NOT_EXIST", f"Registered Model with name={name} not found", 404)
    return row


def _versions(conn: psycopg.Connection, name: str, version: str | None = None) -> list[dict[str, Any]]:
    collection_id = _model_row(conn, name)[0]
    index = None
    if version is not None:
        index = _int(version, "version", 0) - 1
        if index < 0:
            raise MlflowError(
                "INVALID_PARAMETER_VALUE", f"model version {version!r} must be a whole number >= 1"
            )
    with boundary():
        rows = conn.execute(
            query("mlflow_model_versions"), {"collection_id": collection_id, "version_index": index}
        ).fetchall()
    if version is not None and not rows:
        raise MlflowError(
            "RESOURCE_DOES_NOT_EXIST", f"Model Version (name={name}, version={version}) not found", 404
        )
    out = []
    for _, index, linked_at, metadata, run_id, aliases in rows:
        out.append(
            {
                "name": name,
                "version": str(index + 1),
                "creation_timestamp": _ms(linked_at),
                "last_updated_timestamp": _ms(linked_at),
                "current_stage": "None",
                "description": metadata.get("description", ""),
                "source": metadata.get("source", ""),
                "run_id": run_id or "",
                "status": "READY",
                "tags": [{"key": k, "value": v} for k, v in (metadata.get("tags") or {}).items()],
                "aliases": [a for a in aliases if a != artifacts.LATEST],
            }
        )
    return out


def _model_json(conn: psycopg.Connection, name: str) -> dict[str, Any]:
    _, stored, created = _model_row(conn, name)
    versions = _versions(conn, name)
    return {
        "name": stored,
        "creation_timestamp": _ms(created),
        "last_updated_timestamp": versions[-1]["last_updated_timestamp"] if versions else _ms(created),
        "description": "",
        "latest_versions": versions[-1:],
        "tags": [],
        "aliases": [{"alias": a, "version": v["version"]} for v in versions for a in v["aliases"]],
    }


@_post("/registered-models/create")
def create_registered_model(
    request: Request,
    args: Args,
    principal: Annotated[Principal, access("ingest", in_registry, body=True)],
    conn: Conn,
) -> dict[str, Any]:
    name = _text(args, "name")
    assert name is not None
    check_name("registered model name", name)
    if _pairs(args, "tags") or args.get("description"):
        raise MlflowError(
            "INVALID_PARAMETER_VALUE",
            "registered model tags and descriptions are not kept by the engine: create it without them "
            "(model versions keep theirs)",
        )
    with boundary(), conn.transaction():
        existed = conn.execute(
            query("mlflow_registered_model"), {"registry": _registry(), "name": name}
        ).fetchone()
        if existed is not None:
            raise MlflowError("RESOURCE_ALREADY_EXISTS", f"Registered Model (name={name}) already exists.")
        (registry_id,) = one_row(conn.execute(query("upsert_registry"), {"registry": _registry()}))
        conn.execute(
            query("upsert_registry_collection"),
            {"registry_id": registry_id, "collection": name, "type": MODEL_TYPE},
        )
    return {"registered_model": _model_json(conn, name)}


@_get("/registered-models/get")
def get_registered_model(
    request: Request,
    args: Args,
    principal: Annotated[Principal, access("ingest", in_registry, body=True)],
    conn: Conn,
) -> dict[str, Any]:
    name = _text(args, "name")
    assert name is not None
    return {"registered_model": _model_json(conn, name)}


@_post("/model-versions/create")
def create_model_version(
    request: Request,
    args: Args,
    principal: Annotated[Principal, access("ingest", version_places, body=True)],
    conn: Conn,
) -> dict[str, Any]:
    name = _text(args, "name")
    source = _text(args, "source", required=False) or ""
    assert name is not None
    _model_row(conn, name)  # MLflow: the registered model must exist
    run_id = _text(args, "run_id", required=False)
    run = _find_run(conn, run_id) if run_id else None
    metadata: dict[str, Any] = {"source": source, "mlflow_run_id": run_id or ""}
    if args.get("description"):
        metadata["description"] = str(args["description"])
    if tags := _pairs(args, "tags"):
        metadata["tags"] = dict(tags)
    project = _version_project(conn, args)
    at = clock.now()
    with boundary(), conn.transaction():
        if run is not None:
            project_id, run_pk = run.project_id, run.pk
        else:
            entity, project_name = parse_project(project)
            (project_id,) = one_row(
                conn.execute(query("upsert_project"), {"entity": entity, "project": project_name})
            )
            run_pk = None
        version = artifacts.create_version(
            conn,
            project_id=project_id,
            project=project,
            name=name,
            type=MODEL_TYPE,
            metadata=metadata,
            aliases=[],
            tags=[],
            digest=None,
            run_pk=run_pk,
            author=principal.author,
            at=at,
        )
        link = artifacts.link(
            conn, version, registry=_registry(), collection=name, aliases=[], author=principal.author, at=at
        )
    return {"model_version": _versions(conn, name, str(link.version_index + 1))[0]}


@_get("/model-versions/get")
def get_model_version(
    request: Request,
    args: Args,
    principal: Annotated[Principal, access("ingest", in_registry, body=True)],
    conn: Conn,
) -> dict[str, Any]:
    name, version = _text(args, "name"), _text(args, "version")
    assert name is not None and version is not None
    return {"model_version": _versions(conn, name, version)[0]}


def _alias(args: dict[str, Any]) -> str:
    alias = _text(args, "alias")
    assert alias is not None
    if alias.lower() == artifacts.LATEST:
        raise MlflowError(
            "INVALID_PARAMETER_VALUE", "'latest' is the engine's own alias of the newest version"
        )
    return artifacts.check_alias(alias)


@_post("/registered-models/alias")
def set_alias(
    request: Request,
    args: Args,
    principal: Annotated[Principal, access("ingest", in_registry, body=True)],
    conn: Conn,
) -> dict[str, Any]:
    name, version = _text(args, "name"), _text(args, "version")
    assert name is not None and version is not None
    alias = _alias(args)
    collection_id = _model_row(conn, name)[0]
    index = _int(version, "version", 0) - 1
    with boundary():
        row = conn.execute(
            query("mlflow_model_versions"), {"collection_id": collection_id, "version_index": index}
        ).fetchone()
    if row is None:
        raise MlflowError(
            "RESOURCE_DOES_NOT_EXIST", f"Model Version (name={name}, version={version}) not found", 404
        )
    with boundary(), conn.transaction():
        artifacts.set_registry_alias(conn, row[0], alias, author=principal.author, at=clock.now())
    return {}


@_get("/registered-models/alias", methods=("DELETE",))
def delete_alias(
    request: Request,
    args: Args,
    principal: Annotated[Principal, access("ingest", in_registry, body=True)],
    conn: Conn,
) -> dict[str, Any]:
    name = _text(args, "name")
    assert name is not None
    alias = _alias(args)
    collection_id = _model_row(conn, name)[0]
    with boundary():
        conn.execute(query("mlflow_delete_alias"), {"collection_id": collection_id, "alias": alias})
    return {}


@_get("/registered-models/alias")
def get_version_by_alias(
    request: Request,
    args: Args,
    principal: Annotated[Principal, access("ingest", in_registry, body=True)],
    conn: Conn,
) -> dict[str, Any]:
    name = _text(args, "name")
    assert name is not None
    alias = _alias(args)
    collection_id = _model_row(conn, name)[0]
    with boundary():
        row = conn.execute(
            query("mlflow_alias_link"), {"collection_id": collection_id, "alias": alias}
        ).fetchone()
    index = None if row is None else row[0]
    if index is None:
        raise MlflowError("RESOURCE_DOES_NOT_EXIST", f"Registered model alias {alias} not found.", 404)
    return {"model_version": _versions(conn, name, str(index + 1))[0]}


# -- everything else -------------------------------------------------------------------------
@router.api_route(
    "/{call:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], dependencies=[access("ingest")]
)
async def unsupported(call: str, request: Request) -> Response:
    """MLflow's answer to a call it does not know, naming the call and what is supported."""
    name = f"{request.method} {PREFIX}/{call}"
    if call.startswith(("api/2.0/mlflow", "ajax-api/2.0/mlflow", "api/2.0/mlflow-artifacts")):
        raise MlflowError(
            "NOT_IMPLEMENTED",
            f"{name} is not supported by the engine's MLflow endpoint (it supports: {', '.join(SUPPORTED)})",
            501,
        )
    raise MlflowError("ENDPOINT_NOT_FOUND", f"{name} is not an MLflow endpoint", 404)
