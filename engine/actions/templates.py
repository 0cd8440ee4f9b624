"""Rendering the template variables of actions: `${name}` inside payload, title, message
and header strings. The names, and which apply to each event, belong to the rule language
(`engine.rules.variables`), whose loader checks every template against them.

Rendering rules (documented in the README's variable table):

* A variable that does not apply to the event renders as the empty string; so does an
  unknown name (the loader refuses those, so only hand-edited database rows can have one).
* Payloads are rendered on the parsed JSON value, not on its text: `${name}` is replaced in
  every string, object keys included, and the result is serialised with `json.dumps`. So a
  run name holding quotes or newlines can never break the JSON — it is escaped like any string.
* A payload string that is exactly `"${metric_values}"` becomes the window as a JSON list of
  numbers, and exactly `"${digest}"` a digest's triggers as
  a list of objects; inside a longer string each is its JSON text.
  When the variable does not apply it stays the empty string, like every other variable.
* No payload (`payload: null`): a JSON object with every variable that applies to the event
  (see `APPLIES`), plus any other variable that has a value (e.g. the run that produced an
  artifact), `metric_values` as a list, and `artifact_metadata.<KEY>` entries. Secrets
  (`ACCESS_TOKEN`, `${NAME}`) are never part of the default payload.
* `ACCESS_TOKEN` and the names of the action's `{env: NAME}` secrets are looked up in the
  `secrets` mapping given at send time; they never enter the context (which may be printed).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from engine.exceptions import PermanentDeliveryError
from engine.rules.variables import (
    APPLIES,
    COMMON,
    METADATA_PREFIX,
    PLACEHOLDER,
    SECRET_VARIABLES,
    VARIABLES,
    variables_in,
)


def lookup(name: str, ctx: Mapping[str, str], secrets: Mapping[str, str] | None = None) -> str:
    """The value of one variable: context first, then the action's secrets, else ''."""
    if name in ctx and name not in SECRET_VARIABLES:
        return ctx[name]
    if secrets and name in secrets:
        return secrets[name]
    return ""


def render_text(
    template: str,
    ctx: Mapping[str, str],
    secrets: Mapping[str, str] | None = None,
    *,
    escape: Callable[[str], str] | None = None,
) -> str:
    """Replace every `${name}` in `template`; `escape` is applied to each substituted value.

    >>> render_text("run ${run_name} at ${metric_step}", {"run_name": "r1", "metric_step": "7"})
    'run r1 at 7'
    """

    def substitute(match: re.Match[str]) -> str:
        value = lookup(match.group(1), ctx, secrets)
        return escape(value) if escape else value

    return PLACEHOLDER.sub(substitute, template)


def render_address(
    template: str,
    field: str,
    ctx: Mapping[str, str],
    check: Callable[[str], str | None],
    *,
    escape: Callable[[str], str] | None = None,
) -> str:
    """An address field (`url`, `channel`, `to`) rendered and judged again, as the loader
    judges one written without a template. Raises PermanentDeliveryError naming the field.
    Address templates never hold secrets (the loader refuses them), so neither does the error.
    """
    if not variables_in(template):
        return template
    value = render_text(template, ctx, escape=escape)
    problem = check(value)
    if problem:
        raise PermanentDeliveryError(f"{field} {value!r} (rendered from {template!r}) {problem}")
    return value


def uses_secret(template: str, secrets: Mapping[str, str]) -> bool:
    """True when the template names a secret (its rendering must then be redacted in logs)."""
    return any(name in secrets for name in variables_in(template))


def render_value(value: Any, ctx: Mapping[str, str], secrets: Mapping[str, str] | None = None) -> Any:
    """Render a JSON value: every string (keys included) is a template; see module docstring."""
    if isinstance(value, str):
        if value in ("${metric_values}", "${digest}") and ctx.get(value[2:-1]):
            return json.loads(ctx[value[2:-1]])
        return render_text(value, ctx, secrets)
    if isinstance(value, Mapping):
        return {render_text(str(k), ctx, secrets): render_value(v, ctx, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [render_value(v, ctx, secrets) for v in value]
    return value


def default_payload(ctx: Mapping[str, str]) -> dict[str, Any]:
    """Every variable that applies to the event (secrets excluded). A digest's: what its
    triggers share, then `digest_count` and `digest` (each trigger's own default payload)."""
    if ctx.get("digest"):
        shared = ("automation_name", "event_type", "metric_filter", "entity_name", "project_name")
        return {name: ctx.get(name, "") for name in shared} | {
            "digest_count": int(ctx.get("digest_count") or 0),
            "digest": json.loads(ctx["digest"]),
        }
    applies = APPLIES.get(ctx.get("event_type", ""), COMMON)
    out: dict[str, Any] = {}
    for name in VARIABLES:
        if name in SECRET_VARIABLES or (name not in applies and not ctx.get(name)):
            continue
        value = ctx.get(name, "")
        out[name] = json.loads(value) if name == "metric_values" and value else value
    for name in sorted(k for k in ctx if k.startswith(METADATA_PREFIX)):
        out[name] = ctx[name]
    return out


def render_payload(
    payload_template: Any | None, ctx: Mapping[str, str], secrets: Mapping[str, str] | None = None
) -> bytes:
    """The request body of a webhook: the rendered payload (or the default one) as UTF-8 JSON.

    >>> render_payload({"run": "${run_name}"}, {"run_name": 'say "hi"'})
    b'{"run":"say \\\\"hi\\\\""}'
    """
    body = default_payload(ctx) if payload_template is None else render_value(payload_template, ctx, secrets)
    # allow_nan=False: a non-finite number in a user's payload is not JSON; fail loudly.
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
