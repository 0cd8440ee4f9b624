"""The values of the template variables for one trigger (the table of them: docs/actions.md).

`build_context(conn, trigger_id)` reads the trigger and what it points at (automation, run,
project, event, artifact version and collection, registry) in one query
(`delivery_trigger_context`) and turns the row into `{variable: text}`. Every variable of
`VARIABLES` (engine/rules/variables.py) except the secret `ACCESS_TOKEN` is present; one that
does not apply is "". `artifact_metadata.<KEY>` entries are added for the version's top-level
metadata keys.

`triggers.details` may carry any variable by name (the evaluator writes `metric_filter`,
`registry_name`, `event_author`, ... when it knows them); such a value wins over the one
computed from the joins. Values are text: numbers as Python writes them (`0.62`, `5`),
`metric_values` as a JSON list, times in ISO 8601 UTC. `metric_filter` is the rule's event
in words, from its model (`describe()`), the function the evaluator records it with.

`sample_context(automation)` builds the same dictionary from the rule alone, for
`engine actions test`, through the same `compose` function.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import psycopg
from pydantic import TypeAdapter, ValidationError

from engine import clock, db
from engine.exceptions import NotFound
from engine.rules.automation import Automation
from engine.rules.events import (
    METRIC_EVENT_TYPES,
    Event,
    RunMetricChange,
    RunMetricNonfinite,
    RunMetricThreshold,
    RunMetricZscore,
    RunStalled,
    RunState,
)
from engine.rules.variables import METADATA_PREFIX, SECRET_VARIABLES, VARIABLES, wandb_event_type
from engine.settings import Settings, get_settings

_EVENT: TypeAdapter[Event] = TypeAdapter(Event)


def number_text(value: Any) -> str:
    """`0.62`, `5`, `5.0`; "" for None. Non-finite values as JSON-minded receivers and
    PostgreSQL spell them: `NaN`, `Infinity`, `-Infinity`."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    number = float(value)
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "Infinity" if number > 0 else "-Infinity"
    return repr(number)


def values_text(values: Any) -> str:
    """A window as a JSON list; non-finite values (never in a window, but) become null."""
    if values is None:
        return ""
    return json.dumps([float(v) if v is not None and math.isfinite(v) else None for v in values])


def time_text(value: datetime | None) -> str:
    return value.astimezone(UTC).isoformat() if value else ""


def condition_text(rule: Automation | Mapping[str, Any] | None) -> str:
    """`${metric_filter}` of a rule (a model, or its stored JSON): its event in words."""
    if isinstance(rule, Automation):
        return rule.event.describe()
    try:
        return _EVENT.validate_python((rule or {}).get("event")).describe()
    except ValidationError:  # a stored rule another version of the engine wrote
        return ""


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return number_text(value)
    return json.dumps(value, ensure_ascii=False)


def _run_status(row: Mapping[str, Any]) -> str:
    # For a state change, the state it went into (the run may have moved on since).
    if row.get("kind") == "run_state":
        for details in (row.get("event_details") or {}, row.get("details") or {}):
            for key in ("to", "to_state", "state"):  # the SDK writes {"from": …, "to": …}
                if details.get(key):
                    return str(details[key])
    return row.get("run_state") or ""


def run_url(entity: str, project: str, run_id: str, settings: Settings) -> str:
    """The run's page of the web console (`engine web`) at ENGINE_BASE_URL."""
    return _console_url(f"{entity}/{project}/runs/{run_id}", settings)


def trigger_url(trigger_id: str, settings: Settings) -> str:
    """The trigger's "why it fired" page of the web console at ENGINE_BASE_URL."""
    return _console_url(f"triggers/{trigger_id}", settings)


def _console_url(path: str, settings: Settings) -> str:
    return f"{settings.base_url.rstrip('/')}/{path}" if settings.base_url else f"engine://{path}"


def compose(row: Mapping[str, Any], settings: Settings | None = None) -> dict[str, str]:
    """The variables of a trigger from a `delivery_trigger_context` row (or a sample one)."""
    settings = settings or get_settings()
    ctx = {name: "" for name in VARIABLES if name not in SECRET_VARIABLES}
    kind = row.get("kind") or ""
    rule = row.get("rule") or {}
    details = row.get("details") or {}
    event_details = row.get("event_details") or {}

    ctx["automation_name"] = row.get("automation_name") or ""
    ctx["event_type"] = wandb_event_type(kind)
    ctx["entity_name"] = row.get("entity") or ""
    ctx["project_name"] = row.get("project") or ""
    ctx["trigger_id"] = _text(row.get("trigger_id"))
    ctx["trigger_url"] = trigger_url(ctx["trigger_id"], settings) if ctx["trigger_id"] else ""
    ctx["fired_at"] = time_text(row.get("fired_at"))

    if row.get("run_id"):
        ctx["run_id"] = row["run_id"]
        ctx["run_name"] = row.get("run_name") or ""
        ctx["run_status"] = _run_status(row)
        ctx["run_url"] = run_url(ctx["entity_name"], ctx["project_name"], row["run_id"], settings)

    if kind == "run_stalled":  # the seconds since the run's last metric value
        ctx["metric_value"] = number_text(row.get("value"))
    if kind in METRIC_EVENT_TYPES or row.get("metric"):
        ctx["metric_name"] = row.get("metric") or ""
        ctx["metric_value"] = number_text(row.get("value"))
        ctx["metric_values"] = values_text(row.get("window_values"))
        ctx["metric_step"] = number_text(row.get("step"))
    # The evaluator records it with every trigger (in `details`, which wins below); the rule
    # is only read for a sample, or for a trigger recorded without it.
    if "metric_filter" not in details:
        ctx["metric_filter"] = condition_text(rule)

    ctx["alias"] = row.get("alias") or _text(event_details.get("alias"))
    ctx["tag"] = row.get("tag") or _text(event_details.get("tag"))

    in_registry = row.get("registry_collection_name") is not None
    if row.get("version_id") is not None:
        ctx["artifact_version"] = f"artifact://{row['version_id']}"
        if in_registry and row.get("link_index") is not None:
            index = row["link_index"]
            ctx["artifact_collection_name"] = row["registry_collection_name"]
            ctx["artifact_version_string"] = (
                f"{row.get('registry_name') or ''}/{row['registry_collection_name']}:v{index}"
            )
        else:
            index = row.get("version_index")
            ctx["artifact_collection_name"] = row.get("collection_name") or ""
            ctx["artifact_version_string"] = (
                f"{ctx['entity_name']}/{ctx['project_name']}/{ctx['artifact_collection_name']}:v{index}"
            )
        ctx["artifact_version_index"] = number_text(index)
        for key, value in (row.get("metadata") or {}).items():
            ctx[METADATA_PREFIX + str(key)] = _text(value)
    else:  # a collection's own event (its tags): no version
        ctx["artifact_collection_name"] = (
            row.get("registry_collection_name") or row.get("collection_name") or ""
        )
    ctx["registry_name"] = row.get("registry_name") or ""

    authors = (
        row.get("event_author"),
        row.get("link_author") if in_registry else None,
        row.get("version_author"),
        row.get("run_user"),
    )
    ctx["event_author"] = next((a for a in authors if a), "")

    # What the evaluator recorded wins over what the joins say (it knew the event first-hand).
    for key, value in details.items():
        if (key in ctx and key not in SECRET_VARIABLES) or key.startswith(METADATA_PREFIX):
            ctx[key] = _text(value)
    return ctx


def build_context(
    conn: psycopg.Connection, trigger_id: int, settings: Settings | None = None
) -> dict[str, str]:
    """Every template variable for that trigger (see module docstring)."""
    found = build_contexts(conn, [trigger_id], settings)
    if trigger_id not in found:
        raise NotFound(f"no trigger {trigger_id}")
    return found[trigger_id]


def build_contexts(
    conn: psycopg.Connection, trigger_ids: Iterable[int], settings: Settings | None = None
) -> dict[int, dict[str, str]]:
    """`build_context` of several triggers in one query, by trigger id (a deleted one is absent)."""
    rows = db.rows(conn, "delivery_trigger_context", {"trigger_ids": list(set(trigger_ids))})
    return {row["trigger_id"]: compose(row, settings) for row in rows}


def sample_context(automation: Automation, settings: Settings | None = None) -> dict[str, str]:
    """A plausible context for the automation's event kind, built from its rule alone.

    Names come from the rule's scope where it has them (`acme/vision`, the collection,
    the registry) and are `sample-…` otherwise; metric values sit on the threshold.
    """
    event, scope = automation.event, automation.scope
    entity, _, project = (scope.project or f"{scope.entity or 'sample-entity'}/sample-project").partition("/")
    row: dict[str, Any] = {
        "trigger_id": 0,
        "fired_at": clock.now(),
        "kind": event.type,
        "automation_name": automation.name,
        "rule": automation,
        "entity": entity,
        "project": project or "sample-project",
        "event_author": "sample-user",
    }
    if event.is_run_event:
        state = event.states[0] if isinstance(event, RunState) else "running"
        row |= {
            "run_id": "sample-run",
            "run_name": "sample-run",
            "run_state": state,
            "run_user": "sample-user",
        }
    if isinstance(event, RunMetricThreshold):
        row |= {
            "metric": event.metric,
            "step": 100,
            "value": event.threshold,
            "window_values": [event.threshold] * event.window,
        }
    elif isinstance(event, RunMetricChange):
        values = [1.0 + event.amount] * event.current_window
        row |= {"metric": event.metric, "step": 100, "value": event.amount, "window_values": values}
    elif isinstance(event, RunMetricZscore):  # z on the threshold; the value itself as the window
        row |= {
            "metric": event.metric,
            "step": 100,
            "value": event.threshold,
            "window_values": [event.threshold],
        }
    elif isinstance(event, RunMetricNonfinite):
        row |= {"metric": event.metric, "step": 100, "value": float("nan")}
    elif isinstance(event, RunStalled):  # seconds without a metric value: the deadline
        row |= {"value": event.after_seconds}
    elif event.type == "run_alert":
        level = event.levels[0] if event.levels else "info"
        row["details"] = {"alert_title": "sample alert", "alert_text": "sample text", "alert_level": level}
    elif not event.is_run_event:
        collection = scope.collection or "sample-collection"
        row |= {"version_id": 0, "version_index": 0, "collection_name": collection, "metadata": {}}
        if scope.registry:
            row |= {"registry_name": scope.registry, "registry_collection_name": collection, "link_index": 0}
        if event.type == "artifact_alias_added":
            row["alias"] = "sample-alias"
        if event.type in ("artifact_tag_added", "artifact_tag_removed"):
            row["tag"] = "sample-tag"
        if event.type in ("collection_tag_added", "collection_tag_removed"):
            row |= {"version_id": None, "tag": "sample-tag"}
    return compose(row, settings)
