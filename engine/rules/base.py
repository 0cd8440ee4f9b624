"""What every rule model shares: strict config, canonical JSON, and errors that point at a field."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

Loc = tuple[str | int, ...]


class RuleModel(BaseModel):
    """Base of every model loaded from a rule file: unknown keys are errors, values immutable.

    Inputs are hidden in error texts because an action may hold what looks like a secret.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


def rule_error(message: str) -> PydanticCustomError:
    """An error whose text is `message` verbatim (braces in it are not format fields)."""
    return PydanticCustomError("rule", "{message}", {"message": message})


def fail(model: str, problems: Iterable[tuple[Loc, str]]) -> None:
    """Raise one ValidationError carrying every (relative field path, message) at once.

    Raised inside a validator, pydantic prefixes each path with the model's own location,
    which is how the loader finds the YAML line of a cross-field problem.
    """
    details = [InitErrorDetails(type=rule_error(message), loc=loc, input=None) for loc, message in problems]
    if details:
        raise ValidationError.from_exception_data(model, details)


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces: equal rules give equal text (and hashes)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def sha256_json(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()
