"""Secrets of actions: `{env: NAME}` references resolved from the environment at send time.

The rule (and so `deliveries.action`) only ever holds the reference. Resolved values live in
a `Secrets` object for the duration of one send; `scrub` removes them from anything that is
about to be stored or logged (errors, response bodies that echo a header back, the request
record), as a second line of defence behind the header redaction of `http.py`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from engine.exceptions import PermanentDeliveryError
from engine.rules.actions import ActionModel, EnvSecret
from engine.settings import Settings

REDACTED = "[redacted]"
# Fields of an action that hold `{env: NAME}` references (`EnvSecret` in engine/rules/actions.py).
SECRET_FIELDS = ("access_token", "secret", "webhook_url", "token", "routing_key")


def read_env(name: str) -> str:
    """The value of an environment variable holding a secret, or a delivery error saying so."""
    value = os.environ.get(name)
    if value is None:
        raise PermanentDeliveryError(
            f"environment variable {name} is not set (needed by this action's secret)"
        )
    if value == "":
        raise PermanentDeliveryError(f"environment variable {name} is empty (needed by this action's secret)")
    return value


@dataclass(frozen=True)
class Secrets:
    """Resolved secrets of one action, by template variable name (`NAME`, and `ACCESS_TOKEN`)."""

    values: dict[str, str] = field(default_factory=dict)
    by_field: dict[str, str] = field(default_factory=dict)  # action field -> value
    # Parts of secrets that are secret on their own: the path of a secret URL (a receiver
    # may echo the path it was called on without the host).
    fragments: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        """Nothing to scrub (most actions resolve no secret at all)."""
        return not (self.values or self.by_field or self.fragments)

    def scrub(self, text: str | None) -> str | None:
        if not text or self.empty:
            return text
        # Longest first, so a secret containing another is replaced whole.
        for value in sorted(
            set(self.values.values()) | set(self.by_field.values()) | set(self.fragments),
            key=len,
            reverse=True,
        ):
            text = text.replace(value, REDACTED)
        return text

    def scrub_json(self, value: Any) -> Any:
        if self.empty:
            return value
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, Mapping):
            return {self.scrub(str(k)): self.scrub_json(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.scrub_json(v) for v in value]
        return value


def resolve(action: ActionModel, settings: Settings | None = None) -> Secrets:
    """Read every secret the action names. Raises PermanentDeliveryError if one is missing.

    An `email` action's secret is the SMTP password of `settings`: it is not the action's to
    name, but it is scrubbed like one."""
    values: dict[str, str] = {}
    by_field: dict[str, str] = {}
    fields = type(action).model_fields  # a field the model lacks costs pydantic an exception
    for field_name in SECRET_FIELDS:
        ref: EnvSecret | None = getattr(action, field_name) if field_name in fields else None
        if ref is None:
            continue
        value = read_env(ref.env)
        values[ref.env] = value
        by_field[field_name] = value
    if "access_token" in by_field:
        values["ACCESS_TOKEN"] = by_field["access_token"]
    fragments: list[str] = []
    if "webhook_url" in by_field:
        parts = urlsplit(by_field["webhook_url"])
        fragments += [
            p for p in (parts.path + (f"?{parts.query}" if parts.query else ""), parts.path) if len(p) > 1
        ]
    if action.type == "email" and settings is not None and settings.smtp_password is not None:
        fragments.append(settings.smtp_password.get_secret_value())
    return Secrets(values, by_field, tuple(f for f in fragments if f))
