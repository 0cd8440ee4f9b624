"""One HTTP POST of a JSON body, as webhooks and Slack incoming webhooks send it.

* The target is checked by `ssrf.check_target` and the connection goes only to the checked
  addresses, each tried in turn (`transport.py`), while the URL, the `Host` header, the TLS
  server name and the certificate check keep the host name. So the DNS answer that was
  checked is the one that is used. A name's checked addresses serve the attempts of the next
  few seconds, and a connection is kept open for the next attempt to the same checked
  target (`transport.Connections`): a busy receiver costs neither a lookup nor a handshake
  per attempt.
* Redirects are followed by hand (at most 5), each target checked the same way. 307/308
  repeat the POST; 301/302/303 become a GET without body, as httpx and browsers do. Headers
  carrying secrets are dropped when a redirect leaves the original origin.
* The response body is read raw (we ask for `Accept-Encoding: identity`, so no
  decompression bomb) and only up to RESPONSE_BODY_LIMIT bytes: a 10 MB answer is not held.
* `timeout` bounds the whole attempt, every hop and byte of it (`transport.py`): a receiver
  dripping its answer one byte at a time cannot hold a worker past it.
* No environment proxy is used: a proxy would resolve the name itself and defeat the address
  check. No cookie is kept, not even between the hops of one attempt.

Nothing here raises for a delivery problem: the outcome is an `Attempt`.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

import httpx

from engine import __version__, clock
from engine.actions import ssrf
from engine.actions.retry import is_retryable_status, parse_retry_after
from engine.actions.secrets import REDACTED
from engine.actions.transport import CONNECTIONS, Target, attempt_deadline
from engine.exceptions import DeliveryError, PermanentDeliveryError

# httpx logs every request URL at INFO; a URL can be a secret (Slack incoming webhooks), and
# the attempt log records each request already (redacted). So httpx speaks only of problems.
logging.getLogger("httpx").setLevel(logging.WARNING)

MAX_REDIRECTS = 5
RESPONSE_BODY_LIMIT = 4096
USER_AGENT = f"engine-automations/{__version__}"
_ALWAYS_REDACTED = frozenset({"authorization", "x-automation-signature", "x-automation-signature-256"})
# What an httpx client would add to every request (ours replace them where they clash).
_CLIENT_HEADERS = ((b"Accept", b"*/*"), (b"Connection", b"keep-alive"))


@dataclass(frozen=True)
class Attempt:
    """What one try of one delivery did (one `delivery_attempts` row)."""

    request: dict[str, Any]  # {"url": ..., "headers": {...}} with secrets redacted
    http_status: int | None = None
    response_body: str | None = None
    error: str | None = None  # None: delivered
    retryable: bool = False
    retry_after: float | None = None  # seconds the receiver asked us to wait
    started_at: Any = None  # datetime, filled in by send.send_action
    duration_ms: float | None = None

    @property
    def succeeded(self) -> bool:
        return self.error is None

    def with_(self, **changes: Any) -> Attempt:
        return replace(self, **changes)


def redact_headers(headers: Mapping[str, str], secret_headers: Collection[str]) -> dict[str, str]:
    secret = {h.lower() for h in secret_headers} | _ALWAYS_REDACTED
    return {k: (REDACTED if k.lower() in secret else v) for k, v in headers.items()}


@dataclass
class _Hop:
    method: str
    url: httpx.URL
    headers: httpx.Headers
    body: bytes | None
    redirects: list[str] = field(default_factory=list)


@lru_cache(maxsize=1)
def _tls_context() -> ssl.SSLContext:
    """One verifying TLS context for every request: loading the CA store parses every
    certificate, which takes longer than a whole delivery to a local receiver, so it must
    not happen per request."""
    return ssl.create_default_context()


@lru_cache(maxsize=256)
def _parsed(url: str) -> httpx.URL:
    """A URL parsed once for every attempt sent to it (an httpx.URL does not change)."""
    return httpx.URL(url)


def post_json(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    timeout: float,
    allow_hosts: str,
    secret_headers: Collection[str] = (),
    log_url: str | None = None,
) -> Attempt:
    """POST `body` to `url` and classify the answer (2xx ok; 408/429/5xx retryable; else final).

    `log_url` replaces the URL in the stored request record when the URL itself is a secret
    (Slack incoming webhooks).
    """
    # Values go as UTF-8: a template may render a run name that is not ASCII, which httpx
    # would refuse to encode (HTTP carries such bytes as opaque octets).
    sent = httpx.Headers({name.encode("ascii"): value.encode("utf-8") for name, value in headers.items()})
    sent.setdefault("User-Agent", USER_AGENT)
    sent["Accept-Encoding"] = "identity"
    # .raw keeps the names' case
    as_sent = {k.decode("latin-1"): v.decode("utf-8", "replace") for k, v in sent.raw}
    record: dict[str, Any] = {"url": log_url or url, "headers": redact_headers(as_sent, secret_headers)}
    try:
        hop = _Hop("POST", _parsed(url), sent, body)
        if hop.url.scheme not in ("http", "https"):
            raise PermanentDeliveryError(
                f"webhook URL must be http or https, not {hop.url.scheme or 'empty'}"
            )
        deadline = time.monotonic() + timeout  # for the whole attempt, redirects included
        with attempt_deadline(deadline):
            for _ in range(MAX_REDIRECTS + 1):
                outcome = _send_hop(hop, allow_hosts, timeout, secret_headers)
                if isinstance(outcome, Attempt):
                    if hop.redirects:
                        record["redirects"] = [REDACTED if log_url else r for r in hop.redirects]
                    return outcome.with_(request=record)
                hop = outcome
        raise PermanentDeliveryError(f"more than {MAX_REDIRECTS} redirects")
    except PermanentDeliveryError as exc:
        return Attempt(record, error=str(exc), retryable=False)
    except DeliveryError as exc:
        return Attempt(record, error=str(exc), retryable=True)
    except httpx.TimeoutException as exc:
        return Attempt(record, error=f"timed out after {timeout:g} s ({type(exc).__name__})", retryable=True)
    except httpx.TransportError as exc:
        return Attempt(record, error=f"connection failed: {exc or type(exc).__name__}", retryable=True)
    except (httpx.InvalidURL, httpx.UnsupportedProtocol, ValueError) as exc:
        return Attempt(record, error=f"bad webhook URL: {exc}", retryable=False)


def _send_hop(
    hop: _Hop,
    allow_hosts: str,
    timeout: float,
    secret_headers: Collection[str],
) -> Attempt | _Hop:
    """Send one hop to the checked addresses; an Attempt when done, the next hop on a redirect."""
    url = hop.url
    if url.scheme not in ("http", "https"):
        raise PermanentDeliveryError(f"redirect to a non-http URL refused: {url}")
    port = url.port or (443 if url.scheme == "https" else 80)
    addresses = CONNECTIONS.checked(
        url.host, port, allow_hosts, lambda: ssrf.check_target(url.host, port, allow_hosts)
    )
    # The transport connects to the name only through these (httpcore hands it the raw host).
    checked = Target(url.scheme, url.raw_host.decode("ascii"), port, addresses, allow_hosts, _tls_context())
    response = CONNECTIONS.transport(checked).send(
        hop.method,
        url,
        _request_headers(url, hop.headers, hop.body),
        hop.body,
        timeout=timeout,
        limit=RESPONSE_BODY_LIMIT,
    )
    status = response.status
    location = response.headers.get("Location")
    if httpx.codes.is_redirect(status) and location:
        target = url.join(location)
        method, body = hop.method, hop.body
        headers = httpx.Headers(hop.headers)
        if status in (301, 302, 303) and method == "POST":
            method, body = "GET", None
            headers.pop("Content-Type", None)
        if (target.scheme, target.host, target.port) != (url.scheme, url.host, url.port):
            for name in {h.lower() for h in secret_headers} | _ALWAYS_REDACTED:
                headers.pop(name, None)
        return _Hop(method, target, headers, body, [*hop.redirects, str(target)])
    text = response.body.decode("utf-8", errors="replace")
    retry_after = parse_retry_after(response.headers.get("Retry-After"), clock.now())
    if 200 <= status <= 299:
        return Attempt({}, http_status=status, response_body=text)
    reason = f"HTTP {status} {response.reason}".rstrip()
    if 300 <= status <= 399:
        reason += " (not followed: no Location header, or not a redirect)"
    return Attempt(
        {},
        http_status=status,
        response_body=text,
        error=reason,
        retryable=is_retryable_status(status),
        retry_after=retry_after,
    )


def _request_headers(url: httpx.URL, headers: httpx.Headers, body: bytes | None) -> list[tuple[bytes, bytes]]:
    """The headers as an httpx client sends them: `Host` first, its defaults (`Accept`,
    `Connection`) but those ours replace, ours, and `Content-Length` for a body (unless one of
    ours says it)."""
    sent = {name.lower(): (name, value) for name, value in _CLIENT_HEADERS}
    for name, value in headers.raw:
        lowered = name.lower()
        sent.pop(lowered, None)  # ours replace a default of that name, after the others (as httpx)
        sent[lowered] = (name, value)
    auto = [] if b"host" in sent else [(b"Host", url.netloc)]
    if body is not None and b"content-length" not in sent and b"transfer-encoding" not in sent:
        sent[b"content-length"] = (b"Content-Length", str(len(body)).encode("ascii"))
    return auto + list(sent.values())
