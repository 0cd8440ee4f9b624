"""The event kinds of a rule, one module each, joined in the discriminated union `Event`."""

from __future__ import annotations

from typing import Annotated, get_args

from pydantic import Field

from engine.rules.events.artifact_alias_added import ArtifactAliasAdded
from engine.rules.events.artifact_tag_added import ArtifactTagAdded
from engine.rules.events.artifact_tag_removed import ArtifactTagRemoved
from engine.rules.events.artifact_unlinked import ArtifactUnlinked
from engine.rules.events.artifact_version_created import ArtifactVersionCreated
from engine.rules.events.collection_tag import CollectionTagAdded, CollectionTagRemoved
from engine.rules.events.registry_version_linked import RegistryVersionLinked
from engine.rules.events.run_alert import RunAlert
from engine.rules.events.run_metric_change import RunMetricChange
from engine.rules.events.run_metric_nonfinite import RunMetricNonfinite
from engine.rules.events.run_metric_threshold import RunMetricThreshold
from engine.rules.events.run_metric_zscore import RunMetricZscore
from engine.rules.events.run_stalled import RunStalled
from engine.rules.events.run_state import RunState

EventModel = (
    RunMetricThreshold
    | RunMetricChange
    | RunMetricZscore
    | RunMetricNonfinite
    | RunState
    | RunStalled
    | ArtifactVersionCreated
    | ArtifactAliasAdded
    | ArtifactTagAdded
    | RegistryVersionLinked
    | RunAlert
    | ArtifactTagRemoved
    | ArtifactUnlinked
    | CollectionTagAdded
    | CollectionTagRemoved
)
Event = Annotated[EventModel, Field(discriminator="type")]
EVENT_CLASSES: tuple[type[EventModel], ...] = get_args(EventModel)

EVENT_TYPES: tuple[str, ...] = tuple(
    get_args(cls.model_fields["type"].annotation)[0] for cls in EVENT_CLASSES
)
RUN_EVENT_TYPES = frozenset(t for t, cls in zip(EVENT_TYPES, EVENT_CLASSES) if cls.is_run_event)
# Events about artifact collections: the only ones a scope's `collection`/`collection_regex` narrows.
ARTIFACT_EVENT_TYPES = frozenset(EVENT_TYPES) - RUN_EVENT_TYPES
METRIC_EVENT_TYPES = frozenset(
    {"run_metric_threshold", "run_metric_change", "run_metric_zscore", "run_metric_nonfinite"}
)

__all__ = [
    "ARTIFACT_EVENT_TYPES",
    "EVENT_CLASSES",
    "EVENT_TYPES",
    "METRIC_EVENT_TYPES",
    "RUN_EVENT_TYPES",
    "ArtifactAliasAdded",
    "ArtifactTagAdded",
    "ArtifactTagRemoved",
    "ArtifactUnlinked",
    "ArtifactVersionCreated",
    "CollectionTagAdded",
    "CollectionTagRemoved",
    "Event",
    "EventModel",
    "RegistryVersionLinked",
    "RunAlert",
    "RunMetricChange",
    "RunMetricNonfinite",
    "RunMetricThreshold",
    "RunMetricZscore",
    "RunStalled",
    "RunState",
]
