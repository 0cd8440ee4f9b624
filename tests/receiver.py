"""The one webhook receiver of the tests (and benches): a real HTTP server on 127.0.0.1 (or
::1, or over TLS) that records every request and answers from a script. And its SMTP
counterpart (`SmtpReceiver`, aiosmtpd in a thread: STARTTLS or implicit TLS, AUTH, scripted
answers), with `make_certificate` for a throwaway TLS certificate.

    with Receiver(Reply(500), Reply(200)) as rx:       # 500 first, then 200 for ever
        post(rx.url())
        rx.wait_for(2)                                 # [Received(...), Received(...)]

A reply can wait (`hang`, released early by `release` or at exit) or misbehave at the
socket level (`misbehave`: a reset, half a status line then a reset, a dripping answer);
a function of the request can replace the script (`Responder`).

Run as a script (`python tests/receiver.py`), it is the misbehaving receiver: in a process
of its own (so that measuring the dispatcher's memory does not count the receiver's), it
prints its port and misbehaves by the path's first segment (see `Misbehaving`).
"""

from __future__ import annotations

import json
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    body: bytes = b"ok"
    headers: dict[str, str] = field(default_factory=dict)
    hang: float = 0.0  # seconds to wait before answering (released early by Receiver.release)
    # "reset": RST before any answer; "reset-mid": half a status line, then RST;
    # "drip": a status line, then one header line every 0.2 s for a minute
    misbehave: Literal["reset", "reset-mid", "drip"] | None = None


Responder = Callable[[Received], Reply]


class Receiver:
    """A real HTTP server on 127.0.0.1 (or `host`, e.g. ::1; over TLS with `tls`) that records
    requests and answers from a script: the replies given are used in order, the last one
    repeats. Or give a function of the request. It closes each connection after its answer,
    unless `keep_alive` (HTTP/1.1 keep-alive; `connections` counts the connections accepted)."""

    def __init__(
        self,
        *replies: Reply | Responder,
        port: int = 0,
        host: str = "127.0.0.1",
        tls: ssl.SSLContext | None = None,
        keep_alive: bool = False,
    ):
        self.keep_alive = keep_alive
        self.connections = 0
        self.requests: list[Received] = []
        self.answered: list[tuple[Received, int]] = []  # (request, status) of each answer fully written
        self._replies = list(replies) or [Reply()]
        self._lock = threading.Lock()
        self.release = threading.Event()
        self.arrived = threading.Condition()
        self._server = (_IPv6Server if ":" in host else _Server)((host, port), _handler_for(self))
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self.port: int = self._server.server_address[1]
        self.scheme = "https" if tls is not None else "http"
        self._thread = threading.Thread(target=self._server.serve_forever, name="test-receiver", daemon=True)

    def _next(self, request: Received) -> Reply:
        with self._lock:
            self.requests.append(request)
            item = self._replies.pop(0) if len(self._replies) > 1 else self._replies[0]
        with self.arrived:
            self.arrived.notify_all()
        return item(request) if callable(item) else item

    def url(self, path: str = "/hook") -> str:
        host = self._server.server_address[0]
        return f"{self.scheme}://{f'[{host}]' if ':' in host else host}:{self.port}{path}"

    def received(self, count: int, timeout: float = 10.0) -> bool:
        """Whether `count` requests arrived within `timeout` seconds."""
        with self.arrived:
            return self.arrived.wait_for(lambda: len(self.requests) >= count, timeout)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        if not self.received(count, timeout):
            raise AssertionError(f"expected {count} requests, got {len(self.requests)}")
        return self.requests

    def start(self) -> Receiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _handler_for(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # keep test output clean
            pass

        def setup(self) -> None:
            super().setup()
            with receiver._lock:
                receiver.connections += 1

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            request = Received(self.command, self.path, dict(self.headers.items()), self.rfile.read(length))
            reply = receiver._next(request)
            if reply.hang:
                receiver.release.wait(reply.hang)
            self.close_connection = not receiver.keep_alive
            if reply.misbehave == "reset":
                self._reset()
            elif reply.misbehave == "reset-mid":
                self.wfile.write(b"HTTP/1.1 2")
                self._reset()
            elif reply.misbehave == "drip":
                self._drip()
            elif self._answer(reply):
                with receiver._lock:
                    receiver.answered.append((request, reply.status))

        do_POST = do_GET = _handle

        def _answer(self, reply: Reply) -> bool:
            try:
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                if not receiver.keep_alive:
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(reply.body)
                self.wfile.flush()
            except OSError:
                return False  # the client gave up (its timeout) or died
            return True

        def _drip(self) -> None:
            try:
                self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                for _ in range(300):
                    self.wfile.write(b"X-Drip: 1\r\n")
                    if receiver.release.wait(0.2):
                        return
            except OSError:
                pass

        def _reset(self) -> None:
            # SO_LINGER with a zero timeout: close() sends RST instead of FIN
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a write to a connection the client (or a reply's reset) closed: expected here


class _IPv6Server(_Server):
    address_family = socket.AF_INET6


def free_port() -> int:
    """A port nothing listens on (for "endpoint down")."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_certificate(folder: Path, name: str = "localhost") -> tuple[Path, Path]:
    """A throwaway self-signed certificate for `name` (and its key), made by openssl; the
    certificate doubles as the CA file a client trusts."""
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            f"/CN={name}",
            "-addext",
            f"subjectAltName=DNS:{name}",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def server_tls(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


@dataclass
class Mail:
    """One message an SmtpReceiver accepted (or answered), as the client sent it."""

    sender: str
    recipients: list[str]
    data: bytes
    tls: bool  # the session was encrypted (STARTTLS or implicit TLS)
    login: str | None  # the user that logged in

    @property
    def message(self) -> EmailMessage:
        parsed = message_from_bytes(self.data, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


class SmtpReceiver:
    """A real SMTP server (aiosmtpd) on 127.0.0.1 that records what it gets and answers DATA
    from a script (the answers given are used in order, the last one repeats; `None`: accept).

        with SmtpReceiver(tls=context, users={"bot": "pw"}) as smtp:    # STARTTLS + AUTH required
            ...; smtp.wait_for(1)[0].message["Subject"]

    `tls` with `implicit=True` speaks TLS from the first byte (smtps://); without `tls` the
    server offers no STARTTLS. `users` makes AUTH (PLAIN, LOGIN) required, over TLS only.
    """

    def __init__(
        self,
        *data_answers: str | None,
        tls: ssl.SSLContext | None = None,
        implicit: bool = False,
        users: dict[str, str] | None = None,
        rcpt_answer: Callable[[str], str | None] | None = None,
    ):
        from aiosmtpd.controller import Controller  # a dev dependency: only the SMTP tests need it
        from aiosmtpd.smtp import AuthResult, LoginPassword

        self.mails: list[Mail] = []
        self.logins: list[tuple[str, bool]] = []  # (user, accepted)
        self._answers = list(data_answers) or [None]
        self._lock = threading.Lock()
        self.arrived = threading.Condition()
        users = users or {}

        def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
            ok = isinstance(data, LoginPassword) and users.get(data.login.decode()) == data.password.decode()
            login = data.login.decode() if isinstance(data, LoginPassword) else ""
            with self._lock:
                self.logins.append((login, ok))
            return AuthResult(success=ok, handled=False, auth_data=data)

        receiver = self

        class Handler:
            async def handle_RCPT(
                self, server: Any, session: Any, envelope: Any, address: str, options: Any
            ) -> str:
                answer = rcpt_answer(address) if rcpt_answer else None
                if answer is None:
                    envelope.rcpt_tos.append(address)
                    return "250 OK"
                return answer

            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                with receiver._lock:
                    answer = receiver._answers.pop(0) if len(receiver._answers) > 1 else receiver._answers[0]
                    receiver.mails.append(
                        Mail(
                            envelope.mail_from,
                            list(envelope.rcpt_tos),
                            envelope.original_content or envelope.content,
                            implicit or session.ssl is not None,
                            session.auth_data.login.decode()
                            if isinstance(session.auth_data, LoginPassword)
                            else None,
                        )
                    )
                with receiver.arrived:
                    receiver.arrived.notify_all()
                return answer or "250 2.0.0 OK queued as TEST1"

        options: dict[str, Any] = {}
        if tls is not None and implicit:
            options["ssl_context"] = tls
        elif tls is not None:
            options |= {"tls_context": tls, "require_starttls": True}
        if users:
            # Implicit TLS is not a session aiosmtpd counts as TLS (the socket is TLS all the same),
            # so there AUTH is offered without being required (aiosmtpd warns at the pairing).
            options |= {
                "authenticator": authenticator,
                "auth_required": not implicit,
                "auth_require_tls": not implicit,
            }
        self.port = free_port()
        self.scheme = "smtps" if implicit else "smtp"
        self._controller = Controller(Handler(), hostname="127.0.0.1", port=self.port, **options)

    def url(self, user: str | None = None, host: str = "localhost", query: str = "") -> str:
        """ENGINE_SMTP_URL of this server (by the name its certificate is for)."""
        return f"{self.scheme}://{f'{user}@' if user else ''}{host}:{self.port}" + (
            f"?{query}" if query else ""
        )

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Mail]:
        with self.arrived:
            if not self.arrived.wait_for(lambda: len(self.mails) >= count, timeout):
                raise AssertionError(f"expected {count} messages, got {len(self.mails)}")
        return self.mails

    def __enter__(self) -> SmtpReceiver:
        self._controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._controller.stop()


# -- the misbehaving receiver ------------------------------------------------------------------
BIG = b"x" * (10 * 1024 * 1024)


class Misbehaving:
    """Misbehaves by the path's first segment (the rest makes the path, and its state, unique
    to a test):

        /ok/...            200 at once
        /hang/...          nothing for 60 s (longer than any timeout)
        /drip/...          a status line, then one header line every 0.2 s for 60 s
        /reset/...         the connection is reset (RST) before any answer
        /reset-once/...    reset on each delivery's first request, then 200
        /reset-mid/...     half a status line, then a reset, on each delivery's first request; then 200
        /flaky-N/...       500 until N seconds after the path's first request, then 200
        /limited/...       429 with Retry-After: 1 on each delivery's first request, then 200
        /big/...           200 with a 10 MB body
        /bounce/...        302 to http://[::1]:9/x (a private address)

    `GET /seen` answers {path: [[delivery id, status answered or "reset"/"drip"/"hang"], ...]}.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[str, list[list[str]]] = {}
        self._first: dict[str, float] = {}
        self._ids: set[tuple[str, str]] = set()

    def __call__(self, request: Received) -> Reply:
        if request.method == "GET":
            with self._lock:
                return Reply(200, json.dumps(self._seen).encode())
        kind = request.path.split("/")[1]
        delivery = request.headers.get("X-Automation-Delivery", "")
        with self._lock:
            first_of_path = self._first.setdefault(request.path, time.monotonic())
            first_of_delivery = (request.path, delivery) not in self._ids
            self._ids.add((request.path, delivery))
        if kind == "hang":
            seen, reply = "hang", Reply(hang=60)
        elif kind == "drip":
            seen, reply = "drip", Reply(misbehave="drip")
        elif kind == "reset" or (kind == "reset-once" and first_of_delivery):
            seen, reply = "reset", Reply(misbehave="reset")
        elif kind == "reset-mid" and first_of_delivery:
            seen, reply = "reset", Reply(misbehave="reset-mid")
        elif kind.startswith("flaky-") and time.monotonic() - first_of_path < float(kind.split("-")[1]):
            seen, reply = "500", Reply(500, b"down for a while")
        elif kind == "limited" and first_of_delivery:
            seen, reply = "429", Reply(429, b"slow down", {"Retry-After": "1"})
        elif kind == "big":
            seen, reply = "200", Reply(200, BIG)
        elif kind == "bounce":
            seen, reply = "302", Reply(302, b"", {"Location": "http://[::1]:9/x"})
        else:
            seen, reply = "200", Reply(200, b"ok")
        with self._lock:
            self._seen.setdefault(request.path, []).append([delivery, seen])
        return reply


def main() -> None:
    receiver = Receiver(Misbehaving()).start()
    print(receiver.port, flush=True)
    receiver._thread.join()


if __name__ == "__main__":
    sys.exit(main())
