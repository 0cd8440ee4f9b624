"""The `webhook` action: POST the rendered payload (user documentation: docs/actions.md).

Headers sent:
    Content-Type: application/json
    X-Automation-Delivery: <delivery id>        stable across retries: receivers de-duplicate on it
    Authorization: Bearer <token>               when `access_token` is set
    X-Automation-Timestamp: <Unix seconds>      when the attempt was made (every attempt signs anew)
    X-Automation-Signature: <base64 HMAC>       when `secret` is set: base64(HMAC-SHA256(secret, body))
    X-Automation-Signature-256: t=<ts>,v1=<hex> when `secret` is set: hex(HMAC-SHA256(secret, "<ts>.<body>"))
    <custom headers>                            rendered templates; ours win on a name clash

The first signature is W&B's and covers the body only, so a captured request verifies for
ever; the second (Stripe's scheme) covers the timestamp too, so a receiver that refuses old
timestamps refuses a replay. A receiver verifies it over the exact bytes it received:

    t, v1 = (part.split("=", 1)[1] for part in request.headers["X-Automation-Signature-256"].split(","))
    expected = hmac.new(secret.encode(), t.encode() + b"." + body, hashlib.sha256).hexdigest()
    ok = hmac.compare_digest(expected, v1) and abs(time.time() - int(t)) <= 300

A templated `url` is rendered with each substituted value percent-encoded (a run name cannot
add a path segment, a query or another host), then judged like a written one: an http(s)
URL with a host, and the address policy when it is sent.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping
from functools import partial
from urllib.parse import quote

from engine import clock
from engine.actions.http import Attempt, post_json
from engine.actions.secrets import Secrets
from engine.actions.templates import render_address, render_payload, render_text, uses_secret
from engine.rules.actions import WebhookAction, url_problem
from engine.settings import Settings

DEFAULT_TIMEOUT: float = WebhookAction.model_fields["timeout"].default
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
# A value substituted into a URL template: every reserved character percent-encoded.
url_escape = partial(quote, safe="")


def signature(secret: str, body: bytes) -> str:
    """base64(HMAC-SHA256(secret, body)), the X-Automation-Signature header."""
    return base64.b64encode(hmac.new(secret.encode("utf-8"), body, hashlib.sha256).digest()).decode("ascii")


def signature_256(secret: str, timestamp: int, body: bytes) -> str:
    """`t=<timestamp>,v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`, the
    X-Automation-Signature-256 header."""
    signed = f"{timestamp}.".encode("ascii") + body
    return f"t={timestamp},v1={hmac.new(secret.encode('utf-8'), signed, hashlib.sha256).hexdigest()}"


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
    timestamp = int(clock.now().timestamp())
    fixed = {
        "Content-Type": "application/json",
        "X-Automation-Delivery": delivery_id,
        "X-Automation-Timestamp": str(timestamp),
    }
    if "access_token" in secrets.by_field:
        fixed["Authorization"] = f"Bearer {secrets.by_field['access_token']}"
        secret_headers.add("Authorization")
    if "secret" in secrets.by_field:
        fixed["X-Automation-Signature"] = signature(secrets.by_field["secret"], body)
        fixed["X-Automation-Signature-256"] = signature_256(secrets.by_field["secret"], timestamp, body)
        secret_headers |= {"X-Automation-Signature", "X-Automation-Signature-256"}
    lowered = {k.lower() for k in fixed}
    headers = {k: v for k, v in headers.items() if k.lower() not in lowered} | fixed
    return body, headers, secret_headers


def send(
    delivery_id: str, action: WebhookAction, ctx: Mapping[str, str], secrets: Secrets, settings: Settings
) -> Attempt:
    url = render_address(action.url, "url", ctx, url_problem, escape=url_escape)
    body, headers, secret_headers = build_request(delivery_id, action, ctx, secrets)
    attempt = post_json(
        url,
        body,
        headers,
        timeout=action.timeout,
        allow_hosts=settings.webhook_allow_hosts,
        secret_headers=secret_headers,
    )
    if url != action.url and attempt.error and attempt.http_status is None and not attempt.retryable:
        # A refusal of a rendered address names the field and the template it came from.
        attempt = attempt.with_(error=f"url {url!r} (rendered from {action.url!r}): {attempt.error}")
    return attempt
