"""An httpx transport whose connects, reads and writes all end by one deadline.

httpx's `timeout` bounds each socket operation, not the request: a receiver that sends its
answer one byte at a time, each within the timeout, holds the request (and a delivery worker)
for as long as it likes — past the delivery's lease, after which it is claimed and sent again.
Here every operation of one attempt gets at most the time left until the attempt's deadline,
so `timeout` bounds the whole attempt, redirects included (the dispatcher's lease counts on it).

The deadline is enforced at httpcore's network layer (`network_backend`), the one place every
socket operation passes through; httpx has no public way to hand a backend to its transport,
so `deadline_transport` sets the transport's connection pool itself (tested in
tests/integration/test_fault_receivers.py against a receiver that drips its headers).
"""

from __future__ import annotations

import ssl
import time
import typing

import httpcore
import httpx


class _DeadlineBackend(httpcore.SyncBackend):
    def __init__(self, deadline: float):
        self.deadline = deadline

    def left(self, timeout: float | None, error: type[Exception] = httpcore.ReadTimeout) -> float:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise error("the attempt's deadline has passed")
        return remaining if timeout is None else min(timeout, remaining)

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[typing.Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = super().connect_tcp(host, port, self.left(timeout, httpcore.ConnectTimeout), local_address, socket_options)
        return _DeadlineStream(stream, self)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream, backend: _DeadlineBackend):
        self._stream, self._backend = stream, backend

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, self._backend.left(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, self._backend.left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        stream = self._stream.start_tls(ssl_context, server_hostname, self._backend.left(timeout, httpcore.ConnectTimeout))
        return _DeadlineStream(stream, self._backend)

    def get_extra_info(self, info: str) -> typing.Any:
        return self._stream.get_extra_info(info)


def deadline_transport(deadline: float, ssl_context: ssl.SSLContext) -> httpx.HTTPTransport:
    """A transport for one attempt: every socket operation ends by `deadline` (monotonic)."""
    transport = httpx.HTTPTransport(verify=ssl_context, trust_env=False)
    transport._pool = httpcore.ConnectionPool(ssl_context=ssl_context, network_backend=_DeadlineBackend(deadline))
    return transport
