"""Template variables of actions (SPEC section 3): `${name}` inside payload, title, message
and header strings. The rule loader checks names against `is_known_variable`; rendering
lives here too so the two cannot drift apart."""

from __future__ import annotations

import re

# Keep in sync with SPEC section 3 and the README's variable table.
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
    "trigger_id",
    "fired_at",
    "ACCESS_TOKEN",
)
METADATA_PREFIX = "artifact_metadata."
PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")


def is_known_variable(name: str, secret_names: frozenset[str] = frozenset()) -> bool:
    """True for the SPEC's variables, `artifact_metadata.<KEY>`, and the action's secret names."""
    if name in VARIABLES or name in secret_names:
        return True
    return name.startswith(METADATA_PREFIX) and len(name) > len(METADATA_PREFIX)


def variables_in(text: str) -> list[str]:
    """The `${...}` names used in a string, in order."""
    return PLACEHOLDER.findall(text)
