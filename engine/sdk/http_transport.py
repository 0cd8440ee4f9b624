"""The HTTP transport of the SDK's writer: batches go to `engine web` (ENGINE_URL) instead of
the database, through the same buffer and retries (buffer.py).

A flush of the buffer becomes one `POST /api/v1/runs/{entity}/{project}/{run_id}/log` per
run of the batch (several when a run has more than CHUNK_POINTS points in it), each with a
batch id made of this process's token, the batch's `seq` and the request's index. A batch
whose send failed is sent again as it was (buffer.py), so its requests keep their ids and the
server stores each once, whether the first attempt reached it or not.

`Client` is the one HTTP connection pool (keep-alive) of a session; `Remote` holds the calls
the runs and `engine.Api()` make besides logging (create, finish, artifacts, aliases, ...).
Errors are the SDK's own: 401 KeyRefused, 403 AccessDenied, 404 NotFound, 422 ValueError
(the server's message names the field), no answer / 429 / 5xx ServerUnavailable (transient).
"""

from __future__ import annotations

import contextlib
import functools
import http
import json
import logging
import secrets
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol, cast
from urllib.parse import quote

import httpcore
import httpx
import pydantic_core

from engine.clock import from_micros, from_unix_micros, to_unix_micros
from engine.exceptions import (
    AccessDenied,
    EngineError,
    IngestError,
    KeyRefused,
    NotFound,
    RuleIssue,
    RuleValidationError,
    ServerUnavailable,
)
from engine.sdk import buffer
from engine.sdk.artifacts import ArtifactVersion, RegistryLink
from engine.sdk.buffer import Batch, Part, Record, SendResult, Stream
from engine.settings import API_PREFIX, Settings, api_endpoint

log = logging.getLogger(__name__)

CHUNK_POINTS = 20_000  # points per log request at most (well under ENGINE_WEB_MAX_BODY as JSON)
TIMEOUT = {"connect": 5.0, "read": 30.0, "write": 30.0, "pool": 30.0}  # seconds
# what httpcore raises when no answer (or half of one) came back
_TRANSPORT_ERRORS = (
    httpcore.TimeoutException,
    httpcore.NetworkError,
    httpcore.ProtocolError,
    httpcore.ProxyError,
)
_TRANSIENT = {408, 425, 429}


class Opening(buffer.Opening, Protocol):
    """A run's creation (run.py), as the body of `POST /runs` and what its answer sets."""

    def request(self) -> dict[str, Any]: ...
    def opened(self, answer: dict[str, Any]) -> None: ...


@functools.cache
def _tls() -> ssl.SSLContext:
    """One TLS context per process (httpx's defaults: certifi's roots, SSL_CERT_FILE): building
    one loads the CA bundle, ~0.1 s, which every session (each `engine.init` of a process that
    runs one run after another) would otherwise pay again."""
    return httpx.create_ssl_context()


@dataclass(frozen=True)
class Answer:
    """An HTTP answer: its status and body."""

    status: int
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content)


class Client:
    """The session's HTTP client: keep-alive connections to ENGINE_URL, the key in a header.

    It is httpx's own connection pool (httpcore) without httpx's client around it: cookies,
    redirects, auth flows and URL merging are nothing the SDK uses, and they were a third of a
    small request's time on the client."""

    def __init__(self, settings: Settings):
        base, key = api_endpoint(settings)
        self.where = f"the engine server {base}"
        self._base = base + API_PREFIX
        self._headers = [(b"Authorization", f"Bearer {key}".encode()), (b"Accept", b"application/json")]
        self._json = [*self._headers, (b"Content-Type", b"application/json")]
        self._pool = httpcore.ConnectionPool(
            ssl_context=_tls(), max_connections=4, max_keepalive_connections=4, keepalive_expiry=30.0
        )

    def call(self, method: str, path: str, body: Any = None, *, content: bytes | None = None) -> Any:
        """One request; its JSON answer, or the SDK's exception for an error answer."""
        if content is None and body is not None:
            content = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
        try:
            response = self._pool.request(
                method,
                self._base + path,
                headers=self._json if content is not None else self._headers,
                content=content,
                extensions={"timeout": TIMEOUT},
            )
        except _TRANSPORT_ERRORS as exc:  # refused, reset, timed out: nothing (or no answer) came back
            raise ServerUnavailable(f"{self.where} does not answer ({type(exc).__name__}: {exc})") from None
        answer = Answer(response.status, response.content)
        if answer.status >= 400:
            raise self.error(answer)
        return answer.json() if answer.content else None

    def error(self, response: Answer) -> Exception:
        """The SDK's exception for an error answer, with the server's message."""
        status = response.status
        try:
            detail = str(response.json().get("detail") or "")
        except (ValueError, AttributeError):
            detail = response.content[:200].decode(errors="replace").strip()
        detail = detail or _phrase(status)
        if status in _TRANSIENT or status >= 500:
            return ServerUnavailable(f"{self.where} answered {status}: {detail}")
        if status == 401:
            return KeyRefused(f"{self.where} refused ENGINE_API_KEY: {detail}")
        if status == 403:
            return AccessDenied(f"{self.where} refused the request: {detail}")
        if status == 404:
            return NotFound(detail)
        if status == 422:
            error = ValueError(detail)
            with contextlib.suppress(ValueError, AttributeError):
                error.errors = [e for e in response.json().get("errors") or [] if "line" in e]  # type: ignore[attr-defined]
            return error
        if status == 413:
            return IngestError(f"{self.where} refused a request as too large: {detail}")
        return EngineError(f"{self.where} answered {status}: {detail}")

    def close(self) -> None:
        self._pool.close()


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


def run_path(label: str) -> str:
    """`entity/project/run_id` → `/runs/entity/project/run_id` (each part quoted)."""
    return "/runs/" + "/".join(quote(part, safe="") for part in label.split("/"))


class HttpTransport:
    """Sends the writer's batches to `engine web` (see the module docstring)."""

    advice = "Check that ENGINE_URL answers (`curl $ENGINE_URL/healthz`) and that ENGINE_API_KEY is valid."

    def __init__(self, client: Client, chunk_points: int = CHUNK_POINTS):
        self._client = client
        self.where = client.where
        self.chunk_points = chunk_points
        self._token = secrets.token_hex(8)  # batch ids of this process: never another's
        self._form = "time_us"  # the body's form (FORMS), until a server refuses its field

    def note_keys(self, keys: list[str]) -> None:
        pass  # the server interns keys

    def open(self, opening: buffer.Opening) -> tuple[int, int, int]:
        o = cast("Opening", opening)
        answer = self._client.call("POST", "/runs", o.request())
        o.opened(answer)
        return 0, int(answer.get("step", -1)), int(answer.get("system_step", -1))

    @staticmethod
    def is_transient(error: EngineError) -> bool:
        return isinstance(error, ServerUnavailable)

    def close_if_idle(self) -> float | None:
        return None  # httpx closes idle keep-alive connections itself

    def send(self, batch: Batch) -> SendResult:
        """Every run's points of the batch; a run that ends with the batch ends in the request
        of its last points (`finish` in the body), or with POST …/finish when it has none."""
        stop: list[tuple[Stream, str]] = []
        closed: list[tuple[Stream, object]] = []
        # the runs that end with this batch: their exit code, and whether they obey a stop request
        ending = {
            id(stream): (stream, cast("tuple[str, dict[str, Any]]", change)[1])
            for stream, change in batch.closing
        }
        for part in batch.parts:
            path = run_path(part.stream.label) + "/log"
            bodies = list(log_bodies(part, self.chunk_points))
            for index, body in enumerate(bodies):
                body["batch_id"] = f"{self._token}-{batch.seq}-{index}"
                end = ending.pop(id(part.stream), None) if index == len(bodies) - 1 else None
                if end is not None:
                    body["finish"] = _finish_body(*_ending(end[1]))
                try:
                    answer = self._post_log(path, body)
                except (ValueError, NotFound, AccessDenied, KeyRefused, IngestError) as exc:
                    # refused for good (the run was killed or deleted, a value the server cannot
                    # store, the key's scope): retrying would block the run forever
                    log.error(
                        "run %s: %d logged points were refused by %s and dropped: %s",
                        part.stream.label,
                        _points(body),
                        self.where,
                        exc,
                    )
                    if end is not None:
                        ending[id(part.stream)] = end  # still to end: on its own
                    continue
                # an automation's stop_run asked the run to stop: {"automation": NAME}
                request = (answer or {}).get("stop_requested")
                if isinstance(request, dict) and request.get("automation"):
                    stop.append((part.stream, str(request["automation"])))
                if end is not None:
                    closed.append((part.stream, str(answer["finished"]["state"])))
        for stream, params in ending.values():
            closed.append((stream, self._call_finish(stream.label, _finish_body(*_ending(params)))))
        return SendResult(closed, tuple(stop))

    def _post_log(self, path: str, body: dict[str, Any]) -> Any:
        """POST a log body in the newest form the server takes: one that predates a form
        refuses its field (422 naming it), and the body goes in the next older form, as do
        the session's later bodies."""
        while True:
            try:
                return self._client.call("POST", path, content=encode(in_form(body, self._form)))
            except ValueError as exc:
                older = _older_form(self._form, str(exc)) if "columns" in body else None
                if older is None:
                    raise
                log.info(
                    "%s does not take %s (%s): log bodies are sent as %s", self.where, self._form, exc, older
                )
                self._form = older

    def finish(self, label: str, exit_code: int | None, *, stopped: bool = False) -> str:
        """End the run (`stopped`: killed by its pending stop request); the state it is in
        afterwards (`killed` stays killed)."""
        return self._call_finish(label, _finish_body(exit_code, stopped))

    def _call_finish(self, label: str, body: dict[str, Any]) -> str:
        answer = self._client.call("POST", run_path(label) + "/finish", body)
        return str(answer["state"])


def _ending(params: dict[str, Any]) -> tuple[int | None, bool]:
    """A run's final change (run.py's parameters) as its exit code and whether it obeys a stop
    request (the automation's name in `stopped_by`)."""
    return params.get("exit_code"), params.get("stopped_by") is not None


def _finish_body(exit_code: int | None, stopped: bool) -> dict[str, Any]:
    """POST …/finish's body (and a last log batch's `finish`): a run that obeys a stop request
    ends killed, whatever its exit code."""
    body: dict[str, Any] = {"exit_code": exit_code or 0}
    if stopped:
        body["stopped"] = True
    return body


class Remote:
    """What runs and `engine.Api()` do besides logging, as API calls (artifacts.py's handles)."""

    def __init__(self, client: Client, transport: HttpTransport):
        self.client = client
        self.transport = transport

    def finish(self, label: str, exit_code: int | None, *, stopped: bool = False) -> str:
        return self.transport.finish(label, exit_code, stopped=stopped)

    def log_artifact(self, label: str, body: dict[str, Any]) -> ArtifactVersion:
        return _version(self.client.call("POST", run_path(label) + "/artifacts", body))

    def artifact_version(self, project: str, collection: str, which: int | str) -> ArtifactVersion:
        return _version(self.client.call("GET", _version_path(project, collection, which)))

    def add_alias(self, version: ArtifactVersion, alias: str) -> bool:
        path = _version_path(version.project, version.collection, version.version_index) + "/aliases"
        return bool(self.client.call("POST", path, {"alias": alias})["changed"])

    def add_tag(self, version: ArtifactVersion, tag: str) -> bool:
        path = _version_path(version.project, version.collection, version.version_index) + "/tags"
        return bool(self.client.call("POST", path, {"tag": tag})["changed"])

    def link(
        self, version: ArtifactVersion, registry: str, collection: str, aliases: list[str]
    ) -> RegistryLink:
        path = _version_path(version.project, version.collection, version.version_index) + "/links"
        answer = self.client.call(
            "POST", path, {"registry": registry, "collection": collection, "aliases": aliases}
        )
        return RegistryLink(
            answer["id"],
            answer["registry"],
            answer["collection"],
            answer["version_index"],
            _version(answer["artifact"]),
        )

    def apply(self, texts: list[str], *, prune: bool) -> list[tuple[str, str]]:
        """`POST /automations/apply` (an admin key); the rules' problems as RuleValidationError."""
        body = {"yaml": "\n---\n".join(texts), "file": "<python>", "prune": prune}
        try:
            answer = self.client.call("POST", "/automations/apply", body)
        except ValueError as exc:
            issues = getattr(exc, "errors", None)
            if not issues:
                raise
            raise RuleValidationError(
                [
                    RuleIssue("<python>", i.get("line"), i.get("field") or "", i.get("message", ""))
                    for i in issues
                ]
            ) from None
        return [(o["name"], o["outcome"]) for o in answer]

    def alert(self, label: str, params: dict[str, Any]) -> bool:
        """`run.alert` (checked by alerts.check): False when the server dropped a repeated title."""
        body = {k: params[k] for k in ("title", "text", "level")}
        body["wait_duration"] = params["wait"].total_seconds()
        return bool(self.client.call("POST", run_path(label) + "/alerts", body)["sent"])

    def kill_run(self, project: str, run_id: str) -> bool:
        return bool(self.client.call("POST", run_path(f"{project}/{run_id}") + "/kill")["changed"])


def _version_path(project: str, collection: str, which: int | str) -> str:
    parts = [*project.split("/"), collection, str(which)]
    return "/artifacts/" + "/".join(quote(p, safe="") for p in parts)


def _version(answer: dict[str, Any]) -> ArtifactVersion:
    return ArtifactVersion(
        answer["id"],
        answer["project"],
        answer["collection"],
        answer["type"],
        answer["version_index"],
        answer["digest"],
        answer["metadata"],
    )


def log_bodies(part: Part, chunk_points: int, *, columns: bool = True) -> Iterator[dict[str, Any]]:
    """A run's part of a batch as log request bodies (without their batch id) of at most
    `chunk_points` points each (a record is never split), as `encode` writes them: the
    metric rows as `columns` (or, for a server that predates them, as `rows`), system
    samples as `system`."""
    rows: list[Record] = []
    system: list[dict[str, Any]] = []
    n = 0
    for records, with_step in ((part.records, True), (part.system, False)):
        for record in records:
            t, _, keys, values = record
            if n and n + len(values) > chunk_points:
                yield _body(rows, system, columns)
                rows, system, n = [], [], 0
            if with_step:
                rows.append(record)
            else:
                system.append({"time": from_micros(t), "values": dict(zip(keys, values))})
            n += len(values)
    if rows or system:
        yield _body(rows, system, columns)


def _body(rows: list[Record], system: list[dict[str, Any]], columns: bool) -> dict[str, Any]:
    if not columns:
        return {
            "rows": [
                {"time": from_micros(t), "step": step, "values": dict(zip(keys, values))}
                for t, step, keys, values in rows
            ],
            "system": system,
        }
    body: dict[str, Any] = {"system": system}
    if rows:
        unix = to_unix_micros(0)
        # a run logs the same keys (the same tuple) call after call: usually one key set
        keysets: dict[tuple[str, ...], int] = {}
        chosen = [keysets.setdefault(r[2], len(keysets)) for r in rows]
        body["columns"] = {
            "keys": list(keysets),
            "keyset": chosen if len(keysets) > 1 else 0,
            "step": [r[1] for r in rows],
            # numbers, not ISO 8601: a thousand times written and parsed as text cost more
            # than the rest of the body
            "time_us": [r[0] + unix for r in rows],
            "values": [v for r in rows for v in r[3]],
        }
    return body


# A log body's forms, newest first, with the field a server that predates the form refuses:
# columns with times as numbers, columns with ISO 8601 times, rows (one object per row).
FORMS = {"time_us": "columns.time_us", "columns": "columns", "rows": None}


def _older_form(form: str, refusal: str) -> str | None:
    """The form to send after the server refused `form` so (None: the refusal is another),
    skipping the forms a server that refuses the field `columns` cannot take either."""
    names = list(FORMS)
    for older in names[names.index(form) :]:
        field = FORMS[older]
        if field is not None and refusal.startswith(field + ":"):
            return names[names.index(older) + 1]
    return None


def in_form(body: dict[str, Any], form: str) -> dict[str, Any]:
    """A body as `log_bodies` makes it (form time_us) in another of FORMS."""
    if form == "rows":
        return _as_rows(body)
    if form == "columns" and "columns" in body:
        columns = {k: v for k, v in body["columns"].items() if k != "time_us"}
        columns["time"] = _times(body["columns"])
        return body | {"columns": columns}
    return body


def _as_rows(body: dict[str, Any]) -> dict[str, Any]:
    """A body's `columns` as `rows` (for a server that predates columns)."""
    body = dict(body)
    columns = body.pop("columns", None)
    if columns is not None:
        keysets = [tuple(k) for k in columns["keys"]]
        chosen = columns["keyset"]
        if isinstance(chosen, int):
            chosen = [chosen] * len(columns["step"])
        values = iter(columns["values"])
        body["rows"] = [
            {"time": t, "step": step, "values": {key: next(values) for key in keysets[i]}}
            for t, step, i in zip(_times(columns), columns["step"], chosen)
        ]
    return body


def _times(columns: dict[str, Any]) -> list[Any]:
    """The rows' times of a `columns` body as ISO 8601 takes them: `time_us` as datetimes, or
    `time` as it is (None for a row without one)."""
    if "time_us" in columns:
        return [None if t is None else from_micros(from_unix_micros(t)) for t in columns["time_us"]]
    return columns.get("time") or [None] * len(columns["step"])


def _points(body: dict[str, Any]) -> int:
    columns = body.get("columns")
    rows = len(columns["values"]) if columns else sum(len(r["values"]) for r in body.get("rows", ()))
    return rows + sum(len(r["values"]) for r in body["system"])


def encode(body: dict[str, Any]) -> bytes:
    """A request body as JSON, written in Rust by pydantic-core (the standard library's encoder
    took most of a log request's client time): times in ISO 8601, NaN and infinities as the
    strings the API accepts ("NaN", "Infinity", "-Infinity"), since JSON has no such numbers."""
    return pydantic_core.to_json(body, inf_nan_mode="strings")
