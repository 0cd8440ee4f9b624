"""The rule kinds, in one registry: what differs from one event class to the next.

Every place that treats rules differently by kind (the compilers, the evaluator) asks
`kind_of(automation)` instead of testing classes. A metric kind says what its condition is
in the terms of a group query (`MetricCondition`); an event kind says where its events are
matched (the scope) and what else they must satisfy. A new event class needs one entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from sqlglot import exp

from engine.compiler.base import col, frag, matches, param, run_scope
from engine.rules import (
    ArtifactAliasAdded,
    ArtifactTagAdded,
    ArtifactTagRemoved,
    ArtifactUnlinked,
    ArtifactVersionCreated,
    Automation,
    CollectionTagAdded,
    CollectionTagRemoved,
    RegistryVersionLinked,
    RunAlert,
    RunMetricChange,
    RunMetricNonfinite,
    RunMetricThreshold,
    RunMetricZscore,
    RunStalled,
    RunState,
)
from engine.rules.events import EventModel

E = TypeVar("E", bound=EventModel)


@dataclass(frozen=True)
class MetricCondition:
    """A metric rule in the terms of its group's query: the aggregate of the last `size`
    finite values (d), or its change from the `prior` values before them (prior > 0;
    relative: divided by |prior aggregate|); `direction` turns d into what is compared
    (`value`: d, `decrease`: -d, `any`: |d|) with `bound` by `operator`."""

    aggregation: str
    size: int
    prior: int
    relative: bool
    direction: Literal["value", "decrease", "any"]
    operator: str
    bound: float
    # a z-score rule: `size` 1 (the value itself), `prior` its reference window, d is z
    zscore: bool = False

    @property
    def span(self) -> int:
        """How many values the windows cover."""
        return self.size + self.prior


def _threshold(event: RunMetricThreshold) -> MetricCondition:
    return MetricCondition(
        event.aggregation, event.window, 0, False, "value", event.operator, event.threshold
    )


def _change(event: RunMetricChange) -> MetricCondition:
    directions: dict[str, Literal["value", "decrease", "any"]] = {
        "increase": "value",
        "decrease": "decrease",
        "any": "any",
    }
    direction = directions[event.direction]
    return MetricCondition(
        event.aggregation,
        event.current_window,
        event.prior_window,
        event.change == "relative",
        direction,
        ">=",
        event.amount,
    )


def _zscore(event: RunMetricZscore) -> MetricCondition:
    directions: dict[str, Literal["value", "decrease", "any"]] = {
        "increase": "value",
        "decrease": "decrease",
        "any": "any",
    }
    return MetricCondition(
        "zscore", 1, event.window, False, directions[event.direction], ">", event.threshold, zscore=True
    )


Scope = Callable[[exp.Select, Automation, dict[str, Any]], exp.Select]


def _details(key: str) -> exp.Expression:
    """`e.details ->> '<key>'` (the event's details as text)."""
    return exp.JSONExtractScalar(this=col("details", "e"), expression=exp.Literal.string(key))


def _states(select: exp.Select, event: RunState, params: dict[str, Any]) -> exp.Select:
    # `killed` can never be among the states (the model refuses it), so it never fires.
    params["states"] = list(event.states)
    return select.where(_details("to").eq(exp.Any(this=exp.paren(exp.cast(param("states"), "TEXT[]")))))


def _collection_type(select: exp.Select, event: ArtifactVersionCreated, params: dict[str, Any]) -> exp.Select:
    if event.collection_type is None:
        return select
    params["collection_type"] = event.collection_type
    return select.where(_details("collection_type").eq(param("collection_type")))


def _alias(select: exp.Select, event: ArtifactAliasAdded, params: dict[str, Any]) -> exp.Select:
    params["alias_regex"] = event.alias_regex
    return select.where(matches(_details("alias"), param("alias_regex")))


def _tag(
    select: exp.Select,
    event: ArtifactTagAdded | ArtifactTagRemoved | CollectionTagAdded | CollectionTagRemoved,
    params: dict[str, Any],
) -> exp.Select:
    params["tag_regex"] = event.tag_regex
    return select.where(matches(_details("tag"), param("tag_regex")))


def _linked_alias(select: exp.Select, event: RegistryVersionLinked, params: dict[str, Any]) -> exp.Select:
    if event.alias_regex is None:
        return select
    # the link matches when an alias of the linked version in that registry collection matches
    params["alias_regex"] = event.alias_regex
    aliases = (
        exp.select(exp.Literal.number(1))
        .from_(exp.to_table("registry_aliases").as_("ra"))
        .where(col("link_id", "ra").eq(col("link_id", "e")))
        .where(matches(col("alias", "ra"), param("alias_regex")))
    )
    return select.where(exp.Exists(this=aliases))


def _alert(select: exp.Select, event: RunAlert, params: dict[str, Any]) -> exp.Select:
    if event.title_regex is not None:
        params["title_regex"] = event.title_regex
        select = select.where(matches(_details("title"), param("title_regex")))
    if event.levels is not None:
        params["levels"] = list(event.levels)
        select = select.where(
            _details("level").eq(exp.Any(this=exp.paren(exp.cast(param("levels"), "TEXT[]"))))
        )
    return select


def _unlinked_alias(select: exp.Select, event: ArtifactUnlinked, params: dict[str, Any]) -> exp.Select:
    if event.alias_regex is None:
        return select
    # the aliases the link held when it was unlinked (they went with it): in the event
    params["alias_regex"] = event.alias_regex
    return select.where(
        frag(
            "EXISTS (SELECT 1 FROM JSONB_ARRAY_ELEMENTS_TEXT(e.details -> 'aliases') AS held(alias) "
            "WHERE held.alias ~ %(alias_regex)s)"
        )
    )


def _run_scope(select: exp.Select, automation: Automation, params: dict[str, Any]) -> exp.Select:
    return run_scope(select, automation, params, "e")


def _collection_scope(select: exp.Select, automation: Automation, params: dict[str, Any]) -> exp.Select:
    """A project's own collections (not registry-side alias moves), an entity's projects',
    or a registry's."""
    scope = automation.scope
    if scope.registry is None:
        select = select.join(
            exp.to_table("projects").as_("pr"), on=col("id", "pr").eq(col("project_id", "e"))
        ).where(col("entity", "pr").eq(param("entity")))
        if scope.project is not None:
            entity, project = scope.project.split("/", 1)
            params["entity"], params["project"] = entity, project
            select = select.where(col("name", "pr").eq(param("project")))
        else:
            params["entity"] = scope.entity
        select = select.where(col("registry_id", "e").is_(exp.null()))
        if scope.collection is not None or scope.collection_regex is not None:
            select = select.join(
                exp.to_table("artifact_collections").as_("ac"),
                on=col("id", "ac").eq(col("collection_id", "e")),
            )
        if scope.collection is not None:
            params["collection"] = scope.collection
            select = select.where(col("name", "ac").eq(param("collection")))
        if scope.collection_regex is not None:
            params["collection_regex"] = scope.collection_regex
            select = select.where(matches(col("name", "ac"), param("collection_regex")))
        return select
    params["registry"] = scope.registry
    select = select.join(exp.to_table("registries").as_("rg"), on=col("id", "rg").eq(col("registry_id", "e")))
    select = select.where(col("name", "rg").eq(param("registry")))
    if scope.collection is not None:
        params["collection"] = scope.collection
        select = select.join(
            exp.to_table("registry_collections").as_("rc"),
            on=col("id", "rc").eq(col("registry_collection_id", "e")),
        ).where(col("name", "rc").eq(param("collection")))
    return select


@dataclass(frozen=True)
class MetricKind(Generic[E]):
    condition: Callable[[E], MetricCondition]


@dataclass(frozen=True)
class PointKind:
    """A rule on single metric values recorded apart from the series (non-finite values:
    `nonfinite_points`), one query each (compiler.nonfinite)."""


@dataclass(frozen=True)
class ClockKind:
    """A rule driven by time, evaluated every tick whatever was written (compiler.stalled)."""


@dataclass(frozen=True)
class EventKind(Generic[E]):
    where: Callable[[exp.Select, E, dict[str, Any]], exp.Select]  # the kind's own conditions on `events AS e`
    scope: Scope


Kind = MetricKind[Any] | EventKind[Any] | PointKind | ClockKind
# Each entry is checked against its own event class; the registry holds them all, so its
# values are of any event class (kind_of looks them up by the event's class).
KINDS: dict[type[EventModel], Kind] = {
    RunMetricThreshold: MetricKind(_threshold),
    RunMetricChange: MetricKind(_change),
    RunMetricZscore: MetricKind(_zscore),
    RunMetricNonfinite: PointKind(),
    RunStalled: ClockKind(),
    RunState: EventKind(_states, _run_scope),
    ArtifactVersionCreated: EventKind(_collection_type, _collection_scope),
    ArtifactAliasAdded: EventKind(_alias, _collection_scope),
    ArtifactTagAdded: EventKind(_tag, _collection_scope),
    RegistryVersionLinked: EventKind(_linked_alias, _collection_scope),
    RunAlert: EventKind(_alert, _run_scope),
    ArtifactTagRemoved: EventKind(_tag, _collection_scope),
    ArtifactUnlinked: EventKind(_unlinked_alias, _collection_scope),
    CollectionTagAdded: EventKind(_tag, _collection_scope),
    CollectionTagRemoved: EventKind(_tag, _collection_scope),
}


def kind_of(automation: Automation) -> Kind:
    return KINDS[type(automation.event)]


def is_metric_rule(automation: Automation) -> bool:
    return isinstance(kind_of(automation), MetricKind)


def metric_condition(automation: Automation) -> MetricCondition:
    kind = kind_of(automation)
    assert isinstance(kind, MetricKind), f"{automation.event} is not a metric rule"
    return kind.condition(automation.event)


def activity_key(automation: Automation) -> tuple[str, str]:
    """What new data can concern an automation: ("metric", name), ("nonfinite", name) or
    ("event", type); ("clock", type) for a rule driven by time (no data concerns it)."""
    event: Any = automation.event
    if isinstance(kind_of(automation), ClockKind):
        return ("clock", event.type)
    if isinstance(kind_of(automation), PointKind):
        return ("nonfinite", event.metric)
    return ("metric", event.metric) if is_metric_rule(automation) else ("event", event.type)
