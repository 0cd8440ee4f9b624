"""`engine doctor`: check an installation and say, in plain words, what is wrong and how to fix it.

    ✓ database reachable: connected to postgresql://engine@/engine?host=… (ENGINE_DATABASE_URL), PostgreSQL 15.8
    ✗ migrations applied: 1 of 3 migrations not applied: 0004_sdk.sql
        fix: run `engine db migrate`

Checks, in order (a check that needs the database is skipped, and says so, without one):

1. the database answers (ENGINE_DATABASE_URL, or the embedded one under ENGINE_DATA_DIR,
   which the doctor never starts itself);
2. TimescaleDB is installed, preloaded (`shared_preload_libraries`) and created;
3. every migration is applied, and none was edited after it was applied;
4. the rule files under ENGINE_RULES_PATH are valid (with the database: their regexes too),
   and whether they are all applied;
5. the stored automations load, and none is failing (`automation_state.last_error`);
6. every action target is reachable: a webhook's host resolves, its addresses pass the
   address policy (ENGINE_WEBHOOK_ALLOW_HOSTS) and accept a TCP connection (no request is
   sent); the environment variables of `{env: NAME}` secrets are set *in this shell*;
7. no delivery failed in the last 24 hours.

A check the connected role has no privilege for (a training node's ingest-only role cannot
read the automations; only a superuser or pg_read_all_settings may read
`shared_preload_libraries`) is not a failure: it says "not checked", the privilege it needs,
and the doctor goes on with the next check (see the roles of engine/sql/grants.sql).

`run_checks()` returns the results; the exit code of the command is 1 when one failed.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

import psycopg

from engine import clock, db
from engine.actions import ssrf
from engine.actions.secrets import SECRET_FIELDS, read_env
from engine.actions.smtp import parse_server
from engine.db import connect, edited_migrations, migrations, one_row, pending_migrations
from engine.demo.rules import PREFIX as DEMO_PREFIX
from engine.exceptions import (
    DatabaseError,
    DeliveryError,
    EngineError,
    PermanentDeliveryError,
    RuleValidationError,
)
from engine.localdb import LocalDatabase
from engine.rules import Automation, load_rules
from engine.settings import Settings, get_settings

Status = Literal["ok", "warn", "fail", "skip"]
SYMBOLS: dict[Status, str] = {"ok": "✓", "warn": "!", "fail": "✗", "skip": "–"}
FAILED_DELIVERY_WINDOW = timedelta(hours=24)


@dataclass(frozen=True)
class Check:
    """One line of the report: what was checked, how it went, and the fix when it did not."""

    name: str
    status: Status
    detail: str
    fix: str = ""

    def render(self) -> str:
        lines = [f"{SYMBOLS[self.status]} {self.name}: {self.detail}"]
        if self.fix:
            lines.append(f"    fix: {self.fix}")
        return "\n".join(lines)


def run_checks(settings: Settings | None = None, *, timeout: float = 3.0) -> list[Check]:
    """Every check, in order. `timeout`: seconds for each connection attempt."""
    settings = settings or get_settings()
    conn, reachable = _database(settings, timeout)
    checks = [reachable]
    if conn is None:
        skipped = "not checked: no database"
        checks += [
            Check("TimescaleDB installed and preloaded", "skip", skipped),
            Check("migrations applied", "skip", skipped),
        ]
        rules_check, from_files = _rules(settings, None, [])
        checks += [rules_check, Check("stored automations", "skip", skipped)]
        checks += _targets(settings, from_files, timeout, source="rule files")
        checks.append(Check("deliveries", "skip", skipped))
        return checks
    with conn:
        role = _role(conn)
        checks.append(_timescaledb(conn, role))
        migrated = _migrations(conn, role)
        checks.append(migrated)
        if migrated.status == "fail" and "not applied" in migrated.detail:
            rules_check, from_files = _rules(settings, conn, [])
            checks.append(rules_check)
            checks.append(Check("stored automations", "skip", "not checked: migrations not applied"))
            checks += _targets(settings, from_files, timeout, source="rule files")
            checks.append(Check("deliveries", "skip", "not checked: migrations not applied"))
            return checks
        try:
            stored = _dicts(conn, "doctor_automations")
        except _NotPermitted as refused:  # an ingest-only role: the rule files stand in for them
            rules_check, from_files = _rules(settings, conn, None)
            checks.append(rules_check)
            checks.append(
                _not_permitted(
                    "stored automations load and run", role, refused, f"GRANT engine_reader TO {role}"
                )
            )
            checks += _targets(settings, from_files, timeout, source="rule files")
        else:
            rules_check, _ = _rules(settings, conn, stored)
            checks.append(rules_check)
            automations_check, loaded = _stored_automations(stored)
            checks.append(automations_check)
            checks += _targets(settings, loaded, timeout, source="enabled automations")
        checks.append(_deliveries(conn, role))
    return checks


class _NotPermitted(Exception):
    """A check's query was refused: the connected role lacks a privilege (SQLSTATE 42501)."""


def _refusal(exc: BaseException) -> str | None:
    """The server's words when `exc` (or what caused it) is a privilege refusal."""
    for error in (exc, exc.__cause__):
        if isinstance(error, DatabaseError) and error.sqlstate == _PRIVILEGE_REFUSED:
            return _first_line(error.__cause__ or error)
    return None


_PRIVILEGE_REFUSED = "42501"  # insufficient_privilege


def _not_permitted(name: str, role: str, refused: BaseException, grant: str) -> Check:
    return Check(
        name,
        "skip",
        f"not checked: the role {role} may not read what it needs ({_refusal(refused) or refused})",
        f"to check it, `{grant}` (see engine/sql/grants.sql), or run `engine doctor` as the service's role",
    )


def _role(conn: psycopg.Connection) -> str:
    """The connected role, quoted as a GRANT names it."""
    return one_row(conn.execute("SELECT quote_ident(current_user)"))[0]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# -- 1. database -------------------------------------------------------------------------------
def _database(settings: Settings, timeout: float) -> tuple[psycopg.Connection | None, Check]:
    name = "database reachable"
    if settings.database_url:
        url, where = settings.database_url, "ENGINE_DATABASE_URL"
        fix = "start the server, or correct ENGINE_DATABASE_URL (host, port, user, password, database name)"
    else:
        local = LocalDatabase(settings.data_dir)
        if not local.status().running:
            return None, Check(
                name,
                "fail",
                f"ENGINE_DATABASE_URL is not set, and the embedded database under {settings.data_dir} is not running",
                "start it with `engine db up`, or set ENGINE_DATABASE_URL to a running TimescaleDB",
            )
        url, where = local.url(), f"the embedded database under {settings.data_dir}"
        fix = "restart it with `engine db down` and `engine db up` (its log is in the data folder)"
    try:
        conn = connect(url, autocommit=True, connect_timeout=max(2, round(timeout)))
    except EngineError as exc:
        text = str(exc.__cause__ or exc).strip()  # the driver's words, not the CLI's advice
        reason = text.splitlines()[0] if text else type(exc).__name__
        return None, Check(name, "fail", f"cannot connect to {redact_url(url)} ({where}): {reason}", fix)
    version = one_row(conn.execute("SELECT current_setting('server_version')"))[0]
    return conn, Check(name, "ok", f"connected to {redact_url(url)} ({where}), PostgreSQL {version}")


def redact_url(url: str, placeholder: str | None = "***") -> str:
    """The database URL without its password, wherever it is written: `postgresql://u:***@h/db`,
    `...?password=***`, or `password=***` in the key=value form (sslpassword too).
    `placeholder=None` leaves the password out altogether: psql then asks for it."""
    try:
        parts = urlsplit(url)
    except ValueError:  # not a URL Python can split (a bad IPv6 host): cut out what looks like one
        url = _USERINFO.sub(r"\1@" if placeholder is None else rf"\1:{placeholder}@", url)
        return _SECRET_PAIR.sub(_pair_as(placeholder), url).strip()
    if not parts.scheme.startswith("postgres"):
        return _SECRET_PAIR.sub(_pair_as(placeholder), url).strip()
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if ":" in userinfo:
        user = userinfo.split(":", 1)[0]
        userinfo = user if placeholder is None else f"{user}:{placeholder}"
    query = []
    for pair in parts.query.split("&") if parts.query else []:
        key = pair.split("=", 1)[0]
        if unquote(key).strip().lower() in ("password", "sslpassword"):
            if placeholder is None:
                continue
            pair = f"{key}={placeholder}"
        query.append(pair)
    return urlunsplit(parts._replace(netloc=userinfo + at + hosts, query="&".join(query)))


# key=value connection strings: the value is quoted (backslash escapes) or runs to the next blank
_SECRET_PAIR = re.compile(r"(?<!\S)((?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)(\s*)", re.IGNORECASE)
# scheme://user:password@ up to the last @ (a password may hold one)
_USERINFO = re.compile(r"^(\w+://[^:@/]*):.*@")


def _pair_as(placeholder: str | None) -> str:
    return "" if placeholder is None else rf"\g<1>{placeholder}\g<3>"


# -- 2. TimescaleDB ----------------------------------------------------------------------------
def _timescaledb(conn: psycopg.Connection, role: str | None = None) -> Check:
    name = "TimescaleDB installed and preloaded"
    row = _dicts(conn, "doctor_server")[0]
    preloaded = "timescaledb" in [p.strip().strip('"') for p in (row["preload"] or "").split(",")]
    if row["available"] is None and row["timescaledb"] is None:
        return Check(
            name,
            "fail",
            f"the TimescaleDB extension is not installed for PostgreSQL {row['server_version']}",
            "install it (`scripts/setup`, or use a timescale/timescaledb image)",
        )
    if row["preload"] is None and not row["may_read_settings"]:
        return _timescaledb_unprivileged(conn, role or _role(conn), row)
    if not preloaded:
        return Check(
            name,
            "fail",
            "TimescaleDB is installed but not in shared_preload_libraries, so it cannot run",
            "add shared_preload_libraries = 'timescaledb' to postgresql.conf, then restart PostgreSQL",
        )
    if row["timescaledb"] is None:
        return Check(
            name,
            "fail",
            "TimescaleDB is installed and preloaded, but not created in this database",
            "run `engine db migrate` (its first migration runs CREATE EXTENSION timescaledb)",
        )
    return Check(name, "ok", f"TimescaleDB {row['timescaledb']}, preloaded")


def _timescaledb_unprivileged(conn: psycopg.Connection, role: str, row: dict[str, Any]) -> Check:
    """Without pg_read_all_settings, shared_preload_libraries cannot be read; but a library
    that is not preloaded refuses to run, so one call into it says as much."""
    name = "TimescaleDB installed and preloaded"
    grant = f"GRANT pg_read_all_settings TO {role}"
    if row["timescaledb"] is None:
        return Check(
            name,
            "skip",
            "TimescaleDB is installed but not created in this database; whether it is preloaded was not "
            "checked: only a superuser or a member of pg_read_all_settings may read shared_preload_libraries",
            f"run `engine db migrate` (as the role that owns the schema); to check the preload, `{grant}`",
        )
    try:
        _dicts(conn, "doctor_timescaledb_loads")
    except (_NotPermitted, EngineError) as exc:
        return Check(
            name,
            "skip",
            f"TimescaleDB {row['timescaledb']} is created; whether it is preloaded was not checked: the "
            f"role {role} may not read shared_preload_libraries, and calling into TimescaleDB failed "
            f"({_first_line(exc.__cause__ or exc)})",
            f"`{grant}`, or run `engine doctor` as a superuser",
        )
    return Check(
        name,
        "ok",
        f"TimescaleDB {row['timescaledb']}, loaded (so preloaded; the role {role} may not read "
        "shared_preload_libraries itself, which needs pg_read_all_settings)",
    )


# -- 3. migrations -----------------------------------------------------------------------------
def _migrations(conn: psycopg.Connection, role: str | None = None) -> Check:
    name = "migrations applied"
    try:
        pending = pending_migrations(conn)
    except EngineError as exc:
        if _refusal(exc):
            role = role or _role(conn)
            return _not_permitted(name, role, exc, f"GRANT SELECT ON schema_migrations TO {role}")
        return Check(name, "fail", f"cannot read schema_migrations: {exc}", "run `engine db migrate`")
    files = migrations()
    if pending:
        return Check(
            name,
            "fail",
            f"{len(pending)} of {len(files)} migrations not applied: {', '.join(pending)}",
            "run `engine db migrate`",
        )
    changed = edited_migrations(conn)
    if changed:
        return Check(
            name,
            "fail",
            f"{', '.join(changed)} changed after it was applied: the database may not match this engine's code",
            "restore the migration file as it was (migrations are never edited; add a new one instead)",
        )
    return Check(
        name,
        "ok",
        f"all {len(files)} migrations applied (latest {files[-1][1].name})"
        if files
        else "no migration files",
    )


def database_checks(settings: Settings | None = None, *, timeout: float = 3.0) -> list[Check]:
    """Checks 1 to 3 alone (the database answers, TimescaleDB, the migrations): `engine db status`."""
    settings = settings or get_settings()
    conn, reachable = _database(settings, timeout)
    if conn is None:
        return [reachable]
    with conn:
        return [reachable, _timescaledb(conn), _migrations(conn)]


# -- 4. rule files -----------------------------------------------------------------------------
def _rules(
    settings: Settings, conn: psycopg.Connection | None, stored: list[dict[str, Any]] | None
) -> tuple[Check, list[Automation]]:
    """`stored`: the automations in the database (None: unreadable, so not compared)."""
    name = "rule files valid"
    path = settings.rules_path
    if not path.exists():
        return Check(name, "ok", f"no rule files to check: ENGINE_RULES_PATH ({path}) does not exist"), []
    try:
        loaded = load_rules([path], conn)
    except RuleValidationError as exc:
        lines = "\n".join(f"      {issue}" for issue in exc.issues)
        return Check(
            name,
            "fail",
            f"{_count(len(exc.issues), 'problem')} in the rule files under {path}:\n{lines}",
            "correct the lines named above, then check again with `engine rules validate`",
        ), []
    except EngineError as exc:  # the regex check needs the database; it may fail midway
        return Check(name, "fail", f"cannot check the rules under {path}: {exc}", "see the error above"), []
    rules = [r.automation for r in loaded]
    files = len({r.file for r in loaded})
    detail = f"{_count(len(rules), 'rule')} in {_count(files, 'file')} under {path}"
    if conn is None:
        return Check(name, "ok", detail), rules
    if stored is None:
        return Check(name, "ok", f"{detail} (whether they are applied was not checked: see below)"), rules
    applied = {row["name"]: row["rule"] for row in stored}
    stale = [r.name for r in rules if r.name not in applied or _hash(applied[r.name]) != r.rule_hash()]
    # `engine demo` applies copies of the example rules (demo.<name>, in projects of its own):
    # applying the files themselves would run them on the example's real project.
    demo = [n for n in stale if DEMO_PREFIX + n in applied]
    others = [n for n in stale if n not in demo]
    note = (
        f"; {_count(len(demo), 'rule')} not applied as such because `engine demo` ran {'them' if len(demo) > 1 else 'it'} "
        f"as {DEMO_PREFIX}<name> in its own projects ({', '.join(demo)}): to use one for real, set its scope and action "
        "to yours first, then `engine rules apply`"
        if demo
        else ""
    )
    if others:
        return Check(
            name,
            "warn",
            f"{detail}; not applied (or changed since): {', '.join(others)}{note}",
            f"run `engine rules apply {path}/<file>` for {'them' if len(others) > 1 else 'it'} when ready to run"
            if demo
            else "run `engine rules apply` when they are ready to run",
        ), rules
    if demo:
        return Check(name, "ok", f"{detail}{note}"), rules
    return Check(name, "ok", f"{detail}, all applied"), rules


def _hash(rule_json: dict[str, Any]) -> str | None:
    try:
        return Automation.model_validate(rule_json).rule_hash()
    except ValueError:
        return None


# -- 5. stored automations ---------------------------------------------------------------------
def _stored_automations(rows: list[dict[str, Any]]) -> tuple[Check, list[Automation]]:
    name = "stored automations load and run"
    problems: list[str] = []
    loaded: list[Automation] = []
    for row in rows:
        try:
            automation = Automation.model_validate(row["rule"])
        except ValueError as exc:
            first = str(exc).splitlines()[1:3]
            problems.append(
                f"{row['name']}: this engine cannot read the stored rule ({' '.join(p.strip() for p in first)})"
            )
            continue
        if not row["enabled"]:
            continue
        loaded.append(automation)
        if row["last_error"]:
            when = row["last_error_at"].strftime("%Y-%m-%d %H:%M:%S %Z") if row["last_error_at"] else "?"
            problems.append(
                f"{row['name']}: failing ({row['failures']} time{'s' if row['failures'] != 1 else ''}, last at {when}): "
                f"{row['last_error']}"
            )
    if problems:
        lines = "\n".join(f"      {p}" for p in problems)
        return Check(
            name,
            "fail",
            f"{len(problems)} of {_count(len(rows), 'automation')} with a problem:\n{lines}",
            "see `engine rules list` / `engine rules show NAME`; a failing automation is skipped each tick until "
            "it evaluates without error (a rule this engine cannot read: apply it again from its file, or delete it)",
        ), loaded
    if not rows:
        return Check(name, "ok", "no automations stored (apply some with `engine rules apply`)"), loaded
    demo = sum(1 for row in rows if row["name"].startswith(DEMO_PREFIX))
    of_demo = f", {demo} of them from `engine demo`" if demo else ""
    return Check(
        name,
        "ok",
        f"{_count(len(rows), 'automation')} ({len(loaded)} enabled{of_demo}) load; none is failing",
    ), loaded


# -- 6. action targets -------------------------------------------------------------------------
def _targets(
    settings: Settings, automations: Iterable[Automation], timeout: float, *, source: str
) -> list[Check]:
    hosts: dict[tuple[str, str, int], list[str]] = {}
    secrets: dict[str, list[str]] = {}
    mailers: list[str] = []
    for automation in automations:
        action = automation.action
        for field, ref in _secret_refs(action):
            secrets.setdefault(ref, []).append(f"{field} of {automation.name}")
        if action.type in ("webhook", "pagerduty"):
            url = urlsplit(action.url)
            if "$" not in (url.hostname or ""):  # a templated host is judged once rendered
                port = url.port or (443 if url.scheme == "https" else 80)
                hosts.setdefault((url.scheme, url.hostname or "", port), []).append(automation.name)
        elif action.type == "email":
            mailers.append(automation.name)
    checks = []
    if mailers:  # the SMTP server is the service's: reached like a webhook target
        try:
            server = parse_server(settings.smtp_url)
        except PermanentDeliveryError as exc:
            fix = "set ENGINE_SMTP_URL (and ENGINE_SMTP_FROM) where `engine serve` runs"
            checks.append(Check(f"SMTP server ({', '.join(mailers)})", "fail", str(exc), fix))
        else:
            hosts.setdefault((server.scheme, server.host, server.port), []).extend(mailers)
    checks += [
        _reach(scheme, host, port, users, settings, timeout)
        for (scheme, host, port), users in sorted(hosts.items())
    ]
    checks += [_secret(name, users) for name, users in sorted(secrets.items())]
    if not checks:
        return [Check("action targets", "ok", f"no actions that send in the {source}")]
    return checks


def _secret_refs(action: Any) -> Iterator[tuple[str, str]]:
    for field in SECRET_FIELDS:
        ref = getattr(action, field, None)
        if ref is not None:
            yield field, ref.env


def _reach(scheme: str, host: str, port: int, users: list[str], settings: Settings, timeout: float) -> Check:
    shown = f"[{host}]" if ":" in host else host
    what = "SMTP server" if scheme in ("smtp", "smtps") else "webhook target"
    name = f"{what} {scheme}://{shown}:{port} ({', '.join(users)})"
    try:
        addresses = ssrf.check_target(host, port, settings.webhook_allow_hosts)
    except PermanentDeliveryError as exc:
        fix = f"if {host} is meant to be reached, add it to ENGINE_WEBHOOK_ALLOW_HOSTS (host name, address or CIDR range)"
        if ssrf.METADATA_REASON in str(exc):  # never advise opening the machine's credentials
            fix = "correct the URL in the rule"
        return Check(name, "fail", f"refused by the address policy: {exc}", fix)
    except DeliveryError as exc:
        return Check(name, "fail", str(exc), "check the host name in the rule, and this machine's DNS")
    # A TCP handshake only: the receiver gets no request. Each checked address in turn, as a delivery tries them.
    for address in addresses:
        try:
            with socket.create_connection((str(address), port), timeout=timeout):
                break
        except OSError as error:
            failure = error
    else:
        reason = (
            "timed out"
            if isinstance(failure, TimeoutError)
            else (failure.strerror or type(failure).__name__).lower()
        )
        return Check(
            name,
            "fail",
            f"nothing accepts connections at {address} port {port} ({reason})",
            "start the receiver, open the firewall, or correct the URL in the rule",
        )
    return Check(name, "ok", f"resolves to {address}, allowed, accepts connections (no request sent)")


def _secret(env: str, users: list[str]) -> Check:
    name = f"secret {env} ({', '.join(users)})"
    try:
        read_env(env)
    except PermanentDeliveryError as exc:
        return Check(
            name,
            "fail",
            f"{exc} — in this shell; the service needs it in its own environment",
            f"export {env}=… where `engine serve` runs (systemd Environment=, docker -e, …)",
        )
    return Check(name, "ok", "set in this environment (its value is not shown)")


# -- 7. deliveries -----------------------------------------------------------------------------
def _deliveries(conn: psycopg.Connection, role: str) -> Check:
    name = "deliveries succeeding"
    try:
        rows = _dicts(conn, "doctor_failed_deliveries", {"since": clock.now() - FAILED_DELIVERY_WINDOW})
    except _NotPermitted as exc:
        return _not_permitted(name, role, exc, f"GRANT engine_reader TO {role}")
    if not rows:
        return Check(name, "ok", "no delivery failed in the last 24 h")
    total = sum(r["failed"] for r in rows)
    lines = "\n".join(
        f"      {r['automation']}: {r['failed']} failed, last error: {r['last_error']}" for r in rows
    )
    return Check(
        name,
        "fail",
        f"{total} deliver{'ies' if total != 1 else 'y'} failed in the last 24 h:\n{lines}",
        "see them with `engine deliveries --status failed`; once the cause is fixed, `engine redeliver ID` sends one again",
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _dicts(conn: psycopg.Connection, name: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    try:
        return db.rows(conn, name, params)
    except DatabaseError as exc:
        if exc.sqlstate == _PRIVILEGE_REFUSED:
            raise _NotPermitted(_first_line(exc.__cause__ or exc)) from exc
        raise
