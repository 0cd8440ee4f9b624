"""Webhook receivers that misbehave, in a process of their own (so that measuring the
dispatcher's memory does not count theirs). `python misbehaving_receiver.py` prints its port.

The path's first segment says how to misbehave (the rest makes the path, and its state,
unique to a test):

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

from __future__ import annotations

import json
import socket
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BIG = b"x" * (10 * 1024 * 1024)
_lock = threading.Lock()
_seen: dict[str, list[list[str]]] = {}
_first: dict[str, float] = {}
_ids: set[tuple[str, str]] = set()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        with _lock:
            body = json.dumps(_seen).encode()
        self._answer(200, body)

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        kind = self.path.split("/")[1]
        delivery = self.headers.get("X-Automation-Delivery", "")
        with _lock:
            first_of_path = _first.setdefault(self.path, time.monotonic())
            first_of_delivery = (self.path, delivery) not in _ids
            _ids.add((self.path, delivery))
        if kind == "hang":
            self._note(delivery, "hang")
            time.sleep(60)
        elif kind == "drip":
            self._note(delivery, "drip")
            self._drip()
        elif kind == "reset" or (kind == "reset-once" and first_of_delivery):
            self._note(delivery, "reset")
            self._reset()
        elif kind == "reset-mid" and first_of_delivery:
            self._note(delivery, "reset")
            self.wfile.write(b"HTTP/1.1 2")
            self._reset()
        elif kind.startswith("flaky-") and time.monotonic() - first_of_path < float(kind.split("-")[1]):
            self._note(delivery, "500")
            self._answer(500, b"down for a while")
        elif kind == "limited" and first_of_delivery:
            self._note(delivery, "429")
            self._answer(429, b"slow down", {"Retry-After": "1"})
        elif kind == "big":
            self._note(delivery, "200")
            self._answer(200, BIG)
        elif kind == "bounce":
            self._note(delivery, "302")
            self._answer(302, b"", {"Location": "http://[::1]:9/x"})
        else:
            self._note(delivery, "200")
            self._answer(200, b"ok")

    def _note(self, delivery: str, what: str) -> None:
        with _lock:
            _seen.setdefault(self.path, []).append([delivery, what])

    def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        try:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # the sender gave up (its deadline)
            self.close_connection = True

    def _drip(self) -> None:
        try:
            self.wfile.write(b"HTTP/1.1 200 OK\r\n")
            for _ in range(300):
                self.wfile.write(b"X-Drip: 1\r\n")
                time.sleep(0.2)
        except OSError:
            pass
        self.close_connection = True

    def _reset(self) -> None:
        # SO_LINGER with a zero timeout: close() sends RST instead of FIN
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # writes to a reset connection: expected here


def main() -> None:
    server = Server(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
