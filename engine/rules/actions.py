"""What a rule does when it fires: a webhook, a message (Slack, Discord, Teams, email), a
PagerDuty incident, a request that the run stop, or nothing (records the trigger).

The actions package (`engine.actions`) sends these models: the dispatcher turns the JSON
stored with each delivery back into one (`stored_action`). Secrets stay `{env: NAME}`
references all the way to delivery time.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal, get_args
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BeforeValidator,
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
from engine.rules.variables import SECRET_VARIABLES, VARIABLES, is_known_variable, variables_in

_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}")
# Set by the engine itself on every request: a rule may not override them.
RESERVED_HEADERS = frozenset(
    {
        "x-automation-delivery",
        "x-automation-signature",
        "x-automation-signature-256",
        "x-automation-timestamp",
        "content-length",
        "host",
    }
)
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


def url_problem(value: str) -> str | None:
    """Why `value` is not an http(s) URL with a host, or None. Also judges a URL rendered
    from a template at send time."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http:// or https:// URL with a host"
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in value):
        return "must not contain spaces or control characters"
    return None


def _url(value: str) -> str:
    problem = url_problem(value)
    if problem:
        raise rule_error(problem)
    return value


# One mailbox, `local@domain`: no display name, no comment, no list, nothing a header could
# be split on. Judged again after rendering (`${event_author}@example.com`).
_MAILBOX = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?"
)
# A Slack channel name (lower case, digits, - _ and letters of other scripts, at most 80) or id.
_CHANNEL = re.compile(r"#?[^\s#,<>&\x00-\x1f\x7f]{1,80}")


def mailbox_problem(value: str) -> str | None:
    """Why `value` is not one e-mail address `local@domain`, or None."""
    if not _MAILBOX.fullmatch(value) or ".." in value.partition("@")[2]:
        return "must be one e-mail address, local@domain (no name, no list)"
    return None


def channel_problem(value: str) -> str | None:
    """Why `value` is not a Slack channel name or id, or None."""
    if not _CHANNEL.fullmatch(value):
        return "must be a channel name (#ml-alerts, at most 80 characters, no spaces) or id"
    return None


def routing_problems(
    value: str, loc: Loc, secret_names: frozenset[str], check: Callable[[str], str | None]
) -> list[tuple[Loc, str]]:
    """Problems of an address field that may hold a template (`url`, `channel`, `to`): unknown
    variables and secrets (an address is logged, so it must not carry one); a value without
    a template is judged at once by `check`, a templated one again after rendering."""
    problems: list[tuple[Loc, str]] = []
    used = variables_in(value)
    for name in used:
        if name in secret_names or name in SECRET_VARIABLES:
            problems.append((loc, f"${{{name}}} is a secret: an address is logged, so it must not hold one"))
        elif not is_known_variable(name):
            problems.append((loc, _unknown_variable(name, frozenset())))
    if not used:
        problem = check(value)
        if problem:
            problems.append((loc, problem))
    return problems


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
    """POST a JSON body to a URL."""

    type: Literal["webhook"] = Field(description="Action kind.")
    url: Url = Field(
        description="http:// or https:// address the request is sent to; host and path may use ${variables}."
    )
    headers: dict[HeaderName, HeaderValue] = Field(
        default_factory=dict, description="Extra request headers; values may use ${variables}."
    )
    access_token: EnvSecret | None = Field(
        None, description="Sent as `Authorization: Bearer …`; {env: NAME}."
    )
    secret: EnvSecret | None = Field(
        None,
        description="Signs each request: X-Automation-Signature = base64(HMAC-SHA256(secret, body)), and "
        "X-Automation-Signature-256 = t=<timestamp>,v1=hex(HMAC-SHA256(secret, '<timestamp>.<body>')); {env: NAME}.",
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
        problems += routing_problems(self.url, ("url",), self.secret_names, url_problem)
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
    channel: Label | None = Field(
        None, description="Channel for `token` (e.g. #ml-alerts or its id); may use ${variables}."
    )
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
        if self.channel is not None:
            problems += routing_problems(self.channel, ("channel",), self.secret_names, channel_problem)
        problems += template_problems(self.title, ("title",), self.secret_names)
        problems += template_problems(self.message, ("message",), self.secret_names)
        fail("SlackAction", problems)
        return self


Severity = Literal["info", "warn", "error"]
Timeout = Annotated[float, Field(gt=0, le=300, allow_inf_nan=False, strict=True)]
MaxAttempts = Annotated[int, Field(ge=1, le=100, strict=True)]


class _MessageAction(ActionBase):
    """What the chat-like actions share: a title and a message (templates), a severity, and
    the retry budget of webhooks."""

    title: Text | None = Field(
        None, description="Message title; may use ${variables}. Default: the automation's name."
    )
    message: Text | None = Field(
        None, description="Message text; may use ${variables}. Default: a sentence per event kind."
    )
    severity: Severity = Field("info", description="Shown as the message's colour.")
    timeout: Timeout = Field(10.0, description="Seconds per attempt.")
    max_attempts: MaxAttempts = Field(
        DEFAULT_MAX_ATTEMPTS,
        description="Attempts before the delivery is failed (the default retries for over an hour).",
    )

    secret_names: ClassVar[frozenset[str]] = frozenset()  # a webhook URL is not usable in a template

    def _text_problems(self) -> list[tuple[Loc, str]]:
        return template_problems(self.title, ("title",), frozenset()) + template_problems(
            self.message, ("message",), frozenset()
        )


class DiscordAction(_MessageAction):
    """Post a message with an embed to a Discord channel's webhook."""

    type: Literal["discord"] = Field(description="Action kind.")
    webhook_url: EnvSecret = Field(description="The channel webhook's URL (it holds a token), {env: NAME}.")

    @model_validator(mode="after")
    def _check(self) -> DiscordAction:
        fail("DiscordAction", self._text_problems())
        return self


class TeamsAction(_MessageAction):
    """Post an Adaptive Card to a Microsoft Teams channel through its incoming webhook (a
    Workflows "when a Teams webhook request is received" URL, or a legacy connector's)."""

    type: Literal["teams"] = Field(description="Action kind.")
    webhook_url: EnvSecret = Field(description="The webhook's URL (it holds a signature), {env: NAME}.")

    @model_validator(mode="after")
    def _check(self) -> TeamsAction:
        fail("TeamsAction", self._text_problems())
        return self


PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"


class PagerDutyAction(ActionBase):
    """Open (or update) a PagerDuty incident through the Events API v2; one incident per
    automation and run (`dedup_key`), so repeated firings update it."""

    type: Literal["pagerduty"] = Field(description="Action kind.")
    routing_key: EnvSecret = Field(description="The service integration's routing key, {env: NAME}.")
    summary: Text | None = Field(
        None, description="Incident summary (at most 1024 characters sent); may use ${variables}."
    )
    source: Text = Field(
        "${entity_name}/${project_name}",
        description="Where it happened (PagerDuty `source`); may use ${variables}.",
    )
    severity: Literal["critical", "error", "warning", "info"] = Field(
        "error", description="PagerDuty severity of the incident."
    )
    url: Url = Field(
        PAGERDUTY_EVENTS_URL,
        description="Events API endpoint (events.eu.pagerduty.com for EU accounts); may use ${variables}.",
    )
    timeout: Timeout = Field(10.0, description="Seconds per attempt.")
    max_attempts: MaxAttempts = Field(
        DEFAULT_MAX_ATTEMPTS,
        description="Attempts before the delivery is failed (the default retries for over an hour).",
    )

    secret_names: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="after")
    def _check(self) -> PagerDutyAction:
        problems = routing_problems(self.url, ("url",), frozenset({self.routing_key.env}), url_problem)
        problems += template_problems(self.summary, ("summary",), frozenset())
        problems += template_problems(self.source, ("source",), frozenset())
        fail("PagerDutyAction", problems)
        return self


Recipients = Annotated[list[Label], Field(min_length=1, max_length=100)]


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class EmailAction(ActionBase):
    """Send a plain-text e-mail through the SMTP server of ENGINE_SMTP_URL."""

    type: Literal["email"] = Field(description="Action kind.")
    to: Annotated[Recipients, BeforeValidator(_as_list)] = Field(
        description="Recipient address, or a list of them; each may use ${variables}."
    )
    cc: Annotated[Recipients | None, BeforeValidator(_as_list)] = Field(
        None, description="Copy recipients, like `to`."
    )
    subject: Text | None = Field(
        None, description="Subject; may use ${variables}. Default: the automation's name and what happened."
    )
    body: Text | None = Field(
        None,
        description="Plain-text body; may use ${variables}. Default: what happened and the trigger's facts.",
    )
    timeout: Timeout = Field(30.0, description="Seconds per SMTP operation of an attempt.")
    max_attempts: MaxAttempts = Field(
        DEFAULT_MAX_ATTEMPTS,
        description="Attempts before the delivery is failed (the default retries for over an hour).",
    )

    secret_names: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="after")
    def _check(self) -> EmailAction:
        problems: list[tuple[Loc, str]] = []
        for field_name in ("to", "cc"):
            for i, address in enumerate(getattr(self, field_name) or []):
                problems += routing_problems(address, (field_name, i), frozenset(), mailbox_problem)
        problems += template_problems(self.subject, ("subject",), frozenset())
        problems += template_problems(self.body, ("body",), frozenset())
        fail("EmailAction", problems)
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


class StopRunAction(ActionBase):
    """Ask the run's process to stop: its next `run.log` or `run.flush` raises
    `engine.RunStopped` and the run ends `killed`. Run events only (the automation checks it).
    The request is stored with the trigger; nothing is sent."""

    type: Literal["stop_run"] = Field(description="Action kind.")

    secret_names: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="after")
    def _nothing_to_control(self) -> StopRunAction:
        fail(
            "StopRunAction",
            [
                ((name,), f"stop_run stops each run it fires for, at once: {name} does not apply")
                for name in ("digest", "rate_limit")
                if getattr(self, name) is not None
            ],
        )
        return self


ActionModel = (
    WebhookAction
    | SlackAction
    | EmailAction
    | DiscordAction
    | TeamsAction
    | PagerDutyAction
    | NoOpAction
    | StopRunAction
)
Action = Annotated[ActionModel, Field(discriminator="type")]
ACTION_CLASSES: tuple[type[ActionModel], ...] = get_args(ActionModel)
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
