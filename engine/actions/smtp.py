"""The `email` action: a plain-text message through the SMTP server of ENGINE_SMTP_URL.

* **The server.** `smtp://[user@]host[:port]` (port 25 by default) upgrades to TLS with
  STARTTLS whenever the server offers it; `?starttls=required` refuses a server that does not
  (so a man in the middle cannot strip the offer). `smtps://[user@]host[:port]` (port 465)
  speaks TLS from the first byte. Certificates are verified against the host name, with the
  system's CAs plus ENGINE_SMTP_CA_FILE. The host passes the address policy like a webhook's
  (ENGINE_WEBHOOK_ALLOW_HOSTS lists a private relay), and the connection goes only to the
  checked addresses, the TLS server name staying the host name.
* **AUTH.** A user in the URL logs in with ENGINE_SMTP_PASSWORD (never in the URL, never
  logged), and only over TLS: a server without TLS is refused rather than sent the password
  in clear.
* **Recipients.** `to` and `cc` are rendered, then each must be one address (`local@domain`),
  else the delivery fails naming the field: `${event_author}@example.com` cannot become a list
  or a second header.
* **Answers.** 4xx (greylisting, a full queue, a temporary AUTH failure) is retried like a
  webhook's 5xx; 5xx is final. When some recipients are refused and others accepted, the
  message was sent (a retry would send it twice to the others): the attempt succeeds and its
  response names the refused ones.
* `Message-ID` is made from the delivery id, the same on every retry, so a client that sees
  a duplicate (after a crash between sending and recording) can drop it.
"""

from __future__ import annotations

import email.policy
import smtplib
import socket
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, parseaddr
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from engine import clock
from engine.actions import ssrf
from engine.actions.http import RESPONSE_BODY_LIMIT, Attempt
from engine.actions.messages import cut, default_message, facts, footer, link, plain, trigger_link
from engine.actions.secrets import Secrets
from engine.actions.templates import render_address, render_text
from engine.actions.webhook import header_value
from engine.exceptions import DeliveryError, PermanentDeliveryError
from engine.rules.actions import EmailAction, mailbox_problem
from engine.settings import Settings

DEFAULT_PORTS = {"smtp": 25, "smtps": 465}
# Headers are not folded below SMTP's limit of 998: Python folds a long Subject right after
# its colon, which some clients show as a leading space.
_POLICY = email.policy.SMTP.clone(max_line_length=998)
_SUBJECT_MAX = 200


@dataclass(frozen=True)
class SmtpServer:
    scheme: str  # smtp | smtps
    host: str
    port: int
    user: str | None
    starttls_required: bool

    @property
    def address(self) -> str:
        """`smtp://host:port`, as the attempt log shows it (no user)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse_server(url: str) -> SmtpServer:
    """ENGINE_SMTP_URL as a server; PermanentDeliveryError saying what is wrong with it."""
    if not url:
        raise PermanentDeliveryError("ENGINE_SMTP_URL is not set (needed by email actions)")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise PermanentDeliveryError("ENGINE_SMTP_URL is not a valid URL") from None
    if parts.password is not None:
        # Never echo the URL here: it holds the password.
        raise PermanentDeliveryError("ENGINE_SMTP_URL must not hold a password: set ENGINE_SMTP_PASSWORD")
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise PermanentDeliveryError(
            f"ENGINE_SMTP_URL must be smtp://[user@]host[:port] or smtps://[user@]host[:port], not {url!r}"
        )
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = set(query) - {"starttls"}
    if unknown or query.get("starttls", "required") != "required":
        raise PermanentDeliveryError(
            f"ENGINE_SMTP_URL: the only query parameter is starttls=required, not {parts.query!r}"
        )
    if "starttls" in query and parts.scheme == "smtps":
        raise PermanentDeliveryError(
            "ENGINE_SMTP_URL: smtps:// is TLS from the start; starttls=required is for smtp://"
        )
    return SmtpServer(
        scheme=parts.scheme,
        host=parts.hostname,
        port=port or DEFAULT_PORTS[parts.scheme],
        user=unquote(parts.username) if parts.username else None,
        starttls_required="starttls" in query,
    )


@lru_cache(maxsize=4)
def _tls_context(ca_file: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    return context


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """The system's CAs, plus ENGINE_SMTP_CA_FILE's."""
    try:
        return _tls_context(str(ca_file) if ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise PermanentDeliveryError(f"ENGINE_SMTP_CA_FILE {str(ca_file)!r} cannot be read: {exc}") from None


class _Pinned(smtplib.SMTP):
    """Connects to the checked addresses (each in turn) instead of looking the name up again;
    the name stays the TLS server name (smtplib uses `_host`, the name given to connect).
    Remembers the answer to DATA, which smtplib drops."""

    pins: Sequence[str] = ()
    data_reply: tuple[int, bytes] | None = None
    _host: str  # smtplib's, undeclared in its stubs

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        failures = []
        for address in self.pins:
            try:
                return socket.create_connection((address, port), timeout, self.source_address)
            except OSError as exc:
                failures.append(f"{address}: {exc}")
        raise OSError("; ".join(failures) or f"{host} was not checked by the address policy")

    def data(self, msg: Any) -> tuple[int, bytes]:
        self.data_reply = super().data(msg)
        return self.data_reply


class _PinnedTLS(smtplib.SMTP_SSL, _Pinned):
    """Implicit TLS (smtps://) over the pinned connection."""


def build_message(
    delivery_id: str, action: EmailAction, ctx: Mapping[str, str], sender: str, to: list[str], cc: list[str]
) -> EmailMessage:
    sentence = render_text(plain(default_message(ctx.get("event_type", ""))), ctx).strip()
    name = ctx.get("automation_name", "")
    if action.subject:
        subject = render_text(action.subject, ctx)
    else:
        subject = f"{name}: {sentence}" if name and sentence else name or sentence
    if action.body:
        body = render_text(action.body, ctx)
    else:
        lines = [sentence, "", *(f"{label}: {value}" for label, value in facts(ctx))]
        if link(ctx):
            lines.append(f"Run page: {link(ctx)}")
        if trigger_link(ctx):
            lines.append(f"Why it fired: {trigger_link(ctx)}")
        body = "\n".join([*lines, "", footer(ctx)]).strip() + "\n"
    message = EmailMessage(policy=_POLICY)
    message["From"] = sender
    message["To"] = ", ".join(to)
    if cc:
        message["Cc"] = ", ".join(cc)
    message["Subject"] = cut(header_value(subject) or "automation fired", _SUBJECT_MAX)
    message["Date"] = format_datetime(clock.now())
    message["Message-ID"] = f"<{delivery_id}@{parseaddr(sender)[1].rpartition('@')[2]}>"
    message["X-Automation-Delivery"] = delivery_id
    message.set_content(body)
    return message


def _recipients(templates: list[str] | None, field: str, ctx: Mapping[str, str]) -> list[str]:
    templates = templates or []
    return [
        render_address(t, field if len(templates) == 1 else f"{field}[{i}]", ctx, mailbox_problem)
        for i, t in enumerate(templates)
    ]


def send(
    delivery_id: str, action: EmailAction, ctx: Mapping[str, str], secrets: Secrets, settings: Settings
) -> Attempt:
    server = parse_server(settings.smtp_url)
    if not settings.smtp_from:
        raise PermanentDeliveryError("ENGINE_SMTP_FROM is not set (needed by email actions)")
    # `ML alerts <alerts@example.com>` or a bare address; the envelope takes the address.
    display, sender = parseaddr(settings.smtp_from)
    problem = mailbox_problem(sender)
    if problem:
        raise PermanentDeliveryError(f"ENGINE_SMTP_FROM {settings.smtp_from!r}: the address {problem}")
    to, cc = _recipients(action.to, "to", ctx), _recipients(action.cc, "cc", ctx)
    message = build_message(delivery_id, action, ctx, formataddr((display, sender)), to, cc)
    record: dict[str, Any] = {"url": server.address, "from": sender, "to": to, "subject": message["Subject"]}
    if cc:
        record["cc"] = cc
    try:
        reply, refused = _deliver(server, message, sender, [*to, *cc], action.timeout, settings)
    except PermanentDeliveryError as exc:
        return Attempt(record, error=str(exc), retryable=False)
    except DeliveryError as exc:
        return Attempt(record, error=str(exc), retryable=True)
    except smtplib.SMTPRecipientsRefused as exc:
        answers = {to: code for to, (code, _) in exc.recipients.items()}
        return Attempt(
            record,
            response_body=_refused_text(exc.recipients),
            error=f"SMTP: every recipient was refused ({', '.join(f'{a} {c}' for a, c in answers.items())})",
            retryable=all(400 <= code < 500 for code in answers.values()),
        )
    except smtplib.SMTPResponseException as exc:
        text = _text(exc.smtp_error)
        return Attempt(
            record,
            response_body=f"{exc.smtp_code} {text}"[:RESPONSE_BODY_LIMIT],
            error=f"SMTP {exc.smtp_code} {text}".strip(),
            retryable=400 <= exc.smtp_code < 500,
        )
    except ssl.SSLCertVerificationError as exc:
        return Attempt(
            record,
            error=f"the SMTP server's certificate was not accepted: {exc.verify_message} "
            "(ENGINE_SMTP_CA_FILE adds a CA to trust)",
            retryable=False,
        )
    except smtplib.SMTPNotSupportedError as exc:
        return Attempt(record, error=f"SMTP: {exc}", retryable=False)
    except (smtplib.SMTPException, OSError) as exc:  # disconnects, timeouts, refused connections
        return Attempt(
            record, error=f"connection to the SMTP server failed: {exc or type(exc).__name__}", retryable=True
        )
    body = f"{reply[0]} {_text(reply[1])}" if reply else "accepted"
    if refused:
        body += "; refused: " + _refused_text(refused)
    return Attempt(record, response_body=body[:RESPONSE_BODY_LIMIT])


def _deliver(
    server: SmtpServer,
    message: EmailMessage,
    sender: str,
    recipients: list[str],
    timeout: float,
    settings: Settings,
) -> tuple[tuple[int, bytes] | None, dict[str, tuple[int, bytes]]]:
    """Connect, secure, log in and send; (the answer to DATA, the refused recipients)."""
    try:
        pins = [str(a) for a in ssrf.check_target(server.host, server.port, settings.webhook_allow_hosts)]
    except PermanentDeliveryError as exc:
        raise PermanentDeliveryError(f"SMTP server (ENGINE_SMTP_URL): {exc}") from None
    context = tls_context(settings.smtp_ca_file)
    conn: _Pinned = (
        _PinnedTLS(timeout=timeout, context=context) if server.scheme == "smtps" else _Pinned(timeout=timeout)
    )
    conn.pins = pins
    # The TLS server name: smtplib takes it from the host given to its constructor, which
    # would connect at once, before the pins are set.
    conn._host = server.host
    with conn:
        conn.connect(server.host, server.port)
        conn.ehlo()
        encrypted = server.scheme == "smtps"
        if not encrypted and conn.has_extn("starttls"):
            conn.starttls(context=context)
            conn.ehlo()
            encrypted = True
        elif not encrypted and server.starttls_required:
            raise PermanentDeliveryError(
                f"the SMTP server {server.address} does not offer STARTTLS, and ENGINE_SMTP_URL says starttls=required"
            )
        if server.user:
            if not encrypted:
                raise PermanentDeliveryError(
                    f"the SMTP server {server.address} offers no TLS: the password is not sent in clear "
                    "(use a server with STARTTLS, or smtps://)"
                )
            if settings.smtp_password is None or not settings.smtp_password.get_secret_value():
                raise PermanentDeliveryError(
                    f"ENGINE_SMTP_URL names the user {server.user!r}, but ENGINE_SMTP_PASSWORD is not set"
                )
            conn.login(server.user, settings.smtp_password.get_secret_value())
        refused = conn.send_message(message, from_addr=sender, to_addrs=recipients)
        return conn.data_reply, refused


def _text(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)


def _refused_text(refused: Mapping[str, tuple[int, bytes]]) -> str:
    return "; ".join(f"{address}: {code} {_text(text)}" for address, (code, text) in refused.items())
