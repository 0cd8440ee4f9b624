"""The httpx transport of one attempt: connections go only to the addresses the policy
checked, trying each in turn, and every connect, read and write ends by one deadline.

* **Pinned addresses.** `http.py` resolves and checks each hop's host (`ssrf.check_target`)
  and records the checked addresses under the host's name (`Pins`). Connecting to that name
  tries them in order; a connection refused, unreachable or timed out on one goes on to the
  next (a host with `::1` and `127.0.0.1`, or with AAAA and A records, still reaches a server
  listening on only one of them). The name itself is never looked up again, so a second DNS
  answer cannot swap in an unchecked address; a name without pins is refused. The URL keeps
  the host name, so the `Host` header, the TLS server name and the certificate check are
  those of the name, whichever address answered.
* **One deadline.** httpx's `timeout` bounds each socket operation, not the request: a
  receiver that sends its answer one byte at a time, each within the timeout, holds the
  request (and a delivery worker) for as long as it likes — past the delivery's lease, after
  which it is claimed and sent again. Here every operation of one attempt gets at most the
  time left until the attempt's deadline, so `timeout` bounds the whole attempt, redirects
  included (the dispatcher's lease counts on it). Each address gets an equal share of the
  time left for its connect, so one that drops packets leaves time for the next.

Both happen at httpcore's network layer (`network_backend`), the one place every socket
operation passes through. httpx's own transport has no public way to take a backend, so the
attempt's transport is a transport of ours (httpx's documented extension point,
`httpx.BaseTransport`) over an httpcore connection pool that has the backend; it turns
httpcore's errors into httpx's, as httpx's transport does, so callers see only httpx.
Tested in tests/integration/test_fault_receivers.py against a receiver that drips its
headers, and in tests/integration/test_actions_transport.py with both orders of
`localhost`'s addresses.
"""

from __future__ import annotations

import contextlib
import ssl
import time
import typing
from collections.abc import Iterator

import httpcore
import httpx

Pins = dict[str, list[str]]  # host as in the URL (IDNA, no brackets) -> checked addresses, in order


class _AttemptBackend(httpcore.SyncBackend):
    def __init__(self, deadline: float, pins: Pins):
        self.deadline = deadline
        self.pins = pins

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
        addresses = self.pins.get(host)
        if not addresses:  # never looked up here: that would bypass the address check
            raise httpcore.ConnectError(f"{host} was not checked by the address policy")
        options = list(socket_options or ())
        failures: list[str] = []
        for position, address in enumerate(addresses):
            share = self.left(timeout, httpcore.ConnectTimeout) / (len(addresses) - position)
            try:
                stream = super().connect_tcp(address, port, share, local_address, options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                if len(addresses) == 1:
                    raise
                failures.append(f"{address}: {str(exc) or type(exc).__name__}")
                continue
            return _DeadlineStream(stream, self)
        raise httpcore.ConnectError("; ".join(failures))


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream, backend: _AttemptBackend):
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
        stream = self._stream.start_tls(
            ssl_context, server_hostname, self._backend.left(timeout, httpcore.ConnectTimeout)
        )
        return _DeadlineStream(stream, self._backend)

    def get_extra_info(self, info: str) -> typing.Any:
        return self._stream.get_extra_info(info)


# httpcore's errors and httpx's, most specific first: the first match is the one raised.
_ERRORS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.ProxyError, httpx.ProxyError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


@contextlib.contextmanager
def _as_httpx_errors() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        for core, mapped in _ERRORS:
            if isinstance(exc, core):
                raise mapped(str(exc)) from exc
        raise


class _Body(httpx.SyncByteStream):
    """A response body read from httpcore, its errors raised as httpx's."""

    def __init__(self, stream: typing.Iterable[bytes]):
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        with _as_httpx_errors():
            yield from self._stream

    def close(self) -> None:
        close = getattr(self._stream, "close", None)  # releases the connection to the pool
        if close is not None:
            close()


class _AttemptTransport(httpx.BaseTransport):
    def __init__(self, ssl_context: ssl.SSLContext, backend: _AttemptBackend):
        self._pool = httpcore.ConnectionPool(ssl_context=ssl_context, network_backend=backend)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if not isinstance(request.stream, httpx.SyncByteStream):
            raise TypeError("an asynchronous request body reached a synchronous transport")
        url = request.url
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _as_httpx_errors():
            response = self._pool.handle_request(core_request)
        if not isinstance(response.stream, typing.Iterable):
            raise TypeError("httpcore's synchronous pool answered with an asynchronous body")
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_Body(response.stream),
            extensions=response.extensions,
        )

    def close(self) -> None:
        with _as_httpx_errors():
            self._pool.close()


def attempt_transport(deadline: float, ssl_context: ssl.SSLContext, pins: Pins) -> httpx.BaseTransport:
    """A transport for one attempt: connects only to `pins` (filled in by the caller per hop),
    and every socket operation ends by `deadline` (monotonic)."""
    return _AttemptTransport(ssl_context, _AttemptBackend(deadline, pins))
