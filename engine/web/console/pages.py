"""The console's pages: Jinja2 templates rendered on the server, one form per action.

Each page declares its access with `console_access` (engine.web.auth): the same role and
scope decision as the API, the key found by the session cookie instead of a bearer token,
and lists filtered by the same queries with the key's scopes. Admin actions are forms that
post a token bound to the session; a page shows them only to admin keys, and the server
refuses them to any other key (403) whatever the page showed.
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

import psycopg
import yaml
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine import automations, clock, keys
from engine import db as enginedb
from engine.actions import outbox, silences
from engine.compiler import compile_rule, metric_table
from engine.exceptions import (
    DatabaseUnavailable,
    EngineError,
    KeyRefused,
    NotFound,
    QueryTimeout,
    RuleValidationError,
)
from engine.explain import explain_data, text
from engine.explain.data import Point
from engine.history import history_rows
from engine.rules.duration import format_duration, parse_duration
from engine.rules.loader import parse_rules_text
from engine.settings import Settings
from engine.since import parse_since
from engine.web import deps
from engine.web.auth import (
    Invalid,
    Principal,
    SignedOut,
    automation_in_path,
    console_access,
    delivery_in_path,
    project_in_path,
    require,
    rules_in_body,
    scope_place,
    silence_in_body,
    silence_in_path,
    trigger_in_path,
)
from engine.web.console import charts, session
from engine.web.routes.automations import backtest_rules
from engine.web.routes.history import _after, _cursor

log = logging.getLogger(__name__)

PAGE = 50  # rows per page of history and deliveries
DAYS = 14  # days of firings on the automations page
STATIC = Path(__file__).parent / "static"

_env = Environment(
    loader=PackageLoader("engine.web.console", "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters["num"] = text.num
_env.filters["time"] = text.time
_env.filters["place"] = lambda scope: str(scope_place(scope)) if isinstance(scope, dict) else "—"


def render(request: Request, template: str, http_status: int = 200, **context: Any) -> HTMLResponse:
    principal: Principal | None = getattr(request.state, "principal", None)
    found: session.Session | None = getattr(request.state, "session", None)
    context |= {
        "request": request,
        "key": principal.key if principal else None,
        "admin": bool(principal and keys.allows(principal.key.role, "admin")),
        "csrf": session.csrf_token(request, found) if found else "",
        "path": request.url.path,
        "here": str(request.url.path) + (f"?{request.url.query}" if request.url.query else ""),
    }
    body = _env.get_template(template).render(**context)
    return HTMLResponse(body, status_code=http_status, headers=_HEADERS)


# The pages need nothing from elsewhere: no script, style or image of another origin, no frame.
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _back(url: str | None, default: str = "/") -> str:
    """A same-site path to return to (never another site's address)."""
    if url and url.startswith("/") and not url.startswith("//") and "\\" not in url:
        return url
    return default


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def create_console(settings: Settings) -> FastAPI:
    # Compiled now, not by the first request of each page (tens of milliseconds of a busy CPU).
    for template in _env.list_templates(extensions=["html"]):
        _env.get_template(template)
    console = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    console.state.settings = settings
    console.mount("/static", StaticFiles(directory=STATIC), name="static")
    _routes(console)
    _errors(console)
    return console


# -- pages -----------------------------------------------------------------------------------
def _routes(app: FastAPI) -> None:
    @app.get("/login", response_class=HTMLResponse)
    def login_page(request: Request, next: str = "/") -> HTMLResponse:
        return _login(request, next)

    @app.post("/login")
    async def login(request: Request) -> Response:
        form = await _form(request)
        target = _back(form.get("next"))
        if not session.signin_ok(request, form.get("csrf")):
            return _login(request, target, "The sign-in form expired: try again.", 403)
        presented = form.get("key", "").strip()
        try:
            async with deps.admitted():
                key = await run_in_threadpool(_authenticate, presented)
        except KeyRefused as exc:
            log.warning("console sign-in refused: %s", exc)
            return _login(request, target, f"{exc}.", 401)
        if not keys.allows(key.role, "read"):
            return _login(
                request,
                target,
                f"API key {key.name!r} has role {key.role}: sign in with a read or admin key.",
                403,
            )
        response = _redirect(target)
        session.set_cookie(request, response, session.new(key.id, request.app.state.settings))
        response.delete_cookie(session.SIGNIN_COOKIE, path="/")
        log.info("console sign-in of key %s", key.name, extra={"key_name": key.name})
        return response

    @app.post("/logout")
    def logout(request: Request, principal: Principal = console_access("read", form=True)) -> Response:
        response = _redirect("/login")
        session.clear_cookie(request, response)
        return response

    @app.get("/", response_class=HTMLResponse)
    def automations_page(request: Request, principal: Principal = console_access("read")) -> HTMLResponse:
        today = clock.now().replace(hour=0, minute=0, second=0, microsecond=0)
        start = today - timedelta(days=DAYS - 1)
        rows = _rows("console_automations", {"scopes": principal.scopes, "start": start, "days": DAYS})
        for row in rows:
            row["failing"] = bool(row["failures"]) or row["failed_deliveries"] > 0
            row["bars"] = charts.bars_svg(row["daily"], start)
        return render(request, "automations.html", rows=rows, days=DAYS)

    @app.post("/automations/{name}/{change}")
    def set_enabled(
        request: Request,
        name: str,
        change: str,
        principal: Principal = console_access("admin", automation_in_path, form=True),
    ) -> Response:
        if change not in ("enable", "disable"):
            raise HTTPException(404, f"no action {change!r}")
        with deps.connect() as conn:
            (automations.enable if change == "enable" else automations.disable)(conn, name)
        return _redirect(_back(request.state.form.get("next")))

    @app.get("/automations/{name}", response_class=HTMLResponse)
    def automation_page(
        request: Request,
        name: str,
        since: str | None = None,
        principal: Principal = console_access("read", automation_in_path),
    ) -> HTMLResponse:
        with deps.connect() as conn:
            stored = automations.get(conn, name)
            versions = _rows("console_automation_versions", {"name": name}, conn)
            recent = _history(conn, principal, {"automation": name}, limit=20)[0].rows
            backtest, error = None, None
            if since:
                backtest, error = _backtest(conn, stored.automation, since)
        rule_yaml = _yaml(stored.automation.to_json())
        try:
            sql = compile_rule(stored.automation).pretty()
        except (EngineError, ValueError) as exc:
            sql = f"-- not compiled: {exc}"
        for v in versions:
            v["yaml"] = _yaml(v["rule"])
        return render(
            request,
            "automation.html",
            stored=stored,
            condition=stored.automation.event.describe(),
            rule_yaml=rule_yaml,
            sql=sql,
            versions=versions,
            recent=recent,
            since=since or "7d",
            backtest=backtest,
            backtest_error=error,
        )

    @app.get("/history", response_class=HTMLResponse)
    def history_page(
        request: Request,
        automation: str = "",
        project: str = "",
        run: str = "",
        status: str = "",
        since: str = "",
        cursor: str = "",
        newer: str = "",
        limit: Annotated[int, Query(ge=1, le=500)] = PAGE,
        principal: Principal = console_access("read"),
    ) -> HTMLResponse:
        filters = {
            "automation": automation,
            "project": project,
            "run_id": run,
            "status": status,
            "since": since,
        }
        with deps.connect() as conn:
            page, error = _history(conn, principal, filters, cursor=cursor, newer=newer, limit=limit)
        shown = {"automation": automation, "project": project, "run": run, "status": status, "since": since}
        shown |= {"limit": str(limit)} if limit != PAGE else {}
        return render(
            request,
            "history.html",
            rows=page.rows,
            filters=filters,
            statuses=("pending", "succeeded", "failed", "skipped", "suppressed", "silenced"),
            pager=page.links("/history", shown),
            error=error,
        )

    @app.get("/triggers/{trigger_id}", response_class=HTMLResponse)
    def trigger_page(
        request: Request, trigger_id: int, principal: Principal = console_access("read", trigger_in_path)
    ) -> HTMLResponse:
        with deps.connect() as conn:
            expl = explain_data(conn, trigger_id)
            rule = _rows("console_trigger_rule", {"trigger_id": trigger_id}, conn)[0]
            deliveries = _rows("console_trigger_deliveries", {"trigger_id": trigger_id}, conn)
            attempts = _rows("console_delivery_attempts", {"ids": [d["id"] for d in deliveries]}, conn)
        for d in deliveries:
            d["attempt_rows"] = [a for a in attempts if a["delivery_id"] == d["id"]]
        return render(
            request,
            "trigger.html",
            expl=expl,
            chart=charts.explanation_svg(expl),
            headline=text.headline(expl),
            lines=text.lines(expl),
            windows=[(text.window_label(w), w) for w in expl.windows],
            rule=rule,
            rule_yaml=_yaml(rule["rule"]),
            deliveries=deliveries,
        )

    @app.post("/deliveries/{delivery_id}/redeliver")
    def redeliver(
        request: Request,
        delivery_id: str,
        principal: Principal = console_access("admin", delivery_in_path, form=True),
    ) -> Response:
        with deps.connect() as conn:
            outbox.redeliver(conn, delivery_id)
        return _redirect(_back(request.state.form.get("next"), "/deliveries"))

    @app.get("/deliveries", response_class=HTMLResponse)
    def deliveries_page(
        request: Request,
        status: str = "",
        automation: str = "",
        cursor: str = "",
        newer: str = "",
        principal: Principal = console_access("read"),
    ) -> HTMLResponse:
        statuses = {"pending": ["pending", "sending"], "failed": ["failed"]}.get(
            status, ["pending", "sending", "failed"]
        )

        def fetch(before: str | None, after: str | None) -> list[dict[str, Any]]:
            before_at, before_id = _delivery_after(before) if before else (None, None)
            after_at, after_id = _delivery_after(after) if after else (None, None)
            params: dict[str, Any] = {"statuses": statuses, "automation": automation or None}
            params |= {"scopes": principal.scopes}
            params |= {"before_at": before_at, "before_id": before_id, "after_at": after_at}
            return _rows("console_deliveries", params | {"after_id": after_id, "limit": PAGE + 1})

        page = Keyset.read(fetch, _delivery_cursor, PAGE, cursor=cursor, newer=newer)
        return render(
            request,
            "deliveries.html",
            rows=page.rows,
            status=status,
            automation=automation,
            pager=page.links("/deliveries", {"status": status, "automation": automation}),
        )

    @app.get("/silences", response_class=HTMLResponse)
    def silences_page(
        request: Request,
        ended: Annotated[bool, Query(alias="all")] = False,
        principal: Principal = console_access("read"),
    ) -> HTMLResponse:
        return _silences(request, principal, include_ended=ended)

    @app.post("/silences", response_class=HTMLResponse)
    def add_silence(request: Request, principal: Principal = console_access("admin", form=True)) -> Response:
        form = request.state.form
        fields = {k: form.get(k, "").strip() for k in ("automation", "project", "for", "until", "reason")}
        try:
            duration = parse_duration(fields["for"]) if fields["for"] else None
            until = parse_since(fields["until"]) if fields["until"] else None
        except ValueError as exc:
            return _silences(request, principal, form=fields, error=f"{exc}.", status=422)
        with deps.connect() as conn:
            try:
                places = silence_in_body(conn, {}, fields)
            except Invalid as exc:
                return _silences(request, principal, form=fields, error=f"{exc.message}.", status=422)
            except NotFound as exc:
                return _silences(request, principal, form=fields, error=f"{exc}.", status=422)
            require(request, principal.key, "admin", places)
            try:
                silences.add(
                    conn,
                    automation=fields["automation"] or None,
                    project=fields["project"] or None,
                    duration=duration,
                    until=until,
                    reason=fields["reason"],
                    created_by=principal.author,
                )
            except EngineError as exc:
                return _silences(request, principal, form=fields, error=f"{exc}.", status=422)
        return _redirect("/silences")

    @app.post("/silences/{silence_id}/end")
    def end_silence(
        request: Request,
        silence_id: int,
        principal: Principal = console_access("admin", silence_in_path, form=True),
    ) -> Response:
        with deps.connect() as conn:
            silences.end(conn, silence_id, ended_by=principal.author)
        return _redirect(_back(request.state.form.get("next"), "/silences"))

    @app.get("/{entity}/{project}/runs", response_class=HTMLResponse)
    def runs_page(
        request: Request,
        entity: str,
        project: str,
        principal: Principal = console_access("read", project_in_path),
    ) -> HTMLResponse:
        with deps.connect() as conn:
            runs = _rows("console_project_runs", {"entity": entity, "project": project, "limit": 200}, conn)
            last = _rows("console_run_last_values", {"run_pks": [r["pk"] for r in runs]}, conn)
        for run in runs:
            run["last"] = [v for v in last if v["run_pk"] == run["pk"]]
        return render(request, "runs.html", entity=entity, project=project, runs=runs)

    @app.get("/{entity}/{project}/runs/{run_id}", response_class=HTMLResponse)
    def run_page(
        request: Request,
        entity: str,
        project: str,
        run_id: str,
        principal: Principal = console_access("read", project_in_path),
    ) -> HTMLResponse:
        with deps.connect() as conn:
            found = _rows("console_run", {"entity": entity, "project": project, "run_id": run_id}, conn)
            if not found:
                raise NotFound(f"no run {entity}/{project}/{run_id}")
            run = found[0]
            triggers = _rows("console_run_triggers", {"run_pk": run["pk"], "scopes": principal.scopes}, conn)
            metrics = _rows("console_run_last_values", {"run_pks": [run["pk"]]}, conn)
            charts_ = []
            for metric in metrics:
                points = [
                    Point(pos=r["pos"], step=r["step"], time=r["time"], value=r["value"])
                    for r in _rows(
                        "explain_series",
                        {
                            "run_pk": run["pk"],
                            "key_id": metric["key_id"],
                            "system": metric_table(metric["key"]) == "system_metrics",
                        },
                        conn,
                    )
                ]
                marks = [
                    charts.Mark(
                        t["id"],
                        t["step"],
                        t["value"] if t["value"] is not None else math.nan,
                        f"trigger {t['id']}: {t['automation']} ({text.time(t['fired_at'])})",
                    )
                    for t in triggers
                    if t["metric"] == metric["key"] and t["step"] is not None
                ]
                charts_.append((metric["key"], charts.series_svg(metric["key"], points, marks), marks))
        return render(
            request, "run.html", entity=entity, project=project, run=run, triggers=triggers, charts=charts_
        )

    @app.get("/editor", response_class=HTMLResponse)
    def editor_page(
        request: Request, automation: str = "", principal: Principal = console_access("read")
    ) -> HTMLResponse:
        source = ""
        if automation:
            with deps.connect() as conn:
                require(request, principal.key, "read", automation_in_path(conn, {"name": automation}, None))
                source = _yaml(automations.get(conn, automation).automation.to_json())
        return render(
            request, "editor.html", source=source, since="7d", errors=[], numbered=_numbered(source, [])
        )

    @app.post("/editor", response_class=HTMLResponse)
    def editor_post(
        request: Request, principal: Principal = console_access("read", form=True)
    ) -> HTMLResponse:
        form = request.state.form
        source, action, since = form.get("yaml", ""), form.get("action", "check"), form.get("since", "7d")
        errors: list[dict[str, Any]] = []
        outcome: list[tuple[str, automations.Outcome]] = []
        backtest = None
        status = 200
        with deps.connect() as conn:
            try:
                rules = parse_rules_text(source, file="editor", conn=conn)
            except RuleValidationError as exc:
                errors = [{"line": i.line, "field": i.field, "message": i.message} for i in exc.issues]
                rules, status = [], 422
            if rules and action == "apply":
                require(
                    request,
                    principal.key,
                    "admin",
                    rules_in_body(conn, {}, {"yaml": source, "file": "editor"}),
                )
                outcome = automations.apply_rules(
                    conn, [r.automation for r in rules], source={r.automation.name: "console" for r in rules}
                )
            elif rules and action == "backtest":
                require(
                    request,
                    principal.key,
                    "read",
                    rules_in_body(conn, {}, {"yaml": source, "file": "editor"}),
                )
                try:
                    start = parse_since(since)
                except ValueError as exc:
                    errors = [{"line": None, "field": "since", "message": str(exc)}]
                    status = 422
                else:
                    backtest = _pictures(backtest_rules(conn, rules, start), start)
        return render(
            request,
            "editor.html",
            http_status=status,
            source=source,
            since=since,
            errors=errors,
            numbered=_numbered(source, errors),
            valid=bool(rules) and not errors,
            outcome=outcome,
            backtest=backtest,
            action=action,
        )


# -- helpers ---------------------------------------------------------------------------------
async def _form(request: Request) -> dict[str, str]:
    from urllib.parse import parse_qsl

    return dict(parse_qsl((await request.body()).decode("utf-8", "replace"), keep_blank_values=True))


def _login(request: Request, next_url: str, error: str | None = None, status: int = 200) -> HTMLResponse:
    nonce = session.signin_nonce(request)
    response = render(
        request,
        "login.html",
        http_status=status,
        next=_back(next_url),
        error=error,
        token=session.signin_token(request, nonce),
    )
    session.set_signin_cookie(request, response, nonce)
    return response


def _authenticate(presented: str) -> keys.ApiKey:
    with deps.connect() as conn:
        return keys.authenticate(conn, presented)


def _rows(name: str, params: dict[str, Any], conn: psycopg.Connection | None = None) -> list[dict[str, Any]]:
    if conn is None:
        with deps.connect() as fresh:
            return _rows(name, params, fresh)
    return enginedb.rows(conn, name, params)


@dataclass(frozen=True)
class Keyset:
    """One page of a list read newest first by keyset, and the cursors of its neighbours:
    `older` (the rows after its last) and `newer` (the rows just before its first)."""

    rows: list[dict[str, Any]]
    older: str | None
    newer: str | None
    first: bool  # the newest page

    @classmethod
    def read(
        cls,
        fetch: Callable[[str | None, str | None], list[dict[str, Any]]],
        token: Callable[[dict[str, Any]], str],
        limit: int,
        *,
        cursor: str = "",
        newer: str = "",
    ) -> Keyset:
        """`fetch(before, after)` returns up to limit + 1 rows, newest first: the newest ones
        older than the cursor `before`, or (with `after`) the ones just newer than `after`."""
        if newer:
            rows = fetch(None, newer)
            if len(rows) > limit:  # rows newer still: this is a page in the middle
                rows = rows[-limit:]
                return cls(rows, token(rows[-1]), token(rows[0]), first=False)
            cursor = ""  # it reaches the newest row: show the newest page, full
        rows = fetch(cursor or None, None)
        older = token(rows[limit - 1]) if len(rows) > limit else None
        rows = rows[:limit]
        return cls(rows, older, token(rows[0]) if cursor and rows else None, first=not cursor)

    def links(self, path: str, filters: dict[str, str]) -> dict[str, str | None]:
        """The pager's addresses: the newest page, newer and older ones (None: there is none)."""
        kept = {k: v for k, v in filters.items() if v}

        def link(extra: dict[str, str]) -> str:
            query = urlencode(kept | extra)
            return f"{path}?{query}" if query else path

        return {
            "newest": None if self.first else link({}),
            "newer": link({"newer": self.newer}) if self.newer else None,
            "older": link({"cursor": self.older}) if self.older else None,
        }


def _history(
    conn: psycopg.Connection,
    principal: Principal,
    filters: dict[str, str],
    *,
    cursor: str = "",
    newer: str = "",
    limit: int = PAGE,
) -> tuple[Keyset, str | None]:
    """A page of the history the key may read (the API's cursors), or an error in a filter."""
    empty = Keyset([], None, None, first=True)
    start = None
    if filters.get("since"):
        try:
            start = parse_since(filters["since"])
        except ValueError as exc:
            return empty, f"since: {exc}"

    def fetch(before: str | None, after: str | None) -> list[dict[str, Any]]:
        return history_rows(
            conn,
            automation=filters.get("automation") or None,
            project=filters.get("project") or None,
            run_id=filters.get("run_id") or None,
            status=filters.get("status") or None,
            since=start,
            before=_after(before) if before else None,
            after=_after(after) if after else None,
            scopes=principal.scopes,
            limit=limit + 1,
        )

    try:
        return Keyset.read(fetch, _cursor, limit, cursor=cursor, newer=newer), None
    except Invalid as exc:
        return empty, f"cursor: {exc.message}"


def _silences(
    request: Request,
    principal: Principal,
    *,
    include_ended: bool = False,
    form: dict[str, str] | None = None,
    error: str | None = None,
    status: int = 200,
) -> HTMLResponse:
    """The silences page: those the key covers, and (admin keys) the form that adds one."""
    with deps.connect() as conn:
        rows = silences.list_silences(conn, include_ended=include_ended, limit=200, scopes=principal.scopes)
        covered = [a.name for a in automations.list_automations(conn, scopes=principal.scopes)]
    now = clock.now()
    for row in rows:
        if row["active"]:
            row["state"] = f"active, {format_duration(row['ends_at'] - now)} left"
        elif row["starts_at"] > now:
            row["state"] = "not started"
        else:
            row["state"] = "ended early" if row["ended_at"] is not None else "ended"
    return render(
        request,
        "silences.html",
        http_status=status,
        rows=rows,
        include_ended=include_ended,
        now=now,
        automations=covered,
        form=form or {"for": "2h"},
        error=error,
    )


def _delivery_cursor(row: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(f"{row['created_at'].isoformat()}|{row['id']}".encode()).decode()


def _delivery_after(cursor: str) -> tuple[datetime, str]:
    try:
        at, _, delivery_id = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        found = datetime.fromisoformat(at), str(uuid.UUID(delivery_id))
        if found[0].tzinfo is None:
            raise ValueError("no time zone")
        return found
    except (ValueError, binascii.Error, UnicodeError):
        raise HTTPException(422, "not a cursor this page made (follow the page's own link)") from None


def _backtest(
    conn: psycopg.Connection, automation: Any, since: str
) -> tuple[list[dict[str, Any]] | None, str | None]:
    try:
        start = parse_since(since)
    except ValueError as exc:
        return None, str(exc)
    from engine.rules.loader import LoadedRule

    loaded = LoadedRule(automation=automation, file="stored", line=1)
    return _pictures(backtest_rules(conn, [loaded], start), start), None


def _pictures(results: list[dict[str, Any]], start: datetime) -> list[dict[str, Any]]:
    end = clock.now()
    for result in results:
        firings = [(f["time"], _firing_label(f)) for f in result["firings"]]
        result["chart"] = charts.firings_svg(result["automation"], start, end, firings)
    return results


def _firing_label(firing: dict[str, Any]) -> str:
    parts = [firing["run_id"] or "", firing["metric"] or "", firing["alias"] or "", firing["tag"] or ""]
    words = " ".join(p for p in parts if p)
    if firing["step"] is not None:
        words += f" step {firing['step']}"
    if firing["value"] is not None:
        words += f" = {text.num(firing['value'])}"
    return words.strip()


def _yaml(rule: Any) -> str:
    return yaml.safe_dump(rule, sort_keys=False, allow_unicode=True, default_flow_style=False)


def _numbered(source: str, errors: list[dict[str, Any]]) -> list[tuple[int, str, list[str]]]:
    """The text's lines, each with the errors that name it (errors without a line go on line 1)."""
    lines = source.splitlines() or [""]
    by_line: dict[int, list[str]] = {}
    for e in errors:
        line = e["line"] if e["line"] and 1 <= e["line"] <= len(lines) else 1
        by_line.setdefault(line, []).append(f"{e['field']}: {e['message']}" if e["field"] else e["message"])
    return [(i, line, by_line.get(i, [])) for i, line in enumerate(lines, start=1)]


# -- errors ----------------------------------------------------------------------------------
def _errors(app: FastAPI) -> None:
    @app.exception_handler(SignedOut)
    async def signed_out(request: Request, exc: SignedOut) -> Response:
        target = request.url.path if request.method == "GET" else "/"
        response = _redirect("/login?" + urlencode({"next": target}))
        if request.cookies.get(session.COOKIE):
            session.clear_cookie(request, response)
        return response

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return _error_page(request, exc.status_code, str(exc.detail))

    @app.exception_handler(Invalid)
    async def invalid(request: Request, exc: Invalid) -> Response:
        return _error_page(request, 422, exc.message)

    @app.exception_handler(RuleValidationError)
    async def rule_errors(request: Request, exc: RuleValidationError) -> Response:
        return _error_page(request, 422, str(exc))

    @app.exception_handler(ValueError)
    async def bad_value(request: Request, exc: ValueError) -> Response:
        return _error_page(request, 422, str(exc) or type(exc).__name__)

    @app.exception_handler(psycopg.Error)
    @app.exception_handler(EngineError)
    async def engine_error(request: Request, exc: Exception) -> Response:
        error = enginedb.translate(exc)
        if isinstance(error, NotFound):
            return _error_page(request, 404, str(error))
        if isinstance(error, (DatabaseUnavailable, QueryTimeout)):
            return _error_page(request, 503, str(error))
        if isinstance(error, EngineError) and not isinstance(exc, psycopg.Error):
            return _error_page(request, 409, str(error))
        log.error("database error on %s %s", request.method, request.url.path, exc_info=exc)
        return _error_page(request, 500, "database error (the server's log has the details)")


def _error_page(request: Request, status: int, detail: str) -> HTMLResponse:
    return render(request, "error.html", http_status=status, status_code=status, detail=detail)
