"""The FastAPI app of `engine web`: `create_app(settings)`.

Stateless: everything lives in the database, so any number of processes (`--workers`, hosts
behind a load balancer) serve the same data. Each process holds one connection pool
(deps.py). Every error is a JSON body that says what is wrong:

    401/403  the key (auth.py)          404  an unknown run, automation, delivery, trigger
    413      a body over ENGINE_WEB_MAX_BODY, refused before it is read whole
    422      a field that cannot be used: `errors` names it (`loc`, as FastAPI does)
    409      a request the current state refuses (redelivering a delivery being sent)
    503      the database is unreachable or busy (Retry-After: 1)
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import SecretStr
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine import __version__, keys
from engine.db import translate
from engine.exceptions import (
    DatabaseError,
    DatabaseUnavailable,
    EngineError,
    IngestError,
    NotFound,
    QueryTimeout,
    RuleValidationError,
)
from engine.logs import configure_logging
from engine.prometheus import WebMetrics
from engine.settings import API_PREFIX, Settings, get_settings
from engine.web import deps, mlflow
from engine.web.auth import Invalid
from engine.web.console import create_console
from engine.web.models import Health
from engine.web.routes import artifacts, automations, history, runs, silences

log = logging.getLogger(__name__)


class JSON(JSONResponse):
    """JSON bodies; NaN and infinities (JSON has none) are written "NaN", "Infinity", "-Infinity"."""

    def render(self, content: Any) -> bytes:
        return json.dumps(
            _finite(content), ensure_ascii=False, allow_nan=False, separators=(",", ":")
        ).encode()


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app; its lifespan opens and closes the process's connection pool."""
    settings = settings or get_settings()
    if not logging.getLogger().handlers:  # a worker process of `--workers N` (spawned, unconfigured)
        configure_logging(settings.log_level.upper())
    if settings.web_secret is None:
        settings = settings.model_copy(update={"web_secret": SecretStr(secrets.token_urlsafe(32))})
        log.warning(
            "ENGINE_WEB_SECRET is unset: web console sessions are signed with a secret of this process "
            "only (a restart signs everyone out; other processes refuse its sessions)"
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        deps.open_pool(settings)
        try:
            yield
        finally:
            deps.close_pool()

    app = FastAPI(
        title="engine",
        version=__version__,
        description="The HTTP API of the automation engine: runs, metrics, artifacts, automations, history. "
        "Every /api/v1 request carries `Authorization: Bearer KEY` (`engine keys create`).",
        lifespan=lifespan,
        default_response_class=JSON,
        openapi_url="/openapi.json",
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.verified_keys = keys.Verified(settings.web_key_cache)
    app.state.metrics = WebMetrics()

    api = APIRouter(prefix=API_PREFIX)
    for module in (runs, artifacts, automations, history, silences):
        api.include_router(module.router)
    app.include_router(api)
    app.include_router(mlflow.router)

    @app.get("/healthz", tags=["service"], responses={503: {"model": Health}})
    def healthz() -> Response:
        """Whether this process reaches the database (no key needed)."""
        from engine import clock

        try:
            with deps.connect() as conn:
                conn.execute("SELECT 1")
        except EngineError as exc:
            body = Health(status="unavailable", database=str(exc).splitlines()[0], checked_at=clock.now())
            return JSON(body.model_dump(mode="json"), status_code=503)
        return JSON(Health(status="ok", database="ok", checked_at=clock.now()).model_dump(mode="json"))

    @app.get("/metrics", tags=["service"], include_in_schema=False)
    def metrics() -> Response:
        """Prometheus metrics of this process (no key needed)."""
        return Response(generate_latest(app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # the console last: it answers every path outside /api (its 404 page included)
    app.routes.append(_Console("/", create_console(settings), name="console"))
    _error_handlers(app)
    app.add_middleware(_Observed, metrics=app.state.metrics)
    app.add_middleware(_BodyLimit, limit=settings.web_max_body)
    return app


class _Console(Mount):
    """The console's mount, which leaves /api/… alone: there an unknown path is the API's JSON
    404 and a known path with the wrong method its 405."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] == "http" and (scope["path"] + "/").startswith(API_PREFIX.rsplit("/", 1)[0] + "/"):
            return Match.NONE, {}
        return super().matches(scope)


# -- errors ----------------------------------------------------------------------------------
def _error(
    status: int,
    detail: str,
    errors: list[dict[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSON:
    body: dict[str, Any] = {"detail": detail}
    if errors is not None:
        body["errors"] = errors
    return JSON(body, status_code=status, headers=dict(headers) if headers else None)


def _field_error(loc: tuple[Any, ...] | list[Any], message: str) -> dict[str, Any]:
    where = [str(part) for part in loc]
    field = ".".join(where[1:] if where[:1] and where[0] in ("body", "query", "path", "header") else where)
    return {"loc": list(loc), "field": field, "message": message}


def _summary(errors: list[dict[str, Any]]) -> str:
    first = errors[0]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{first['field'] or 'body'}: {first['message']}{more}"


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSON:
        return _error(exc.status_code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSON:
        # not FastAPI's default body: that one echoes the input back, which may be megabytes
        errors = [_field_error(e.get("loc", ()), str(e.get("msg", "invalid"))) for e in exc.errors()]
        errors = errors or [_field_error(("body",), "invalid request")]
        return _error(422, _summary(errors), errors)

    @app.exception_handler(Invalid)
    async def invalid(request: Request, exc: Invalid) -> JSON:
        errors = [_field_error(exc.loc, exc.message)]
        return _error(422, _summary(errors), errors)

    @app.exception_handler(RuleValidationError)
    async def rule_errors(request: Request, exc: RuleValidationError) -> JSON:
        errors = [
            {"file": i.file, "line": i.line, "field": i.field, "message": i.message} for i in exc.issues
        ]
        return _error(422, str(exc.issues[0]) if exc.issues else "invalid rules", errors)

    @app.exception_handler(ValueError)
    @app.exception_handler(TypeError)
    async def bad_value(request: Request, exc: Exception) -> JSON:
        # the SDK's and the rule models' checks raise these for input they refuse
        return _error(422, str(exc) or type(exc).__name__)

    @app.exception_handler(EngineError)
    async def engine_error(request: Request, exc: Exception) -> JSON:
        return _engine_error(request, exc)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSON:
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return _error(500, "internal error (the server's log has the details)")


def _engine_error(request: Request, exc: BaseException) -> JSON:
    if isinstance(exc, IngestError) and isinstance(exc.__cause__, EngineError):
        exc = exc.__cause__
    error = translate(exc)
    state = getattr(error, "sqlstate", None) or ""
    if isinstance(error, NotFound):
        return _error(404, str(error))
    if isinstance(error, (DatabaseUnavailable, QueryTimeout)):
        log.warning("%s %s: %s", request.method, request.url.path, error)
        return _error(503, str(error), headers={"Retry-After": "1"})
    if isinstance(error, DatabaseError):
        # data exceptions and integrity violations: the input's fault
        if state[:2] in ("22", "23"):
            return _error(422, f"the database refused a value: {str(error).splitlines()[0]}")
        log.error("database error on %s %s: %s", request.method, request.url.path, error, exc_info=exc)
        return _error(500, "database error (the server's log has the details)")
    return _error(409, str(error))


# -- middleware ------------------------------------------------------------------------------
class BodyTooLarge(StarletteHTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"the request body is larger than {limit} bytes (ENGINE_WEB_MAX_BODY)")


class _BodyLimit:
    """413 for a body over the limit: at once when Content-Length says so, else as soon as the
    bytes streamed in pass it (the rest is never read)."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit():
                    await _error(400, "Content-Length is not a number")(scope, receive, send)
                    return
                if int(value) > self.limit:
                    await _error(413, BodyTooLarge(self.limit).detail)(scope, receive, send)
                    return
        received = 0
        started = False

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, tracked)
        except BodyTooLarge as exc:
            if started:
                raise
            await _error(413, exc.detail)(scope, receive, send)


class _Observed:
    """Counts and times every request by route template (engine_web_* metrics)."""

    def __init__(self, app: ASGIApp, metrics: WebMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500

        async def tracked(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.record(scope["method"], template, status, time.perf_counter() - began)
