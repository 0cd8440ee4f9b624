"""The rules for names that the SDK, the rule language and the compiler share: the parts of
`entity/project`, metric keys, and the `system/` namespace of system metrics.

The database holds the same patterns in CHECK constraints (engine/sql/migrations/0001_core.sql,
0002_automations.sql); keep them in sync.
"""

from __future__ import annotations

import re

# An entity, a project or a registry name (the `entity_part` domain).
NAME_PART = re.compile(r"[A-Za-z0-9._-]{1,128}")
# PostgreSQL's [[:cntrl:]]: refused in metric keys and other names.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
MAX_KEY_LENGTH = 256

# System metrics (the SDK's sampler) are stored as `system/<key>` and read from
# `system_metrics`; rules may also write `system.<key>`, a synonym. Both prefixes are
# reserved: a user's `run.log` may not use them.
SYSTEM_PREFIX = "system/"
SYSTEM_SYNONYM = "system."
RESERVED_PREFIXES = (SYSTEM_PREFIX, SYSTEM_SYNONYM)


def canonical_metric(name: str) -> str:
    """A rule's metric name as stored: `system.<key>` becomes `system/<key>`.

    >>> canonical_metric("system.cpu"), canonical_metric("train/loss")
    ('system/cpu', 'train/loss')
    """
    if name.startswith(SYSTEM_SYNONYM):
        return SYSTEM_PREFIX + name[len(SYSTEM_SYNONYM) :]
    return name


def is_system_metric(name: str) -> bool:
    """True for a (canonical) metric name read from `system_metrics`.

    >>> is_system_metric("system/cpu"), is_system_metric("system.cpu"), is_system_metric("loss")
    (True, False, False)
    """
    return name.startswith(SYSTEM_PREFIX)


def is_reserved_key(key: str) -> bool:
    """True for a key only the system sampler may log (`system/…` or `system.…`).

    >>> is_reserved_key("system.gpu"), is_reserved_key("system/gpu"), is_reserved_key("systemic")
    (True, True, False)
    """
    return key.startswith(RESERVED_PREFIXES)
