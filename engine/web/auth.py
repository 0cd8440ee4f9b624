"""Authentication and authorisation of `engine web`, decided in one place.

Every /api/v1 route declares, in its decorator, `dependencies=[access(ROLE, TARGET)]` (or
takes the `Principal` it returns): the role it needs and how to find what it acts on. The
dependency, before the route's body runs:

1. reads `Authorization: Bearer KEY`: none, malformed, unknown, revoked or expired → 401
   with `WWW-Authenticate: Bearer` (logged without the key);
2. checks the key's role (admin may do what ingest and read may) → 403;
3. finds the places the request acts on (a project, a registry) with the route's target
   function and checks that the key's scopes cover each → 403 (an unknown run or
   automation → 404 only once the role allows the request);
4. records the key's last use (at most once a minute): nothing is written for a refusal.

Routes that list things (history, deliveries, automations) have no target: they pass the
key's scopes to their query, which returns only rows of covered projects and registries.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import psycopg
from fastapi import Depends, HTTPException, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from engine import keys
from engine.db import boundary, query
from engine.exceptions import KeyRefused, NotFound
from engine.keys import ApiKey, Place
from engine.web import deps

log = logging.getLogger(__name__)

_bearer = HTTPBearer(
    auto_error=False, description="An API key made by `engine keys create` (`Authorization: Bearer eng_…`)."
)

# What a request acts on, found from the request (path parameters, the parsed JSON body)
# on the request's connection; raises NotFound, or Invalid for a body it cannot read.
Target = Callable[[psycopg.Connection, dict[str, str], Any], list[Place]]


class Invalid(Exception):
    """A request field that cannot be used: 422 naming it (`loc` as FastAPI's own errors)."""

    def __init__(self, loc: tuple[str | int, ...], message: str):
        super().__init__(message)
        self.loc = loc
        self.message = message


@dataclass(frozen=True)
class Principal:
    """Who the request is: its key (never the key's text) and the places it was allowed."""

    key: ApiKey
    places: tuple[Place, ...]

    @property
    def scopes(self) -> list[str]:
        return list(self.key.scopes)

    @property
    def author(self) -> str:
        """The author of events the request writes: `key:NAME`."""
        return f"key:{self.key.name}"


@dataclass(frozen=True)
class Access:
    """A route's declared requirement (read by the route-table test)."""

    role: str
    target: Target | None
    body: bool  # the target reads the JSON body
    local: bool = False  # the target needs no database: a key checked a moment ago decides at once


def access(role: str, target: Target | None = None, *, body: bool = False) -> Any:
    """The dependency a route declares: `dependencies=[access("admin", automation_target)]`,
    or `principal: Principal = access("read")` to use the key's scopes in the route."""
    if role not in keys.ROLES:
        raise ValueError(f"unknown role {role!r}")
    spec = Access(role, target, body, local=target is None or target in _NO_DATABASE)

    async def authorise(
        request: Request, credentials: HTTPAuthorizationCredentials | None = Security(_bearer)
    ) -> Principal:
        payload = None
        if body and request.method == "GET":  # a GET's parameters are its query string
            payload = dict(request.query_params)
        elif body:
            try:
                payload = await request.json()
                if isinstance(payload, BaseModel):  # validated already (bodies.OnePassRoute)
                    payload = payload.model_dump()
            except ValueError:
                payload = None  # FastAPI answers the body's own error (422) once it validates it
        token = credentials.credentials if credentials is not None else None
        if token is not None and spec.local:
            # a key found valid a moment ago, for a request whose places are in its path or
            # body: decided here, on the event loop, unless its last use is due to be written
            key = request.app.state.verified_keys.get(token)
            if key is not None and not keys.touch_pending(key):
                return _authorise(request, None, key, spec, payload)
        async with deps.admitted():
            return await run_in_threadpool(_decide, request, token, spec, payload)

    authorise.access = spec  # type: ignore[attr-defined]
    return Depends(authorise)


def _decide(request: Request, token: str | None, spec: Access, payload: Any) -> Principal:
    if token is None:
        _refuse(request, 401, "no API key (send `Authorization: Bearer eng_…`)")
    with deps.connect() as conn:
        try:
            key = keys.authenticate(conn, token)  # type: ignore[arg-type]
        except KeyRefused as exc:
            _refuse(request, 401, str(exc))
        request.app.state.verified_keys.remember(token, key)
        return _authorise(request, conn, key, spec, payload)


def _authorise(
    request: Request, conn: psycopg.Connection | None, key: ApiKey, spec: Access, payload: Any
) -> Principal:
    """Steps 2-4 for a key found by a bearer token or by a console session (`conn` None: a
    key checked a moment ago, for a target that needs no database, its last use written)."""
    places: list[Place] = []
    if spec.target is not None and keys.allows(key.role, spec.role):
        places = spec.target(cast(psycopg.Connection, conn), dict(request.path_params), payload)
    require(request, key, spec.role, places)
    if conn is not None:
        keys.touch(conn, key)
    return Principal(key, tuple(places))


def require(request: Request, key: ApiKey, role: str, places: list[Place]) -> None:
    """403 unless the key has the role and covers every place."""
    if not keys.allows(key.role, role):
        _refuse(request, 403, f"API key {key.name!r} has role {key.role}; this needs {role}", key)
    outside = [str(p) for p in places if not keys.covers(key.scopes, p)]
    if outside:
        _refuse(
            request,
            403,
            f"API key {key.name!r} does not cover {', '.join(outside)} (its scopes: {' '.join(key.scopes)})",
            key,
        )


# -- the web console: the same decision, the key found by the session cookie ----------------
class SignedOut(Exception):
    """A console request with no valid session (none, expired, or its key revoked): sign in."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def console_access(role: str, target: Target | None = None, *, form: bool = False) -> Any:
    """A console page's dependency: `access` with the key of the session cookie. With `form`,
    the request is a form post: its token must match the session (else 403) and its fields
    (`request.state.form`) are what the target reads."""
    if role not in keys.ROLES:
        raise ValueError(f"unknown role {role!r}")
    spec = Access(role, target, form)

    async def authorise(request: Request) -> Principal:
        payload: dict[str, str] | None = None
        if form:
            text = (await request.body()).decode("utf-8", "replace")
            payload = dict(urllib.parse.parse_qsl(text, keep_blank_values=True))
        request.state.form = payload or {}
        async with deps.admitted():
            return await run_in_threadpool(_decide_session, request, spec, payload)

    authorise.access = spec  # type: ignore[attr-defined]
    return Depends(authorise)


def _decide_session(request: Request, spec: Access, payload: dict[str, str] | None) -> Principal:
    from engine.web.console import session

    found = session.read(request)
    if found is None:
        raise SignedOut("sign in with an API key")
    request.state.session = found
    if spec.body and not session.csrf_ok(request, found, (payload or {}).get("csrf")):
        _refuse(
            request, 403, "the form's token is missing or not this session's: reload the page and try again"
        )
    with deps.connect() as conn:
        try:
            key = keys.by_id(conn, found.key_id)
        except KeyRefused as exc:
            raise SignedOut(f"{exc}: sign in again") from None
        principal = _authorise(request, conn, key, spec, payload)
    request.state.principal = principal
    return principal


def _refuse(request: Request, status: int, reason: str, key: ApiKey | None = None) -> Any:
    client = request.client.host if request.client else "?"
    log.warning(
        "refused %s %s from %s (%d): %s",
        request.method,
        request.url.path,
        client,
        status,
        reason,
        extra={"status": status, "key_name": key.name if key else None},
    )
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    raise HTTPException(status, reason, headers=headers)


def access_of(route: Any) -> Access | None:
    """The access a route declared (None: it has none), for the route-table test."""
    dependant = getattr(route, "dependant", None)
    pending = list(dependant.dependencies) if dependant is not None else []
    while pending:
        current = pending.pop()
        found = getattr(current.call, "access", None)
        if isinstance(found, Access):
            return found
        pending += current.dependencies
    return None


# -- targets ---------------------------------------------------------------------------------
def project_in_path(conn: psycopg.Connection, params: dict[str, str], payload: Any) -> list[Place]:
    """`…/{entity}/{project}/…`"""
    return [Place("project", f"{params['entity']}/{params['project']}")]


def project_in_body(conn: psycopg.Connection, params: dict[str, str], payload: Any) -> list[Place]:
    """The body's `project` (`entity/project`)."""
    from engine.sdk.validate import parse_project

    project = payload.get("project") if isinstance(payload, dict) else None
    if not isinstance(project, str):
        raise Invalid(("body", "project"), "give the project as entity/project")
    try:
        entity, name = parse_project(project)
    except (TypeError, ValueError) as exc:
        raise Invalid(("body", "project"), str(exc)) from None
    return [Place("project", f"{entity}/{name}")]


def project_in_path_and_registry_in_body(
    conn: psycopg.Connection, params: dict[str, str], payload: Any
) -> list[Place]:
    """A link: the version's project, and the registry it is linked into."""
    registry = payload.get("registry") if isinstance(payload, dict) else None
    if not isinstance(registry, str) or not registry:
        raise Invalid(("body", "registry"), "give the registry's name")
    return [*project_in_path(conn, params, payload), Place("registry", registry)]


def scope_place(scope: dict[str, Any]) -> Place:
    """The place of an automation's scope (its stored JSON or its model dumped)."""
    if scope.get("registry"):
        return Place("registry", scope["registry"])
    if scope.get("entity"):  # every project of the entity: covered by `entity/*` (or `*`)
        return Place("project", f"{scope['entity']}/*")
    return Place("project", scope["project"])


def automation_in_path(conn: psycopg.Connection, params: dict[str, str], payload: Any) -> list[Place]:
    """`…/automations/{name}`: where the automation looks."""
    return [
        _scope_of(
            conn, "web_automation_scope", {"name": params["name"]}, f"no automation named {params['name']!r}"
        )
    ]


def rules_in_body(conn: psycopg.Connection, params: dict[str, str], payload: Any) -> list[Place]:
    """The body's `yaml`: where each of its rules looks (its errors: 422)."""
    from engine.web.routes.automations import parse_body_rules

    return [scope_place(rule.automation.scope.model_dump()) for rule in parse_body_rules(payload)]


def delivery_in_path(conn: psycopg.Connection, params: dict[str, str], payload: Any) -> list[Place]:
    """`…/deliveries/{delivery_id}`: where its automation looks."""
    from engine.actions import outbox

    found = outbox.find(conn, params["delivery_id"])
    return [
        _scope_of(conn, "web_delivery_scope", {"id": found["id"]}, f"no delivery {params['delivery_id']}")
    ]


def trigger_in_path(conn: psycopg.Connection, params: dict[str, str], payload: Any) -> list[Place]:
    """`…/triggers/{trigger_id}`: where its automation looks."""
    try:
        trigger_id = int(params["trigger_id"])
    except ValueError:
        raise Invalid(("path", "trigger_id"), "a trigger id is a whole number") from None
    return [
        _scope_of(
            conn,
            "web_trigger_scope",
            {"id": trigger_id},
            f"no trigger {trigger_id}: `engine history` lists the trigger ids",
        )
    ]


def silence_in_path(conn: psycopg.Connection, params: dict[str, str], payload: Any) -> list[Place]:
    """`…/silences/{silence_id}`: where the silence acts (its automation's scope, or its project)."""
    try:
        silence_id = int(params["silence_id"])
    except ValueError:
        raise Invalid(("path", "silence_id"), "a silence id is a whole number") from None
    return [_scope_of(conn, "web_silence_scope", {"id": silence_id}, f"no silence {silence_id}")]


def silence_in_body(conn: psycopg.Connection, params: dict[str, str], payload: Any) -> list[Place]:
    """A new silence's `automation` (where it looks) or `project` (`entity/project`)."""
    fields = payload if isinstance(payload, dict) else {}
    automation, project = fields.get("automation") or None, fields.get("project") or None
    if (automation is None) == (project is None):
        raise Invalid(("body", "automation"), "give exactly one of an automation (by name) or a project")
    if automation is not None:
        return automation_in_path(conn, {"name": str(automation)}, payload)
    return project_in_body(conn, params, {"project": project})


def _scope_of(conn: psycopg.Connection, name: str, params: dict[str, Any], missing: str) -> Place:
    with boundary():
        row = conn.execute(query(name), params).fetchone()
    if row is None:
        raise NotFound(missing)
    return scope_place(row[0])


# The targets that read the request alone (conn is None when a remembered key decides).
_NO_DATABASE: frozenset[Target] = frozenset(
    {project_in_path, project_in_body, project_in_path_and_registry_in_body}
)
