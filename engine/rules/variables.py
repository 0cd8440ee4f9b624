"""The template variables a rule's action may use: `${name}` inside payload, title, message
and header strings.

The rule language owns the names and which of them apply to each event; the loader checks
an action's templates against them here, and the actions package renders them
(`engine.actions.templates`) from the values of one trigger (`engine.actions.context`).
The README's variable table lists the same names (a test keeps them together).
"""

from __future__ import annotations

import re

from engine.rules.events import EVENT_CLASSES, EVENT_TYPES

VARIABLES: tuple[str, ...] = (
    "automation_name",
    "event_type",
    "event_author",
    "entity_name",
    "project_name",
    "run_id",
    "run_name",
    "run_status",
    "run_url",
    "metric_name",
    "metric_value",
    "metric_values",
    "metric_step",
    "metric_filter",
    "alias",
    "tag",
    "artifact_collection_name",
    "artifact_version",
    "artifact_version_string",
    "artifact_version_index",
    "registry_name",
    "alert_title",
    "alert_text",
    "alert_level",
    "trigger_id",
    "trigger_url",
    "fired_at",
    # a digest's delivery only (an action with `digest:`): the triggers it carries
    "digest",
    "digest_count",
    "ACCESS_TOKEN",
)
METADATA_PREFIX = "artifact_metadata."
PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")
# Resolved at send time from the action's `access_token`; never part of a context or payload.
SECRET_VARIABLES = frozenset({"ACCESS_TOKEN"})

# `metric_filter` is every rule's event in words (`alias ~ ^production$` for an alias rule),
# the text the evaluator records with each trigger.
COMMON = (
    "automation_name",
    "event_type",
    "event_author",
    "entity_name",
    "project_name",
    "metric_filter",
    "trigger_id",
    "trigger_url",
    "fired_at",
)
_RUN = ("run_id", "run_name", "run_status", "run_url")
_METRIC = ("metric_name", "metric_value", "metric_values", "metric_step")
_ARTIFACT = (
    "artifact_collection_name",
    "artifact_version",
    "artifact_version_string",
    "artifact_version_index",
)
_COLLECTION = ("artifact_collection_name", "registry_name", "tag")  # a collection's own tags

# Which variables apply to each event (keyed by the W&B name, i.e. `${event_type}`): they are
# always present in the default payload, even when empty, so that receivers see one shape.
APPLIES: dict[str, tuple[str, ...]] = {
    "RUN_METRIC": COMMON + _RUN + _METRIC,
    "RUN_METRIC_CHANGE": COMMON + _RUN + _METRIC,
    "RUN_METRIC_ZSCORE": COMMON + _RUN + _METRIC,
    "RUN_METRIC_NONFINITE": COMMON + _RUN + _METRIC,
    "RUN_STATE": COMMON + _RUN,
    # ${metric_value}: the seconds since the run's last metric value
    "RUN_STALLED": COMMON + _RUN + ("metric_value",),
    "CREATE_ARTIFACT": COMMON + _ARTIFACT,
    "ADD_ARTIFACT_ALIAS": COMMON + _ARTIFACT + ("alias",),
    "ADD_ARTIFACT_TAG": COMMON + _ARTIFACT + ("tag",),
    "LINK_ARTIFACT": COMMON + _ARTIFACT + ("registry_name",),
    "RUN_ALERT": COMMON + _RUN + ("alert_title", "alert_text", "alert_level"),
    "REMOVE_ARTIFACT_TAG": COMMON + _ARTIFACT + ("tag",),
    "UNLINK_ARTIFACT": COMMON + _ARTIFACT + ("registry_name",),
    "ADD_COLLECTION_TAG": COMMON + _COLLECTION,
    "REMOVE_COLLECTION_TAG": COMMON + _COLLECTION,
}

# Our event kinds (rules, triggers.event_type) -> W&B names (`${event_type}`).
WANDB_EVENT_TYPES: dict[str, str] = {
    kind: cls.wandb_name for kind, cls in zip(EVENT_TYPES, EVENT_CLASSES, strict=True)
}


def wandb_event_type(kind: str) -> str:
    """`${event_type}` of an event kind (the W&B name).

    >>> wandb_event_type("run_metric_threshold"), wandb_event_type("registry_version_linked")
    ('RUN_METRIC', 'LINK_ARTIFACT')
    """
    return WANDB_EVENT_TYPES.get(kind, kind.upper())


def is_known_variable(name: str, secret_names: frozenset[str] = frozenset()) -> bool:
    """True for the variables above, `artifact_metadata.<KEY>`, and the action's secret names."""
    if name in VARIABLES or name in secret_names:
        return True
    return name.startswith(METADATA_PREFIX) and len(name) > len(METADATA_PREFIX)


def variables_in(text: str) -> list[str]:
    """The `${...}` names used in a string, in order.

    >>> variables_in("run ${run_name} at ${metric_step}")
    ['run_name', 'metric_step']
    """
    return PLACEHOLDER.findall(text)
