"""An automation: a named rule joining a scope, an event, an optional run filter and an action."""

from __future__ import annotations

from typing import Any

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from engine.rules.actions import Action
from engine.rules.base import Loc, RuleModel, fail, sha256_json
from engine.rules.duration import DEFAULT_COOLDOWN, Cooldown
from engine.rules.events import ARTIFACT_EVENT_TYPES, Event
from engine.rules.fields import AutomationName, Text
from engine.rules.run_filter import RunFilter
from engine.rules.scope import Scope

# Links happen in registries; versions are created and tagged in projects.
REGISTRY_ONLY = frozenset({"registry_version_linked", "artifact_unlinked"})
PROJECT_ONLY = frozenset({"artifact_version_created", "artifact_tag_added", "artifact_tag_removed"})

# The parts of a rule that decide *what* fires; changing them restarts evaluation.
CONDITION_FIELDS = ("scope", "event", "run_filter")


class Automation(RuleModel):
    """One rule, as written in YAML or built in Python.

    >>> Automation.model_validate({
    ...     "name": "failed", "scope": {"project": "acme/vision"},
    ...     "event": {"type": "run_state", "states": ["crashed"]}, "action": {"type": "no_op"},
    ... }).event.states
    ('failed',)
    """

    name: AutomationName = Field(description="Unique name; 1–128 characters: letters, digits, space, - _ .")
    description: Text = Field("", description="Free text for people.")
    enabled: bool = Field(True, strict=True, description="Disabled automations are not evaluated.")
    scope: Scope = Field(description="The project or registry the rule watches.")
    event: Event = Field(description="What happens: a metric condition, a run state or an artifact event.")
    run_filter: RunFilter | None = Field(None, description="Run events only: which runs count.")
    cooldown: Cooldown = Field(
        DEFAULT_COOLDOWN,
        description="Run events only: after a firing, the same run stays silent this long (on the values' own time). "
        "Written like 90s, 1m, 24h, 7d, 1h30m; at least 1m.",
    )
    action: Action = Field(description="What to do when it fires.")

    @model_validator(mode="after")
    def _consistent(self) -> Automation:
        problems: list[tuple[Loc, str]] = []
        kind = self.event.type
        if self.event.is_run_event:
            if self.scope.registry is not None:
                problems.append(
                    (
                        ("scope", "registry"),
                        f"{kind} events need a project scope (scope: {{project: entity/project}}) "
                        "or an entity scope (scope: {entity: NAME})",
                    )
                )
        else:
            if kind in REGISTRY_ONLY and self.scope.registry is None:
                problems.append(
                    (
                        ("scope", "project" if self.scope.project is not None else "entity"),
                        f"{kind} needs a registry scope (scope: {{registry: NAME}})",
                    )
                )
            if kind in PROJECT_ONLY and self.scope.registry is not None:
                # versions are created and tagged in projects; a registry only links them
                problems.append(
                    (
                        ("scope", "registry"),
                        f"{kind} events happen in projects: use a project scope (scope: {{project: entity/project}})",
                    )
                )
            if self.run_filter is not None:
                problems.append(
                    (
                        ("run_filter",),
                        "run_filter applies to run events only (run_metric_threshold, run_metric_change, run_state)",
                    )
                )
            if "cooldown" in self.model_fields_set:
                problems.append((("cooldown",), "cooldown applies to run events only"))
            if self.action.type == "stop_run":
                problems.append(
                    (("action", "type"), f"stop_run stops a run: it needs a run event, and {kind} is not one")
                )
        if kind not in ARTIFACT_EVENT_TYPES:
            for field in ("collection", "collection_regex"):
                if getattr(self.scope, field) is not None:
                    problems.append((("scope", field), f"{field} narrows artifact events only, not {kind}"))
        fail("Automation", problems)
        return self

    @model_serializer(mode="wrap")
    def _drop_unused_cooldown(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # A cooldown given on an artifact event is an error, so the default must not be
        # written out either, or the dumped rule would not load again.
        data = handler(self)
        if not self.event.is_run_event:
            data.pop("cooldown", None)
        return data

    @property
    def is_run_event(self) -> bool:
        return self.event.is_run_event

    def to_json(self) -> dict[str, Any]:
        """The rule as JSON-ready data (what the database stores); loads back to an equal model."""
        return self.model_dump(mode="json")

    def rule_hash(self) -> str:
        """sha256 of the whole rule: any change, even to the description, changes it."""
        return sha256_json(self.to_json())

    def condition_hash(self) -> str:
        """sha256 of scope, event and run filter: a change restarts evaluation."""
        data = self.to_json()
        return sha256_json({field: data.get(field) for field in CONDITION_FIELDS})
