"""Field types shared by the rule models: names, metric keys, regexes, environment names."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, StringConstraints

from engine.names import CONTROL, MAX_KEY_LENGTH, NAME_PART, SYSTEM_PREFIX, SYSTEM_SYNONYM, canonical_metric
from engine.rules.base import rule_error
from engine.rules.regex import RegexError, check_regex

# Keep in sync with the CHECK constraint of engine/sql/migrations/0002_automations.sql.
_AUTOMATION_NAME = re.compile(r"[A-Za-z0-9 ._-]{1,128}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")


def _automation_name(value: str) -> str:
    if not _AUTOMATION_NAME.fullmatch(value):
        raise rule_error("must be 1–128 characters: letters, digits, space, - _ .")
    return value


def _project(value: str) -> str:
    entity, slash, project = value.partition("/")
    if not slash or not NAME_PART.fullmatch(entity) or not NAME_PART.fullmatch(project):
        raise rule_error("must be entity/project, each part 1–128 characters: letters, digits, - _ .")
    return value


def _name_part(value: str) -> str:
    if not NAME_PART.fullmatch(value):
        raise rule_error("must be 1–128 characters: letters, digits, - _ .")
    return value


def _registry(value: str) -> str:
    if not NAME_PART.fullmatch(value):
        raise rule_error("must be 1–128 characters: letters, digits, - _ .")
    return value


def _no_control(value: str) -> str:
    if CONTROL.search(value):
        raise rule_error("must not contain control characters")
    return value


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise rule_error("must not contain NUL characters")
    return value


def _metric(value: str) -> str:
    _no_control(value)
    value = canonical_metric(value)  # `system.<key>` is a synonym of `system/<key>`
    if value == SYSTEM_PREFIX:
        raise rule_error(
            f"names no system metric: write {SYSTEM_PREFIX}<key> (or {SYSTEM_SYNONYM}<key>), e.g. system/cpu"
        )
    return value


def _regex(value: str) -> str:
    try:
        check_regex(value)
    except RegexError as exc:
        raise rule_error(f"invalid regular expression: {exc}") from None
    return value


def _env_name(value: str) -> str:
    if not _ENV_NAME.fullmatch(value):
        raise rule_error(
            "must be an environment variable name (letters, digits, _; not starting with a digit)"
        )
    return value


AutomationName = Annotated[str, AfterValidator(_automation_name)]
ProjectPath = Annotated[str, AfterValidator(_project)]
RegistryName = Annotated[str, AfterValidator(_registry)]
EntityName = Annotated[str, AfterValidator(_name_part)]
CollectionName = Annotated[str, StringConstraints(min_length=1, max_length=256), AfterValidator(_no_control)]
MetricName = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_KEY_LENGTH), AfterValidator(_metric)
]
Label = Annotated[str, StringConstraints(min_length=1, max_length=256), AfterValidator(_no_control)]
Regex = Annotated[str, StringConstraints(max_length=4096), AfterValidator(_regex)]
EnvName = Annotated[str, AfterValidator(_env_name)]
Text = Annotated[str, StringConstraints(max_length=10_000), AfterValidator(_no_nul)]
