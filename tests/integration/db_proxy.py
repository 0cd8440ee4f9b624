"""Real TCP endpoints standing in for a database that is down, or that never answers.

- `Proxy`: 127.0.0.1:<port> forwarding to the test cluster's Unix socket. Down (nothing
  listens: connections are refused, as by a stopped server) until `up()`; `down()` again
  closes the listener and every forwarded connection, as a server restart would.
- `BlackHole`: accepts connections and never sends a byte (a firewall that drops packets
  after the handshake, a hung server).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Listener:
    def __init__(self) -> None:
        self.port = free_port()
        self._server: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def url(self, dbname: str, user: str = "engine", password: str | None = None) -> str:
        auth = f"{user}:{password}" if password else user
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{dbname}"

    def up(self) -> None:
        self._server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self._server,), daemon=True).start()

    def down(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
            server, self._server = self._server, None
        for s in [server, *sockets]:
            if s is not None:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:  # closed by down()
                return
            with self._lock:
                self._sockets.append(client)
            self.serve(client)

    def keep(self, s: socket.socket) -> None:
        with self._lock:
            self._sockets.append(s)

    def serve(self, client: socket.socket) -> None:
        raise NotImplementedError


class Proxy(_Listener):
    def __init__(self, socket_path: Path):
        super().__init__()
        self.target = str(socket_path)

    def serve(self, client: socket.socket) -> None:
        upstream = socket.socket(socket.AF_UNIX)
        upstream.connect(self.target)
        self.keep(upstream)
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pump, args=(a, b), daemon=True).start()


class BlackHole(_Listener):
    def serve(self, client: socket.socket) -> None:
        pass  # kept open, never read, never answered


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)
