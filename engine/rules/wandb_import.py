"""W&B automations (JSON) → rules: what `engine rules import-wandb` converts.

Two forms are read, and nothing else of W&B is needed (the `wandb` package is not
imported: its classes read some saved filters as empty, and an empty filter would widen
a rule silently):

- the `wandb` SDK's `Automation` objects dumped to JSON (`automation.model_dump()`): the
  GraphQL trigger plus `scopeType`, `isRegistry`, `actionType`;
- the raw trigger objects of W&B's GraphQL API (`triggers { … }`, also with the API's own
  field names `triggeringCondition` and `triggeredAction`), anywhere inside a response.

In both, the event's `filter` is a JSON string, and the run filter and an artifact
event's inner filter are JSON strings inside it. Every automation becomes an `Automation`
model or a `Refusal` naming the automation and the field: nothing is dropped unseen, and
a condition that cannot be expressed exactly is refused rather than widened.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import ValidationError

from engine.names import CONTROL
from engine.rules.automation import Automation

REGISTRY_PREFIX = "wandb-registry-"  # a registry is a W&B project with this prefix
_NAME_CHARACTER = re.compile(r"[^A-Za-z0-9 ._-]+")
_ENV_CHARACTER = re.compile(r"[^A-Za-z0-9]+")
# PostgreSQL's ARE: a backslash before a non-alphanumeric character stands for that character.
_REGEX_SPECIAL = re.compile(r"([\\^$.|?*+()\[\]{}])")

_AGGREGATIONS = {"AVERAGE": "avg", "AVG": "avg", "MIN": "min", "MAX": "max"}
_OPERATORS = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<=", ">": ">", ">=": ">=", "<": "<", "<=": "<="}
_DIRECTIONS = {"INCREASE": "increase", "DECREASE": "decrease", "ANY": "any"}
_CHANGES = {"RELATIVE": "relative", "ABSOLUTE": "absolute"}
_SEVERITIES = {"INFO": "info", "WARN": "warn", "ERROR": "error"}
_STATES = {"RUNNING": "running", "FINISHED": "finished", "FAILED": "failed", "CRASHED": "failed"}
# W&B's event names → (rule event type, the artifact field its filter may test, required?)
_ARTIFACT_EVENTS = {
    "ADD_ARTIFACT_ALIAS": ("artifact_alias_added", "alias", True),
    "UPDATE_ARTIFACT_ALIAS": ("artifact_alias_added", "alias", True),
    "ADD_ARTIFACT_TAG": ("artifact_tag_added", "tag", True),
    "REMOVE_ARTIFACT_TAG": ("artifact_tag_removed", "tag", True),
    "ADD_COLLECTION_TAG": ("collection_tag_added", "tag", True),
    "REMOVE_COLLECTION_TAG": ("collection_tag_removed", "tag", True),
    "LINK_MODEL": ("registry_version_linked", "alias", False),
    "LINK_ARTIFACT": ("registry_version_linked", "alias", False),
    "UNLINK_ARTIFACT": ("artifact_unlinked", "alias", False),
    "CREATE_ARTIFACT": ("artifact_version_created", None, False),
}
_REGEX_FIELD = {"alias": "alias_regex", "tag": "tag_regex"}
_RUN_NAME_FIELDS = ("display_name", "name")
_RUN_USER_FIELDS = ("username", "user")


@dataclass(frozen=True)
class Refusal:
    """An automation (or a file) that was not converted, and why."""

    source: str
    automation: str | None
    field: str
    message: str

    def __str__(self) -> str:
        who = f"automation {self.automation!r}: " if self.automation is not None else ""
        where = f"{self.field}: " if self.field else ""
        return f"{self.source}: {who}{where}{self.message}"


@dataclass(frozen=True)
class Placeholder:
    """An `{env: NAME}` the converted rules use, and what the user must put in it."""

    env: str
    meaning: str


@dataclass(frozen=True)
class Converted:
    automation: Automation
    source: str
    wandb_name: str
    wandb_id: str | None
    notes: tuple[str, ...] = ()


@dataclass
class ImportResult:
    converted: list[Converted] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    placeholders: dict[str, Placeholder] = field(default_factory=dict)
    # webhook URLs that W&B's JSON does not carry: placeholder URL → what to put instead
    urls: dict[str, str] = field(default_factory=dict)


class _Refused(Exception):
    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field, self.message = field, message


def import_wandb(
    sources: Iterable[tuple[str, str]], entity: str | None = None, registry: str | None = None
) -> ImportResult:
    """Convert the W&B automations of each (source name, JSON text).

    `entity` names the entity of W&B projects (W&B's JSON names a project without it);
    `registry` the registry of registry collections whose JSON does not say it.

    >>> text = '''{"name": "failed", "enabled": true,
    ...   "scope": {"__typename": "Project", "id": "P1", "name": "vision"},
    ...   "event": {"eventType": "RUN_STATE",
    ...             "filter": "{\\\\"run_filter\\\\": \\\\"{}\\\\", \\\\"run_state_filter\\\\": {\\\\"states\\\\": [\\\\"FAILED\\\\"]}}"},
    ...   "action": {"__typename": "NoOpTriggeredAction", "noOp": true}}'''
    >>> result = import_wandb([("export.json", text)], entity="acme")
    >>> a = result.converted[0].automation
    >>> a.scope.project, a.event.states
    ('acme/vision', ('failed',))
    """
    result = ImportResult()
    used_names: set[str] = set()
    for source, text in sources:
        try:
            data = json.loads(text)
            triggers = list(_triggers(data))
        except json.JSONDecodeError as exc:
            result.refusals.append(
                Refusal(source, None, "", f"not JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})")
            )
            continue
        except RecursionError:
            result.refusals.append(Refusal(source, None, "", "JSON nested too deeply"))
            continue
        if not triggers:
            result.refusals.append(
                Refusal(source, None, "", "no W&B automation found (an object with name, event and action)")
            )
        for trigger in triggers:
            converter = _Converter(entity, registry)
            name = trigger.get("name")
            wandb_name = name if isinstance(name, str) else "?"
            try:
                automation = converter.convert(trigger, used_names)
            except _Refused as exc:
                result.refusals.append(Refusal(source, wandb_name, exc.field, exc.message))
                continue
            except RecursionError:
                result.refusals.append(Refusal(source, wandb_name, "event.filter", "nested too deeply"))
                continue
            used_names.add(automation.name)
            result.placeholders.update(converter.placeholders)
            result.urls.update(converter.urls)
            wandb_id = trigger.get("id") if isinstance(trigger.get("id"), str) else None
            result.converted.append(
                Converted(automation, source, wandb_name, wandb_id, tuple(converter.notes))
            )
    return result


def rule_yaml(converted: Converted) -> str:
    """One converted rule as a YAML document: where it came from (comments), then the rule
    model dumped (defaults left out)."""
    origin = f"W&B automation {converted.wandb_name!r}" + (
        f" (id {converted.wandb_id})" if converted.wandb_id else ""
    )
    lines = [f"# imported by `engine rules import-wandb` from {origin} in {converted.source}"]
    lines += [f"# note: {note}" for note in converted.notes]
    # a line break inside a name from the JSON would end the comment and start YAML
    lines = [CONTROL.sub(" ", line) for line in lines]
    data = converted.automation.model_dump(mode="json", exclude_defaults=True)
    return "\n".join(lines) + "\n" + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=110)


def file_name(name: str) -> str:
    """A rule file name for an automation name: `Loss Spike` → `loss-spike.yaml`."""
    return (re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-.") or "automation") + ".yaml"


def _triggers(data: Any) -> Iterator[dict[str, Any]]:
    """Every trigger object in a JSON document: a list, one object, or a GraphQL response."""
    if isinstance(data, dict):
        has_event = "event" in data or "triggeringCondition" in data
        has_action = "action" in data or "triggeredAction" in data
        if "name" in data and has_event and has_action:
            yield data
            return
        for value in data.values():
            yield from _triggers(value)
    elif isinstance(data, list):
        for item in data:
            yield from _triggers(item)


def _decoded(value: Any, field: str) -> Any:
    """A filter that W&B stores as a JSON string (or already decoded)."""
    if isinstance(value, (str, bytes)):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise _Refused(field, f"is not valid JSON ({exc.msg})") from None
    return value


def regex_literal(text: str) -> str:
    """A PostgreSQL regular expression matching `text` literally (unanchored).

    >>> regex_literal("base+line (v1)")
    'base\\\\+line \\\\(v1\\\\)'
    """
    return _REGEX_SPECIAL.sub(r"\\\1", text)


def _env_part(text: str) -> str:
    return _ENV_CHARACTER.sub("_", text).strip("_").upper() or "X"


def _short_id(ident: str) -> str:
    """A GraphQL id is base64 of `Type:number`: the number names it in env names and hosts.

    >>> _short_id("SW50ZWdyYXRpb246MTE=")
    '11'
    """
    try:
        kind, _, number = base64.b64decode(ident, validate=True).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return _env_part(ident)
    return number if kind and number.isdigit() else _env_part(ident)


class _Converter:
    """One trigger → one Automation (or _Refused naming the field)."""

    def __init__(self, entity: str | None, registry: str | None):
        self.entity, self.registry = entity, registry
        self.placeholders: dict[str, Placeholder] = {}
        self.urls: dict[str, str] = {}
        self.notes: list[str] = []

    def convert(self, trigger: dict[str, Any], used_names: set[str]) -> Automation:
        event = trigger.get("event", trigger.get("triggeringCondition"))
        action = trigger.get("action", trigger.get("triggeredAction"))
        if not isinstance(event, dict):
            raise _Refused("event", "must be an object with eventType and filter")
        if not isinstance(action, dict):
            raise _Refused("action", "must be an object")
        rule: dict[str, Any] = {
            "name": self._name(trigger.get("name"), used_names),
            "description": trigger.get("description") or "",
            "enabled": trigger.get("enabled") is not False,
        }
        event_type = event.get("eventType", event.get("event_type"))
        if not isinstance(event_type, str):
            raise _Refused("event.eventType", "missing")
        event_type = event_type.upper()
        raw = _decoded(event.get("filter"), "event.filter")
        if event_type in ("RUN_METRIC", "RUN_METRIC_THRESHOLD", "RUN_METRIC_CHANGE", "RUN_METRIC_ZSCORE"):
            rule["event"] = self._metric(raw)
            rule["run_filter"] = self._run_filter(raw)
        elif event_type == "RUN_STATE":
            rule["event"] = self._run_state(raw)
            rule["run_filter"] = self._run_filter(raw)
        elif event_type in _ARTIFACT_EVENTS:
            rule["event"] = self._artifact_event(event_type, raw)
        else:
            raise _Refused(
                "event.eventType",
                f"{event_type} has no counterpart here (the engine watches runs, their metrics and artifacts)",
            )
        rule["scope"] = self._scope(trigger.get("scope"), rule["event"]["type"])
        rule["action"] = self._action(action)
        if rule.get("run_filter", ...) is None:
            del rule["run_filter"]
        try:
            return Automation.model_validate(rule)
        except ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            tags = (rule["event"]["type"], rule["action"]["type"])  # pydantic's discriminated-union steps
            where = ".".join(str(part) for part in error["loc"] if part not in tags)
            raise _Refused(where, f"converted, the rule would not be valid: {error['msg']}") from None

    # -- the automation's name ----------------------------------------------------------
    def _name(self, value: Any, used: set[str]) -> str:
        if not isinstance(value, str) or not value.strip():
            raise _Refused("name", "missing")
        name = _NAME_CHARACTER.sub("-", value).strip()[:128].strip() or "wandb-automation"
        candidate, n = name, 2
        while candidate in used:
            suffix = f"-{n}"
            candidate, n = name[: 128 - len(suffix)] + suffix, n + 1
        if candidate != value:
            self.notes.append(f"renamed from {value!r} (names here are 1–128 letters, digits, space, - _ .)")
        return candidate

    # -- events ----------------------------------------------------------------------------
    def _metric(self, raw: Any) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise _Refused("event.filter", "must be an object with run_metric_filter")
        choice = raw.get("run_metric_filter")
        if choice is None and raw.get("metric_filter") is not None:  # the legacy threshold form
            choice = {"threshold_filter": _decoded(raw["metric_filter"], "event.filter.metric_filter")}
        if not isinstance(choice, dict):
            raise _Refused("event.filter.run_metric_filter", "missing")
        given = {key: value for key, value in choice.items() if value is not None and key.endswith("_filter")}
        if len(given) != 1:
            raise _Refused(
                "event.filter.run_metric_filter",
                "must hold exactly one of threshold_filter, change_filter, zscore_filter",
            )
        ((kind, spec),) = given.items()
        where = f"event.filter.run_metric_filter.{kind}"
        if not isinstance(spec, dict):
            raise _Refused(where, "must be an object")
        metric = spec.get("name")
        if kind == "threshold_filter":
            cmp = spec.get("cmp_op")
            if cmp in ("$eq", "$ne", "==", "!="):
                raise _Refused(
                    f"{where}.cmp_op",
                    f"{cmp} (equal / not equal) is a comparison W&B's own SDK cannot read, so what W&B "
                    "does with it is not documented; not converted. For exact (in)equality of the "
                    'aggregate write the rule by hand with operator: "==" or "!="',
                )
            if cmp not in _OPERATORS:
                raise _Refused(
                    f"{where}.cmp_op", f"unknown comparison {cmp!r}: expected $gt, $gte, $lt, $lte"
                )
            aggregation, window = self._aggregation(spec, where, "window_size")
            return {
                "type": "run_metric_threshold",
                "metric": metric,
                "window": window,
                "aggregation": aggregation,
                "operator": _OPERATORS[cmp],
                "threshold": _number(spec.get("threshold"), f"{where}.threshold"),
            }
        if kind == "change_filter":
            aggregation, current = self._aggregation(spec, where, "current_window_size")
            prior = 1
            if spec.get("agg_op") is not None:
                prior = spec.get("prior_window_size") or current  # W&B's default: the current size
            return {
                "type": "run_metric_change",
                "metric": metric,
                "current_window": current,
                "prior_window": prior,
                "aggregation": aggregation,
                "change": _lookup(_CHANGES, spec.get("change_type"), f"{where}.change_type"),
                "direction": _lookup(_DIRECTIONS, spec.get("change_dir"), f"{where}.change_dir"),
                "amount": _number(spec.get("change_amount"), f"{where}.change_amount"),
            }
        if kind == "zscore_filter":
            self.notes.append(
                "z-score: W&B fires when z reaches the threshold (≥); this rule fires when z exceeds it (>), "
                "which differs only for a z exactly on the threshold"
            )
            return {
                "type": "run_metric_zscore",
                "metric": metric,
                "window": spec.get("window_size", 30),
                "threshold": _number(spec.get("threshold", 3.0), f"{where}.threshold"),
                "direction": _lookup(_DIRECTIONS, spec.get("change_dir", "ANY"), f"{where}.change_dir"),
            }
        raise _Refused(where, "is not a metric condition this engine knows (threshold, change, z-score)")

    def _aggregation(self, spec: dict[str, Any], where: str, window_key: str) -> tuple[str, Any]:
        """(aggregation, window): without an aggregation W&B compares single values and
        ignores the window sizes, which is a window of one here."""
        agg = spec.get("agg_op")
        if agg is None:
            return "avg", 1
        return _lookup(_AGGREGATIONS, agg, f"{where}.agg_op"), spec.get(window_key, 1)

    def _run_state(self, raw: Any) -> dict[str, Any]:
        where = "event.filter.run_state_filter.states"
        spec = raw.get("run_state_filter") if isinstance(raw, dict) else None
        states = spec.get("states") if isinstance(spec, dict) else None
        if isinstance(states, str):
            states = [states]
        if not isinstance(states, list) or not states:
            raise _Refused(where, "must be a non-empty list of run states")
        converted = []
        for state in states:
            if isinstance(state, str) and state.upper() == "KILLED":
                raise _Refused(where, "KILLED: killed runs never trigger an automation (in W&B neither)")
            converted.append(_lookup(_STATES, state, where))
        return {"type": "run_state", "states": converted}

    def _run_filter(self, raw: dict[str, Any]) -> dict[str, Any] | None:
        where = "event.filter.run_filter"
        conditions = _conjunction(_decoded(raw.get("run_filter", {}), where), where)
        found: dict[str, Any] = {}
        for field_name, test in conditions:
            if field_name in _RUN_NAME_FIELDS:
                key, value = "name_regex", _as_regex(test, f"{where}.{field_name}")
            elif field_name in _RUN_USER_FIELDS:
                key, value = "user", _as_equal(test, f"{where}.{field_name}")
            else:
                raise _Refused(
                    f"{where}.{field_name}",
                    "run filters here test the run's user and display name only; a condition on "
                    f"{field_name!r} cannot be kept",
                )
            if key in found:
                raise _Refused(f"{where}.{field_name}", "two conditions on the same field cannot be combined")
            found[key] = value
        return found or None

    def _artifact_event(self, event_type: str, raw: Any) -> dict[str, Any]:
        rule_type, tested, required = _ARTIFACT_EVENTS[event_type]
        where = "event.filter"
        if isinstance(raw, dict) and set(raw) == {"filter"}:  # saved filters are wrapped once more
            raw, where = _decoded(raw["filter"], "event.filter.filter"), "event.filter.filter"
        event: dict[str, Any] = {"type": rule_type}
        if event_type == "UPDATE_ARTIFACT_ALIAS":
            self.notes.append("UPDATE_ARTIFACT_ALIAS (W&B's legacy alias event) became artifact_alias_added")
        patterns: list[str] = []
        for branch in _disjunction(raw, where):
            for field_name, test in branch:
                if field_name != tested:
                    raise _Refused(
                        f"{where}.{field_name}",
                        f"{event_type} can be narrowed here by {tested or 'nothing'}, not by {field_name!r}",
                    )
                patterns.append(_as_regex(test, f"{where}.{field_name}"))
            if len(branch) > 1:
                raise _Refused(where, f"several conditions on {tested} at once cannot be combined")
        if tested is None:
            return event
        if len(patterns) > 1:
            event[_REGEX_FIELD[tested]] = "|".join(f"({p})" for p in patterns)
        elif patterns:
            event[_REGEX_FIELD[tested]] = patterns[0]
        elif required:
            event[_REGEX_FIELD[tested]] = ".*"  # no filter: every alias (tag)
        return event

    # -- scope -----------------------------------------------------------------------------
    def _scope(self, scope: Any, event_type: str) -> dict[str, Any]:
        if not isinstance(scope, dict):
            raise _Refused("scope", "must be an object (a project, registry, collection or entity)")
        kind = scope.get("__typename") or {"ENTITY": "Entity", "PROJECT": "Project"}.get(
            str(scope.get("scopeType")), ""
        )
        name = scope.get("name")
        if not isinstance(name, str) or not name:
            raise _Refused("scope.name", "missing")
        if kind == "Entity":
            return {"entity": name}
        if kind == "Project":
            if name.startswith(REGISTRY_PREFIX) or scope.get("isRegistry") is True:
                return {"registry": name.removeprefix(REGISTRY_PREFIX)}
            return {"project": f"{self._entity_of(scope, 'scope.name', name)}/{name}"}
        if kind == "ArtifactSequence":  # a collection of a project
            project = scope.get("project")
            if isinstance(project, dict) and isinstance(project.get("name"), str):
                if project["name"].startswith(REGISTRY_PREFIX):
                    return {"registry": project["name"].removeprefix(REGISTRY_PREFIX), "collection": name}
                entity = self._entity_of(project, "scope.project.name", project["name"])
                return {"project": f"{entity}/{project['name']}", "collection": name}
            entity = self._entity_of(scope, "scope.name", name)
            self.notes.append(
                f"W&B's JSON does not say which project collection {name!r} is in: the rule watches "
                f"collection {name!r} in every project of {entity}; narrow scope to a project if others have one"
            )
            return {"entity": entity, "collection": name}
        if kind == "ArtifactPortfolio":  # a collection of a registry
            project = scope.get("project")
            if isinstance(project, dict) and str(project.get("name", "")).startswith(REGISTRY_PREFIX):
                return {"registry": project["name"].removeprefix(REGISTRY_PREFIX), "collection": name}
            if self.registry is None:
                raise _Refused(
                    "scope",
                    f"registry collection {name!r}: W&B's JSON does not say which registry it is in; "
                    "pass --registry NAME",
                )
            return {"registry": self.registry, "collection": name}
        raise _Refused("scope.__typename", f"unknown scope kind {kind!r}")

    def _entity_of(self, scope: dict[str, Any], where: str, name: str) -> str:
        """The entity a scope names itself, or the one given with --entity."""
        own = scope.get("entityName")
        if isinstance(scope.get("entity"), dict):
            own = scope["entity"].get("name", own)
        if isinstance(own, str) and own:
            return own
        if self.entity is None:
            raise _Refused(where, f"W&B names project {name!r} without its entity: pass --entity E")
        return self.entity

    # -- actions ---------------------------------------------------------------------------
    def _action(self, action: dict[str, Any]) -> dict[str, Any]:
        kind = action.get("__typename") or action.get("actionType")
        if kind in ("NoOpTriggeredAction", "NO_OP"):
            return {"type": "no_op"}
        if kind in ("NotificationTriggeredAction", "NOTIFICATION"):
            return self._slack(action)
        if kind in ("GenericWebhookTriggeredAction", "GENERIC_WEBHOOK"):
            return self._webhook(action)
        if kind in ("ARIATriggeredAction", "ARIA"):
            raise _Refused(
                "action.prompt", "an ARIA prompt (W&B's agent) has no counterpart here: no agent runs prompts"
            )
        if kind in ("QueueJobTriggeredAction", "QUEUE_JOB"):
            raise _Refused(
                "action.template",
                "a Launch job: the engine runs no jobs; a webhook to your job runner can start one",
            )
        if kind in ("PushNotificationTriggeredAction", "PUSH_NOTIFICATION"):
            raise _Refused("action", "W&B's push notifications have no counterpart here")
        raise _Refused("action.__typename", f"unknown action {kind!r}")

    def _integration(self, action: dict[str, Any]) -> dict[str, Any]:
        integration = action.get("integration")
        if isinstance(integration, dict):
            return integration
        if isinstance(action.get("integrationID"), str):
            return {"id": action["integrationID"]}
        if isinstance(action.get("integration_id"), str):
            return {"id": action["integration_id"]}
        raise _Refused("action.integration", "missing")

    def _placeholder(self, env: str, meaning: str) -> dict[str, str]:
        self.placeholders[env] = Placeholder(env, meaning)
        return {"env": env}

    def _slack(self, action: dict[str, Any]) -> dict[str, Any]:
        integration = self._integration(action)
        ident = str(integration.get("id", ""))
        channel, team = integration.get("channelName"), integration.get("teamName")
        rule: dict[str, Any] = {"type": "slack"}
        if isinstance(channel, str) and channel:
            env = "SLACK_TOKEN" + (f"_{_env_part(team)}" if isinstance(team, str) and team else "")
            where = f" of Slack workspace {team}" if team else ""
            rule["token"] = self._placeholder(env, f"a Slack bot token{where} (W&B integration {ident})")
            rule["channel"] = channel if channel.startswith("#") else f"#{channel}"
        else:
            env = f"SLACK_WEBHOOK_{_short_id(ident)}"
            rule["webhook_url"] = self._placeholder(
                env, f"the Slack incoming-webhook URL for W&B Slack integration {ident}"
            )
        for key in ("title", "message"):
            if action.get(key):
                rule[key] = action[key]
        severity = action.get("severity")
        if severity is not None:
            rule["severity"] = _lookup(_SEVERITIES, severity, "action.severity")
        return rule

    def _webhook(self, action: dict[str, Any]) -> dict[str, Any]:
        integration = self._integration(action)
        ident = str(integration.get("id", ""))
        given = integration.get("name")
        label = given if isinstance(given, str) and given else _short_id(ident)
        rule: dict[str, Any] = {"type": "webhook"}
        url = integration.get("urlEndpoint")
        if isinstance(url, str) and url:
            rule["url"] = url
        else:
            # The SDK's JSON keeps only the integration's id. A `.invalid` host never
            # resolves (RFC 6761): until it is replaced, deliveries fail instead of going astray.
            host = _short_id(ident).lower().replace("_", "-")
            rule["url"] = f"https://wandb-webhook-{host}.invalid/"
            self.urls[rule["url"]] = f"the URL of W&B webhook integration {label}"
            self.notes.append(
                f"action.url: W&B's JSON does not carry the URL of webhook integration {label}: "
                "replace the placeholder url"
            )
        payload = _decoded(
            action.get("requestPayload", action.get("request_payload")), "action.requestPayload"
        )
        if payload is not None:
            rule["payload"] = payload
            if "${ACCESS_TOKEN}" in json.dumps(payload):
                env = f"WANDB_WEBHOOK_{_env_part(label)}_TOKEN"
                rule["access_token"] = self._placeholder(
                    env, f"the access token of W&B webhook integration {label} (${{ACCESS_TOKEN}})"
                )
        return rule


def _lookup(table: dict[str, str], value: Any, where: str) -> str:
    if isinstance(value, str) and value.upper() in table:
        return table[value.upper()]
    raise _Refused(where, f"unknown value {value!r}: expected one of {', '.join(sorted(set(table)))}")


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Refused(where, f"must be a number, not {value!r}")
    return float(value)


Condition = tuple[str, Any]


def _disjunction(raw: Any, where: str) -> list[list[Condition]]:
    """W&B's artifact filter `{"$or": [{"$and": [...]}, ...]}` as branches of conditions."""
    if raw is None or raw == {}:
        return []
    if isinstance(raw, dict) and set(raw) == {"$or"} and isinstance(raw["$or"], list):
        branches = [_conjunction(branch, where) for branch in raw["$or"]]
        return [branch for branch in branches if branch]
    branch = _conjunction(raw, where)
    return [branch] if branch else []


def _conjunction(raw: Any, where: str) -> list[Condition]:
    """A filter that is a plain AND of field conditions, as (field, test) pairs."""
    if raw is None or raw == {}:
        return []
    if not isinstance(raw, dict):
        raise _Refused(where, "must be a filter object")
    if set(raw) == {"$and"} and isinstance(raw["$and"], list):
        found: list[Condition] = []
        for part in raw["$and"]:
            found += _conjunction(part, where)
        return found
    if set(raw) == {"$or"} and isinstance(raw["$or"], list) and len(raw["$or"]) <= 1:
        return _conjunction(raw["$or"][0], where) if raw["$or"] else []
    found = []
    for key, test in raw.items():
        if key.startswith("$"):
            raise _Refused(where, f"{key} cannot be converted (only a plain AND of conditions can)")
        found.append((key, test))
    return found


def _as_regex(test: Any, where: str) -> str:
    """A condition on a text field as an unanchored PostgreSQL regex."""
    if not isinstance(test, dict):
        test = {"$eq": test}
    if len(test) != 1:
        raise _Refused(where, "several operators on one field cannot be combined")
    ((op, value),) = test.items()
    if op == "$regex" and isinstance(value, str):
        return value
    if op == "$eq" and isinstance(value, str):
        return f"^{regex_literal(value)}$"
    if op == "$contains" and isinstance(value, str):
        return regex_literal(value)
    if op == "$in" and isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return "^(" + "|".join(regex_literal(v) for v in value) + ")$"
    raise _Refused(where, f"{op} {value!r} cannot be converted (only $eq, $in, $regex, $contains on text)")


def _as_equal(test: Any, where: str) -> str:
    if not isinstance(test, dict):
        test = {"$eq": test}
    if set(test) == {"$eq"} and isinstance(test["$eq"], str):
        return str(test["$eq"])
    if set(test) == {"$in"} and isinstance(test["$in"], list) and len(test["$in"]) == 1:
        return str(test["$in"][0])
    raise _Refused(where, "the user can only be compared for equality with one name")


__all__ = [
    "Converted",
    "ImportResult",
    "Placeholder",
    "Refusal",
    "file_name",
    "import_wandb",
    "regex_literal",
    "rule_yaml",
]
