"""The `webhook` action: POST the rendered payload (user documentation: docs/actions.md).

Headers sent:
    Content-Type: application/json
    X-Automation-Delivery: <delivery id>        stable across retries: receivers de-duplicate on it
    Authorization: Bearer <token>               when `access_token` is set
    X-Automation-Signature: <base64 HMAC>       when `secret` is set: base64(HMAC-SHA256(secret, body))
    <custom headers>                            rendered templates; ours win on a name clash

A receiver verifies the signature over the exact bytes it received:

    expected = base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()
    ok = hmac.compare_digest(expected, request.headers["X-Automation-Signature"])
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping

from engine.actions.http import Attempt, post_json
from engine.actions.secrets import Secrets
from engine.actions.templates import render_payload, render_text, uses_secret
from engine.rules.actions import WebhookAction
from engine.settings import Settings

DEFAULT_TIMEOUT: float = WebhookAction.model_fields["timeout"].default
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def signature(secret: str, body: bytes) -> str:
    """base64(HMAC-SHA256(secret, body)), the X-Automation-Signature header."""
    return base64.b64encode(hmac.new(secret.encode("utf-8"), body, hashlib.sha256).digest()).decode("ascii")


def header_value(text: str) -> str:
    """A rendered header value made safe: a run name with a newline must not inject a header."""
    return _CONTROL.sub(" ", text).strip()


def build_request(
    delivery_id: str, action: WebhookAction, ctx: Mapping[str, str], secrets: Secrets
) -> tuple[bytes, dict[str, str], set[str]]:
    """(body, headers, names of headers that carry a secret) of one webhook request."""
    body = render_payload(action.payload, ctx, secrets.values)
    headers: dict[str, str] = {}
    secret_headers: set[str] = set()
    for name, template in action.headers.items():
        headers[name] = header_value(render_text(template, ctx, secrets.values))
        if uses_secret(template, secrets.values):
            secret_headers.add(name)
    # Ours replace a custom header of the same name, whatever its case.
    fixed = {"Content-Type": "application/json", "X-Automation-Delivery": delivery_id}
    if "access_token" in secrets.by_field:
        fixed["Authorization"] = f"Bearer {secrets.by_field['access_token']}"
        secret_headers.add("Authorization")
    if "secret" in secrets.by_field:
        fixed["X-Automation-Signature"] = signature(secrets.by_field["secret"], body)
        secret_headers.add("X-Automation-Signature")
    lowered = {k.lower() for k in fixed}
    headers = {k: v for k, v in headers.items() if k.lower() not in lowered} | fixed
    return body, headers, secret_headers


def send(
    delivery_id: str, action: WebhookAction, ctx: Mapping[str, str], secrets: Secrets, settings: Settings
) -> Attempt:
    body, headers, secret_headers = build_request(delivery_id, action, ctx, secrets)
    return post_json(
        action.url,
        body,
        headers,
        timeout=action.timeout,
        allow_hosts=settings.webhook_allow_hosts,
        secret_headers=secret_headers,
    )
