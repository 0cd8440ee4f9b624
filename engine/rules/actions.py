"""What a rule does when it fires: a webhook, a Slack message, or nothing (records the trigger).

The actions package (`engine.actions`) sends these models: the dispatcher turns the JSON
stored with each delivery back into one (`stored_action`). Secrets stay `{env: NAME}`
references all the way to delivery time.
"""

from __future__ import annotations

import difflib
import math
import re
from typing import Annotated, Any, ClassVar, Literal, Union
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    Field,
    JsonValue,
    SerializerFunctionWrapHandler,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    model_serializer,
    model_validator,
)

from engine.rules.base import Loc, RuleModel, fail, rule_error
from engine.rules.duration import DigestWindow, Period
from engine.rules.fields import EnvName, Label, Text
from engine.rules.variables import VARIABLES, is_known_variable, variables_in

_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}")
# Set by the engine itself on every request (SPEC section 3).
RESERVED_HEADERS = frozenset({"x-automation-delivery", "x-automation-signature", "content-length", "host"})
# With the default ENGINE_RETRY_BASE_SECONDS (1 s), 16 attempts span 67 minutes of receiver
# outage (`engine.actions.retry.schedule`): a receiver down for an hour still gets the
# delivery. docs/actions.md lists the attempt times: keep it in sync.
DEFAULT_MAX_ATTEMPTS = 16


class EnvSecret(RuleModel):
    """A secret named by its environment variable, resolved at delivery time: `{env: CI_TOKEN}`."""

    env: EnvName = Field(description="Name of the environment variable holding the secret.")

    @model_validator(mode="before")
    @classmethod
    def _not_literal(cls, data: Any) -> Any:
        if isinstance(data, str):
            # Never echo the value: it may be the secret itself.
            raise rule_error("secrets come from the environment: write {env: NAME}, never the secret itself")
        return data


def _url(value: str) -> str:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise rule_error("is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise rule_error("must be an http:// or https:// URL with a host")
    if any(ch.isspace() or ord(ch) < 32 for ch in value):
        raise rule_error("must not contain spaces or control characters")
    return value


def _header_name(value: str) -> str:
    if not _HEADER_NAME.fullmatch(value):
        raise rule_error(f"{value!r} is not a valid HTTP header name")
    return value


def _header_value(value: str) -> str:
    if any(ch in value for ch in "\r\n\x00"):
        raise rule_error("header values must not contain line breaks or NUL")
    return value


Url = Annotated[str, StringConstraints(max_length=2048), AfterValidator(_url)]
HeaderName = Annotated[str, AfterValidator(_header_name)]
HeaderValue = Annotated[str, StringConstraints(max_length=8192), AfterValidator(_header_value)]


def template_problems(value: Any, loc: Loc, secret_names: frozenset[str]) -> list[tuple[Loc, str]]:
    """Unknown `${name}`s (and values JSON cannot hold) anywhere in a string, list or mapping,
    keys included, with the path of each."""
    problems: list[tuple[Loc, str]] = []
    if isinstance(value, str):
        for name in variables_in(value):
            if not is_known_variable(name, secret_names):
                problems.append((loc, _unknown_variable(name, secret_names)))
        if "\x00" in value:
            problems.append((loc, "must not contain NUL characters"))
        if any("\ud800" <= ch <= "\udfff" for ch in value):  # pydantic refuses these in str fields only
            problems.append((loc, "must be valid Unicode text (no unpaired surrogates)"))
    elif isinstance(value, float) and not math.isfinite(value):
        problems.append((loc, "numbers must be finite (JSON has no NaN or infinity)"))
    elif isinstance(value, dict):
        for key, item in value.items():
            problems += template_problems(key, (*loc, key), secret_names)
            problems += template_problems(item, (*loc, key), secret_names)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            problems += template_problems(item, (*loc, i), secret_names)
    return problems


def _unknown_variable(name: str, secret_names: frozenset[str]) -> str:
    message = f"unknown template variable ${{{name}}}"
    close = difflib.get_close_matches(name, [*VARIABLES, *secret_names], n=1)
    if close:
        message += f" (did you mean ${{{close[0]}}}?)"
    elif name.isupper():
        message += " (a secret is usable as ${NAME} only when the action names it with {env: NAME})"
    return message


class RateLimit(RuleModel):
    """At most `count` deliveries of the action in any rolling `per`; the rest are `suppressed`."""

    count: int = Field(ge=1, le=1_000_000, strict=True, description="Deliveries allowed per period.")
    per: Period = Field(description="The rolling period, e.g. 1h (whole seconds, at least 1s).")


DIGEST_VARIABLES = frozenset({"digest", "digest_count"})


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


class ActionBase(RuleModel):
    """What every action shares: how much of it is sent (docs/actions.md, "How much is sent")."""

    digest: DigestWindow | None = Field(
        None,
        description="Collect triggers: the first opens a window this long (at least 1m); when it closes, one "
        "delivery carries them all (${digest}, ${digest_count}).",
    )
    rate_limit: RateLimit | None = Field(
        None,
        description="At most `count` deliveries in any rolling `per`; the rest are recorded as suppressed.",
    )

    @model_serializer(mode="wrap")
    def _omit_unused_controls(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Left out when unset, so that a rule stored before these fields existed keeps its
        # hash (`rules apply` does not see every rule as changed after an upgrade).
        data = handler(self)
        for name in ("digest", "rate_limit"):
            if data.get(name) is None:
                data.pop(name, None)
        return data

    @model_validator(mode="after")
    def _digest_variables(self) -> ActionBase:
        if self.digest is None:
            data = self.model_dump(exclude={"digest", "rate_limit"})
            for text in _strings(data):
                used = DIGEST_VARIABLES.intersection(variables_in(text))
                if used:
                    name = sorted(used)[0]
                    fail(type(self).__name__, [((), f"${{{name}}} needs `digest:` on the action")])
        return self


class WebhookAction(ActionBase):
    """POST a JSON body to a URL (SPEC section 3)."""

    type: Literal["webhook"] = Field(description="Action kind.")
    url: Url = Field(description="http:// or https:// address the request is sent to.")
    headers: dict[HeaderName, HeaderValue] = Field(
        default_factory=dict, description="Extra request headers; values may use ${variables}."
    )
    access_token: EnvSecret | None = Field(
        None, description="Sent as `Authorization: Bearer …`; {env: NAME}."
    )
    secret: EnvSecret | None = Field(
        None,
        description="Signs the body: X-Automation-Signature = base64(HMAC-SHA256(secret, body)); {env: NAME}.",
    )
    payload: JsonValue | None = Field(
        None,
        description="Body (any JSON; strings may use ${variables}). Default: every variable that applies.",
    )
    timeout: float = Field(
        10.0, gt=0, le=300, allow_inf_nan=False, strict=True, description="Seconds per attempt."
    )
    max_attempts: int = Field(
        DEFAULT_MAX_ATTEMPTS,
        ge=1,
        le=100,
        strict=True,
        description="Attempts before the delivery is failed (the default retries for over an hour).",
    )

    @property
    def secret_names(self) -> frozenset[str]:
        """The env NAMEs this action references (usable as ${NAME} in its templates)."""
        return frozenset(s.env for s in (self.access_token, self.secret) if s is not None)

    @model_validator(mode="after")
    def _check(self) -> WebhookAction:
        problems = template_problems(self.payload, ("payload",), self.secret_names)
        for name, value in self.headers.items():
            lower = name.lower()
            if lower in RESERVED_HEADERS or (lower == "authorization" and self.access_token is not None):
                problems.append((("headers", name), f"the engine sets {name} itself"))
            problems += template_problems(value, ("headers", name), self.secret_names)
        fail("WebhookAction", problems)
        return self


class SlackAction(ActionBase):
    """Post a message to Slack, by incoming webhook or by bot token and channel."""

    type: Literal["slack"] = Field(description="Action kind.")
    webhook_url: EnvSecret | None = Field(None, description="Incoming-webhook URL, {env: NAME}.")
    token: EnvSecret | None = Field(
        None, description="Bot token for chat.postMessage, {env: NAME}; needs `channel`."
    )
    channel: Label | None = Field(None, description="Channel for `token` (e.g. #ml-alerts or its id).")
    title: Text | None = Field(None, description="Message title; may use ${variables}.")
    message: Text | None = Field(None, description="Message text; may use ${variables}.")
    severity: Literal["info", "warn", "error"] = Field("info", description="Shown as the message's colour.")

    @property
    def secret_names(self) -> frozenset[str]:
        return frozenset(s.env for s in (self.webhook_url, self.token) if s is not None)

    @model_validator(mode="after")
    def _check(self) -> SlackAction:
        problems: list[tuple[Loc, str]] = []
        if (self.webhook_url is None) == (self.token is None):
            where: Loc = ("token",) if self.webhook_url is not None else ()
            problems.append(
                (where, "give exactly one of webhook_url ({env: NAME}) or token ({env: NAME}) with channel")
            )
        elif self.token is not None and self.channel is None:
            problems.append((("channel",), "a token needs a channel"))
        elif self.webhook_url is not None and self.channel is not None:
            problems.append(
                (("channel",), "an incoming webhook posts to its own channel: remove channel, or use token")
            )
        problems += template_problems(self.title, ("title",), self.secret_names)
        problems += template_problems(self.message, ("message",), self.secret_names)
        fail("SlackAction", problems)
        return self


class NoOpAction(ActionBase):
    """Record the trigger only."""

    type: Literal["no_op"] = Field(description="Action kind.")

    secret_names: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="after")
    def _nothing_to_control(self) -> NoOpAction:
        fail(
            "NoOpAction",
            [
                ((name,), f"no_op sends nothing: {name} does not apply")
                for name in ("digest", "rate_limit")
                if getattr(self, name) is not None
            ],
        )
        return self


ACTION_CLASSES = (WebhookAction, SlackAction, NoOpAction)
Action = Annotated[Union[ACTION_CLASSES], Field(discriminator="type")]  # noqa: UP007


ActionModel = WebhookAction | SlackAction | NoOpAction
_ACTION = TypeAdapter(Action)


def stored_action(data: Any) -> ActionModel:
    """An action as stored with a delivery (its rule's JSON) back as its model.

    Raises ValueError naming the problems when the stored JSON is not a valid action (a
    hand-edited row, or one written by another version of the engine).
    """
    try:
        return _ACTION.validate_python(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'action'}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
        raise ValueError(f"the stored action is not valid: {problems}") from None
