"""The httpx transport of webhook requests: connections go only to the addresses the policy
checked, trying each in turn, are kept open between attempts to the same checked target, and
every connect, read and write of one attempt ends by one deadline.

* **Pinned addresses.** `http.py` resolves and checks each hop's host (`ssrf.check_target`)
  and asks `Connections.transport` for the transport of that target: (scheme, host, port,
  checked addresses, address policy, TLS context). Its connections go only to those
  addresses, in order; a connection refused, unreachable or timed out on one goes on to the
  next (a host with `::1` and `127.0.0.1`, or with AAAA and A records, still reaches a server
  listening on only one of them). The name itself is never looked up here, so a second DNS
  answer cannot swap in an unchecked address; any other name is refused. The URL keeps the
  host name, so the `Host` header, the TLS server name and the certificate check are those of
  the name, whichever address answered.
* **Kept-alive connections.** A target's transport keeps idle connections (HTTP/1.1
  keep-alive) for KEEPALIVE_SECONDS, so the next attempt to the same target skips the TCP and
  TLS handshakes. A connection is reused only by the same target: when DNS answers another
  address, or the policy changes, the target differs and so do its connections (the old
  target's are closed). `Connections.checked` keeps a name's checked addresses for
  CHECK_TTL_SECONDS; after that the name is resolved and checked again.
* **One deadline.** httpx's `timeout` bounds each socket operation, not the request: a
  receiver that sends its answer one byte at a time, each within the timeout, holds the
  request (and a delivery worker) for as long as it likes — past the delivery's lease, after
  which it is claimed and sent again. Here every operation of one attempt gets at most the
  time left until the attempt's deadline (`attempt_deadline`, set by the thread sending the
  attempt), so `timeout` bounds the whole attempt, redirects included (the dispatcher's lease
  counts on it). Each address gets an equal share of the time left for its connect, so one
  that drops packets leaves time for the next.

Both happen at httpcore's network layer (`network_backend`), the one place every socket
operation passes through. httpx's own transport has no public way to take a backend, so a
target's transport is an httpcore connection pool that has the backend, sent to directly
(`_PinnedTransport.send`: one request, its answer read up to a limit): an httpx request and
response around each attempt cost the dispatcher, whose process is bound by the interpreter,
as much again as httpcore's own work. httpx still parses the URLs (and the callers join
redirects with it), and httpcore's errors are raised as httpx's, so callers see only httpx.
Tested in tests/integration/test_fault_receivers.py against a receiver that drips its
headers, and in tests/integration/test_actions_transport.py with both orders of
`localhost`'s addresses and with a receiver counting the connections it accepts.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import ssl
import threading
import time
import typing
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpcore
import httpx

# Idle connections are closed after this long: shorter than the common servers' keep-alive
# timeouts (Node 5 s, Apache 5 s), so a kept connection is rarely one the server is closing.
KEEPALIVE_SECONDS = 3.0
# A name's checked addresses are used this long before it is resolved and checked again.
CHECK_TTL_SECONDS = 5.0
# Targets whose connections are kept (least recently used ones are closed beyond it).
MAX_TARGETS = 64
# Idle connections kept per target (more are opened when more attempts run at once).
KEEPALIVE_PER_TARGET = 16

_deadline: contextvars.ContextVar[float] = contextvars.ContextVar("attempt_deadline", default=math.inf)


@contextlib.contextmanager
def attempt_deadline(deadline: float) -> Iterator[None]:
    """Every socket operation this thread makes inside ends by `deadline` (monotonic)."""
    token = _deadline.set(deadline)
    try:
        yield
    finally:
        _deadline.reset(token)


@dataclass(frozen=True)
class Target:
    """Where a connection may be reused: the same name, reached at the same checked addresses
    under the same policy (and TLS context)."""

    scheme: str
    host: str  # as in the URL (IDNA, no brackets): what httpcore hands the backend
    port: int
    addresses: tuple[str, ...]  # checked by the policy, in the order to try them
    policy: str  # ENGINE_WEBHOOK_ALLOW_HOSTS as the check used it
    tls: ssl.SSLContext


class _PinnedBackend(httpcore.SyncBackend):
    def __init__(self, host: str, addresses: tuple[str, ...]):
        self.host = host
        self.addresses = addresses

    def left(self, timeout: float | None, error: type[Exception] = httpcore.ReadTimeout) -> float:
        remaining = _deadline.get() - time.monotonic()
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
        if host != self.host or not self.addresses:  # never looked up here: that would bypass the check
            raise httpcore.ConnectError(f"{host} was not checked by the address policy")
        addresses = self.addresses
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
    def __init__(self, stream: httpcore.NetworkStream, backend: _PinnedBackend):
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


@dataclass(frozen=True)
class Reply:
    """An answer: its status, headers and the start of its body (read by `_PinnedTransport.send`)."""

    status: int
    reason: str
    headers: httpx.Headers
    body: bytes


class _PinnedTransport:
    def __init__(self, target: Target):
        self._pool = httpcore.ConnectionPool(
            ssl_context=target.tls,
            max_connections=None,  # one per attempt in flight: a worker never waits for another's
            max_keepalive_connections=KEEPALIVE_PER_TARGET,
            keepalive_expiry=KEEPALIVE_SECONDS,
            network_backend=_PinnedBackend(target.host, target.addresses),
        )

    def send(
        self,
        method: str,
        url: httpx.URL,
        headers: list[tuple[bytes, bytes]],
        body: bytes | None,
        *,
        timeout: float,
        limit: int,
    ) -> Reply:
        """Send one request (its headers complete: `Host` and `Content-Length` included) and
        read at most `limit` bytes of the answer's body, no more than the attempt's deadline
        allows; the rest is never read, nor any of a redirect's. The connection goes back to
        the pool (kept alive when the answer was read whole)."""
        request = httpcore.Request(
            method=method.encode("ascii"),
            url=httpcore.URL(scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path),
            headers=headers,
            content=body,
            extensions={"timeout": {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}},
        )
        with _as_httpx_errors():
            response = self._pool.handle_request(request)
            try:
                if not isinstance(response.stream, typing.Iterable):
                    raise TypeError("httpcore's synchronous pool answered with an asynchronous body")
                received = bytearray()
                redirect = httpx.codes.is_redirect(response.status) and any(
                    name.lower() == b"location" for name, _ in response.headers
                )
                for chunk in () if redirect else response.stream:
                    received += chunk
                    if len(received) >= limit or time.monotonic() > _deadline.get():
                        break
            finally:
                response.close()  # releases the connection to the pool
        reason = response.extensions.get("reason_phrase")
        return Reply(
            status=response.status,
            reason=reason.decode("ascii", errors="ignore")
            if isinstance(reason, bytes)
            else httpx.codes.get_reason_phrase(response.status),
            headers=httpx.Headers(response.headers),
            body=bytes(received[:limit]),
        )

    def close_if_idle(self) -> bool:
        """Close the idle connections; when every one was idle, the whole transport (True)."""
        connections = self._pool.connections
        if all(c.is_idle() or c.is_closed() for c in connections):
            self.close()
            return True
        for connection in connections:
            if connection.is_idle():
                connection.close()
        return False

    def close(self) -> None:
        with _as_httpx_errors():
            self._pool.close()


class Connections:
    """The process's kept connections, by target, and the names' checked addresses.

    `checked(host, port, policy, check)` gives a name's addresses as `check` (the policy)
    returned them, at most CHECK_TTL_SECONDS ago; `transport(target)` the transport of a
    target, made on first use. A name that resolves to other addresses, or a policy that
    changed, makes another target: the previous target of the same (scheme, host, port) is
    closed then, so no connection outlives the check it was made under.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._checked: dict[tuple[str, int, str], tuple[float, tuple[str, ...]]] = {}
        self._transports: OrderedDict[Target, _PinnedTransport] = OrderedDict()
        self._retired: list[_PinnedTransport] = []  # replaced or evicted, a connection still in use

    def checked(
        self, host: str, port: int, policy: str, check: Callable[[], typing.Sequence[object]]
    ) -> tuple[str, ...]:
        key = (host, port, policy)
        now = time.monotonic()
        with self._lock:
            found = self._checked.get(key)
        if found is not None and now - found[0] < CHECK_TTL_SECONDS:
            return found[1]
        addresses = tuple(str(a) for a in check())  # raises when refused: nothing is kept
        with self._lock:
            self._checked[key] = (now, addresses)
            if len(self._checked) > 4 * MAX_TARGETS:  # names no longer sent to
                for stale in [k for k, v in self._checked.items() if now - v[0] >= CHECK_TTL_SECONDS]:
                    del self._checked[stale]
        return addresses

    def transport(self, target: Target) -> _PinnedTransport:
        with self._lock:
            found = self._transports.get(target)
            if found is not None:
                self._transports.move_to_end(target)
                return found
            for other in list(self._transports):
                if (other.scheme, other.host, other.port) == (target.scheme, target.host, target.port):
                    self._retired.append(self._transports.pop(other))
            found = self._transports[target] = _PinnedTransport(target)
            while len(self._transports) > MAX_TARGETS:
                self._retired.append(self._transports.popitem(last=False)[1])
            retired, self._retired = self._retired, []
        # An attempt may still be using a retired target's connection: close the target once
        # it is not (and its idle connections now); until then it is looked at on each new target.
        busy = [t for t in retired if not t.close_if_idle()]
        if busy:
            with self._lock:
                self._retired += busy
        return found

    def clear(self) -> None:
        """Forget every checked name and close every kept connection."""
        with self._lock:
            transports = [*self._transports.values(), *self._retired]
            self._transports.clear()
            self._retired.clear()
            self._checked.clear()
        for transport in transports:
            transport.close()


CONNECTIONS = Connections()
