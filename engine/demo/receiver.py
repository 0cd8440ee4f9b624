"""A webhook receiver on 127.0.0.1 for the demo: it keeps what it receives and checks the
signature the way the README tells receivers to (independently of the engine's own code).

    with Receiver(secret="s3cret") as receiver:      # port 8765, or a free one if taken
        ...                                           # POST http://127.0.0.1:{receiver.port}/hooks/x
        receiver.received                             # [Received(...), ...]
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

DEFAULT_PORT = 8765  # the port the example rules in rules/ post to
MAX_BODY = 1 << 20

Signature = Literal["verified", "bad", "unsigned"]


@dataclass(frozen=True)
class Received:
    at: datetime
    path: str
    delivery_id: str  # X-Automation-Delivery
    signature: Signature
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None


def is_from_engine(secret: str, body: bytes, signature: str) -> bool:
    """The README's check: base64(HMAC-SHA256(secret, body)) over the exact bytes received."""
    expected = base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()
    return hmac.compare_digest(expected, signature)


class Receiver:
    """A threaded HTTP server; `start()` / `stop()`, or use it as a context manager."""

    def __init__(self, secret: str, port: int = DEFAULT_PORT, host: str = "127.0.0.1"):
        self.secret = secret
        self.received: list[Received] = []
        self._lock = threading.Lock()
        handler = _handler_for(self)
        try:
            self._server = ThreadingHTTPServer((host, port), handler)
        except OSError:  # 8765 is taken (another demo, another program): any free port
            self._server = ThreadingHTTPServer((host, 0), handler)
        self._server.daemon_threads = True
        self.host = host
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="demo-receiver", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Receiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def _record(self, item: Received) -> None:
        with self._lock:
            self.received.append(item)


def _handler_for(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(min(length, MAX_BODY))
            sent = self.headers.get("X-Automation-Signature")
            if sent is None:
                signature: Signature = "unsigned"
            else:
                signature = "verified" if is_from_engine(receiver.secret, body, sent) else "bad"
            receiver._record(
                Received(
                    at=datetime.now(UTC),
                    path=self.path,
                    delivery_id=self.headers.get("X-Automation-Delivery", ""),
                    signature=signature,
                    body=body,
                )
            )
            # A real receiver refuses a bad signature; the engine then records a failed delivery.
            status = 401 if signature == "bad" else 200
            answer = (
                b"ok" if self.path.startswith("/slack") else b'{"ok": true}'
            )  # Slack webhooks answer "ok"
            self.send_response(status)
            self.send_header("Content-Type", "text/plain" if answer == b"ok" else "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the demo shows what arrived in its own table

    return Handler
