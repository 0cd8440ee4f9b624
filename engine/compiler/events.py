"""Event rules: run-state, artifact and registry rules select rows of the append-only
`events` table in [from_xid, to_xid) (live) or with time >= since (history), with their
scope and their kind's own conditions (see `kinds`)."""

from __future__ import annotations

from typing import Any

from sqlglot import exp

from engine.compiler.base import DIALECT, CompiledQuery, Mode, col, in_span, param
from engine.compiler.kinds import EventKind, activity_key, kind_of
from engine.rules import Automation

_EVENT_OUTPUT = (
    "id",
    "time",
    "type",
    "author",
    "project_id",
    "run_pk",
    "collection_id",
    "version_id",
    "registry_id",
    "registry_collection_id",
    "link_id",
    "details",
)


def compile_event(automation: Automation, mode: Mode = "live") -> CompiledQuery:
    kind, event = kind_of(automation), automation.event
    assert isinstance(kind, EventKind), f"{event} is not an event rule"
    params: dict[str, Any] = {"event_kind": activity_key(automation)[1]}
    select = exp.select(*(col(name, "e") for name in _EVENT_OUTPUT)).from_(exp.to_table("events").as_("e"))
    select = in_span(select, col("xid" if mode == "live" else "time", "e"), mode)
    select = select.where(col("type", "e").eq(param("event_kind")))
    select = kind.scope(select, automation, params)
    select = kind.where(select, event, params)
    select = select.order_by(col("id", "e"))
    return CompiledQuery(automation.name, "event", mode, select.sql(dialect=DIALECT), params)
