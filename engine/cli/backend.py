"""Where the everyday commands get their data: the database, or `engine web` over HTTP.

`open_backend()` gives `Remote` when ENGINE_URL is set (ENGINE_API_KEY authenticates; no
database credentials needed) and `Local` (ENGINE_DATABASE_URL or the embedded database)
otherwise. Both return the same Python values (the dataclasses of engine.automations, rows
as dicts with datetimes, an Explanation), so a command prints the same either way: the
commands in rules.py, service.py, actions.py and explain.py hold no other switch.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from engine import automations
from engine import db as enginedb
from engine.automations import AutomationRow, AutomationState, StoredAutomation
from engine.exceptions import ConfigurationError, RuleValidationError
from engine.explain import Explanation
from engine.rules import Automation
from engine.rules.loader import LoadedRule, load_rules
from engine.settings import get_settings


@dataclass(frozen=True)
class BacktestRow:
    """One firing of `engine rules test`."""

    time: datetime
    run: str  # the run's name, else its id ("" for registry events)
    step: int | None
    value: float | None
    alias_or_tag: str


class Backend(ABC):
    """What the everyday commands read and change."""

    remote = False

    def close(self) -> None:  # noqa: B027 (nothing to close by default)
        pass

    # -- rules ---------------------------------------------------------------------------
    @abstractmethod
    def load(self, paths: Sequence[Path], *, check_db: bool) -> list[LoadedRule]:
        """Load rule files (RuleValidationError with every issue); `check_db`: PostgreSQL
        compiles the regexes too (always so over HTTP: the server is the judge)."""

    @abstractmethod
    def apply(self, rules: list[LoadedRule], *, prune: bool, dry_run: bool) -> list[tuple[str, str]]:
        """Apply rules this backend loaded: (name, created|updated|unchanged|deleted)."""

    @abstractmethod
    def automations(self) -> list[AutomationRow]: ...

    @abstractmethod
    def automation(self, name: str) -> StoredAutomation:
        """One automation with its state (NotFound, with suggestions)."""

    @abstractmethod
    def set_enabled(self, name: str, enabled: bool) -> bool:
        """Whether it changed."""

    @abstractmethod
    def delete(self, name: str) -> None: ...

    @abstractmethod
    def backtest(self, rule: LoadedRule, start: datetime) -> list[BacktestRow]: ...

    # -- history, deliveries, explanations ---------------------------------------------------
    @abstractmethod
    def history(self, automation: str | None, since: datetime | None, limit: int) -> list[dict[str, Any]]:
        """Rows of automation_history, newest first."""

    @abstractmethod
    def deliveries(self, status: str | None, automation: str | None, limit: int) -> list[dict[str, Any]]: ...

    @abstractmethod
    def redeliver(self, delivery_id: str) -> dict[str, Any]:
        """Queue a delivery again for `engine serve`: its row (id, automation, action_type, ...)."""

    @abstractmethod
    def explanation(self, trigger_id: int) -> Explanation: ...


@contextlib.contextmanager
def open_backend() -> Iterator[Backend]:
    """`Remote` when ENGINE_URL is set, else `Local`; closed on exit."""
    settings = get_settings()
    backend: Backend
    if settings.url:
        from engine.cli.remote import Client

        backend = Remote(Client.from_settings(settings))
    else:
        backend = Local()
    try:
        yield backend
    finally:
        backend.close()


class Local(Backend):
    """The database: one connection, opened at the first command that needs it."""

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self._conn: psycopg.Connection | None = None

    def conn(self) -> psycopg.Connection:
        if self._conn is None:
            self._conn = self._stack.enter_context(enginedb.connection(autocommit=False))
            enginedb.ensure_schema(self._conn)
        return self._conn

    def close(self) -> None:
        self._stack.close()

    def load(self, paths: Sequence[Path], *, check_db: bool) -> list[LoadedRule]:
        return load_rules(paths, self.conn() if check_db else None)

    def apply(self, rules: list[LoadedRule], *, prune: bool, dry_run: bool) -> list[tuple[str, str]]:
        conn = self.conn()
        results = automations.apply_rules(
            conn,
            [r.automation for r in rules],
            source={r.automation.name: r.file for r in rules},
            prune=prune,
            dry_run=dry_run,
        )
        conn.commit()
        return list(results)

    def automations(self) -> list[AutomationRow]:
        return automations.list_automations(self.conn())

    def automation(self, name: str) -> StoredAutomation:
        return automations.get(self.conn(), name)

    def set_enabled(self, name: str, enabled: bool) -> bool:
        conn = self.conn()
        changed = automations.enable(conn, name) if enabled else automations.disable(conn, name)
        conn.commit()
        return changed

    def delete(self, name: str) -> None:
        conn = self.conn()
        automations.delete(conn, name)
        conn.commit()

    def backtest(self, rule: LoadedRule, start: datetime) -> list[BacktestRow]:
        from engine.evaluation import backtest

        conn = self.conn()
        firings = backtest(conn, rule.automation, start)
        labels: dict[int, str] = {}
        run_pks = [f.run_pk for f in firings if f.run_pk is not None]
        if run_pks:
            labels = {
                r["id"]: r["name"] or r["run_id"]
                for r in enginedb.rows(conn, "run_labels", {"run_pks": run_pks})
            }
        return [
            BacktestRow(
                time=f.time,
                run=labels.get(f.run_pk, "") if f.run_pk else "",
                step=f.step,
                value=f.value,
                alias_or_tag=f.alias or f.tag or "",
            )
            for f in firings
        ]

    def history(self, automation: str | None, since: datetime | None, limit: int) -> list[dict[str, Any]]:
        from engine.history import history_rows

        return history_rows(self.conn(), automation=automation, since=since, limit=limit)

    def deliveries(self, status: str | None, automation: str | None, limit: int) -> list[dict[str, Any]]:
        from engine.actions import outbox

        return outbox.list_deliveries(self.conn(), status=status, automation=automation, limit=limit)

    def redeliver(self, delivery_id: str) -> dict[str, Any]:
        from engine.actions import outbox

        conn = self.conn()
        row = outbox.redeliver(conn, delivery_id)
        conn.commit()
        return row

    def explanation(self, trigger_id: int) -> Explanation:
        from engine.explain import explain_data

        return explain_data(self.conn(), trigger_id)


# The JSON of the API carries times as ISO 8601 text and NaN/±Infinity as strings: these
# keys are turned back into the values the database gives.
_HISTORY_TIMES = ("fired_at", "automation_deleted_at")
_DELIVERY_TIMES = ("next_attempt_at", "created_at", "updated_at", "finished_at")
_STATE_TIMES = ("evaluated_at", "last_error_at", "last_fired_at")
HISTORY_PAGE = 1000  # the route's largest page


class Remote(Backend):
    """`engine web` at ENGINE_URL, as the key of ENGINE_API_KEY is allowed to see and do."""

    remote = True

    def __init__(self, client: Any) -> None:
        self.client = client
        self._texts: dict[str, str] = {}  # the files of the last load(), sent as written

    def close(self) -> None:
        self.client.close()

    def load(self, paths: Sequence[Path], *, check_db: bool) -> list[LoadedRule]:
        # Read and checked here (file names, lines, names used twice across files), then by the
        # server file by file, which also compiles the regexes: every issue once, in the order
        # the database path reports them (its regex issues come last).
        self._texts = {}
        try:
            rules, issues = load_rules(paths, texts=self._texts), []
        except RuleValidationError as exc:
            rules, issues = [], list(exc.issues)
        for file, text in self._texts.items():
            issues += [found for found in self.client.validate(text, file) if found not in issues]
        if issues:
            raise RuleValidationError(issues)
        return rules

    def apply(self, rules: list[LoadedRule], *, prune: bool, dry_run: bool) -> list[tuple[str, str]]:
        # the files as written (the server reads them again: its errors name their lines)
        return self.client.apply(self._texts, prune=prune, dry_run=dry_run)

    def automations(self) -> list[AutomationRow]:
        return [
            AutomationRow(**(row | {"updated_at": _time(row["updated_at"])}))
            for row in self.client.automations()
        ]

    def automation(self, name: str) -> StoredAutomation:
        found = self.client.automation(name)
        state = found["state"]
        return StoredAutomation(
            id=found["id"],
            name=found["name"],
            version=found["version"],
            enabled=found["enabled"],
            automation=Automation.model_validate(found["rule"]),
            source=found["source"],
            created_at=_time(found["created_at"]),
            updated_at=_time(found["updated_at"]),
            evaluate_from=_time(found["evaluate_from"]),
            state=AutomationState(**_typed(state, _STATE_TIMES)) if state else None,
        )

    def set_enabled(self, name: str, enabled: bool) -> bool:
        return self.client.set_enabled(name, enabled)

    def delete(self, name: str) -> None:
        self.client.delete(name)

    def backtest(self, rule: LoadedRule, start: datetime) -> list[BacktestRow]:
        answers = self.client.backtest(self._texts[rule.file], rule.file, start.isoformat())
        firings: list[dict[str, Any]] = next(
            (a["firings"] for a in answers if a["automation"] == rule.automation.name), []
        )
        return [
            BacktestRow(
                time=_time(f["time"]),
                run=f.get("run_name") or f.get("run_id") or "",
                step=f["step"],
                value=_number(f["value"]),
                alias_or_tag=f["alias"] or f["tag"] or "",
            )
            for f in firings
        ]

    def history(self, automation: str | None, since: datetime | None, limit: int) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        cursor = None
        while len(rows) < limit:
            params = {
                "automation": automation,
                "since": since.isoformat() if since else None,
                "limit": min(limit - len(rows), HISTORY_PAGE),
                "cursor": cursor,
            }
            page = self.client.history(params)
            rows += [_typed(row, _HISTORY_TIMES, ("value",)) for row in page["rows"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        return rows

    def deliveries(self, status: str | None, automation: str | None, limit: int) -> list[dict[str, Any]]:
        found = self.client.deliveries({"status": status, "automation": automation, "limit": limit})
        return [_typed(row, _DELIVERY_TIMES) for row in found]

    def redeliver(self, delivery_id: str) -> dict[str, Any]:
        return _typed(self.client.redeliver(delivery_id), _DELIVERY_TIMES)

    def explanation(self, trigger_id: int) -> Explanation:
        return Explanation.model_validate(self.client.explanation(trigger_id))


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _number(value: Any) -> float | None:
    if value is None:
        return None
    return float(value)  # "NaN", "Infinity", "-Infinity" included


def _typed(row: dict[str, Any], times: Sequence[str], numbers: Sequence[str] = ()) -> dict[str, Any]:
    out = dict(row)
    for key in times:
        if isinstance(out.get(key), str):
            out[key] = _time(out[key])
    for key in numbers:
        if isinstance(out.get(key), str):
            out[key] = _number(out[key])
    return out


def refuse_remote(what: str) -> ConfigurationError:
    """An option that needs this machine's database or secrets, asked for with ENGINE_URL set."""
    return ConfigurationError(
        f"{what} is not available over HTTP (ENGINE_URL is set): unset ENGINE_URL to use the database"
    )
