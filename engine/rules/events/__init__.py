"""The event kinds of a rule, one module each, joined in the discriminated union `Event`."""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from engine.rules.events.artifact_alias_added import ArtifactAliasAdded
from engine.rules.events.artifact_tag_added import ArtifactTagAdded
from engine.rules.events.artifact_version_created import ArtifactVersionCreated
from engine.rules.events.registry_version_linked import RegistryVersionLinked
from engine.rules.events.run_metric_change import RunMetricChange
from engine.rules.events.run_metric_threshold import RunMetricThreshold
from engine.rules.events.run_state import RunState

EVENT_CLASSES = (
    RunMetricThreshold,
    RunMetricChange,
    RunState,
    ArtifactVersionCreated,
    ArtifactAliasAdded,
    ArtifactTagAdded,
    RegistryVersionLinked,
)
Event = Annotated[Union[EVENT_CLASSES], Field(discriminator="type")]  # noqa: UP007 - a tuple needs Union[]

EVENT_TYPES: tuple[str, ...] = tuple(cls.model_fields["type"].annotation.__args__[0] for cls in EVENT_CLASSES)
RUN_EVENT_TYPES = frozenset(t for t, cls in zip(EVENT_TYPES, EVENT_CLASSES) if cls.is_run_event)
# Events about artifact collections: the only ones a scope's `collection`/`collection_regex` narrows.
ARTIFACT_EVENT_TYPES = frozenset(EVENT_TYPES) - RUN_EVENT_TYPES
METRIC_EVENT_TYPES = frozenset({"run_metric_threshold", "run_metric_change"})

__all__ = [
    "ARTIFACT_EVENT_TYPES",
    "EVENT_CLASSES",
    "EVENT_TYPES",
    "METRIC_EVENT_TYPES",
    "RUN_EVENT_TYPES",
    "ArtifactAliasAdded",
    "ArtifactTagAdded",
    "ArtifactVersionCreated",
    "Event",
    "RegistryVersionLinked",
    "RunMetricChange",
    "RunMetricThreshold",
    "RunState",
]
