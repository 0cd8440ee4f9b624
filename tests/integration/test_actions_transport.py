"""The HTTP transport of webhooks: the connection goes to the address that was checked
(no second DNS answer), while Host and TLS (SNI, certificate) keep the host name."""

from __future__ import annotations

import ipaddress
import shutil
import socket
import ssl
from pathlib import Path

import pytest

from engine.actions import ssrf, transport
from engine.actions.http import USER_AGENT, post_json
from tests.receiver import Receiver, Reply, make_certificate, server_tls


def test_the_checked_address_is_the_one_connected_to(monkeypatch):
    """DNS rebinding: the first answer (checked, allowed) is used; a later, different
    answer for the same name is never asked for."""
    real = socket.getaddrinfo
    answers = iter(["127.0.0.1"])

    def resolver(host, *args, **kwargs):
        if host == "rebind.test":
            # First answer: the receiver. Any later one: an address nobody listens on.
            return real(next(answers, "127.0.0.2"), *args, **kwargs)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    with Receiver() as rx:
        attempt = post_json(
            f"http://rebind.test:{rx.port}/hook", b"{}", {}, timeout=2, allow_hosts="127.0.0.1"
        )
    assert attempt.succeeded, attempt.error
    assert rx.requests[0].headers["Host"] == f"rebind.test:{rx.port}"


@pytest.fixture
def tls_server(tmp_path: Path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = make_certificate(tmp_path)
    context = server_tls(cert, key)
    with Receiver(lambda r: Reply(200, f"host={r.headers.get('Host')}".encode()), tls=context) as rx:
        yield rx.port, cert


def test_tls_is_verified_against_the_host_name_not_the_pinned_address(
    tls_server, monkeypatch, localhost_layout
):
    port, cert = tls_server
    # The public CAs do not know our test certificate: refused, as it must be.
    refused = post_json(f"https://localhost:{port}/x", b"{}", {}, timeout=3, allow_hosts="localhost")
    assert "certificate verify failed" in refused.error and "mismatch" not in refused.error

    # Trusting it (only the trust store changes), the request connects to the checked
    # addresses in turn (::1 first where localhost has it: nothing listens there), reaches
    # 127.0.0.1, and the certificate is checked against "localhost" (SNI).
    from engine.actions import http as engine_http

    monkeypatch.setattr(engine_http, "_tls_context", lambda: ssl.create_default_context(cafile=str(cert)))
    attempt = post_json(f"https://localhost:{port}/x", b"{}", {}, timeout=3, allow_hosts="localhost")
    assert attempt.http_status == 200 and attempt.response_body == f"host=localhost:{port}"
    # Addressed by IP, the same certificate does not match: the name really is what is checked.
    by_ip = post_json(f"https://127.0.0.1:{port}/x", b"{}", {}, timeout=3, allow_hosts="127.0.0.1")
    assert "IP address mismatch" in by_ip.error


@pytest.fixture
def other_family_refuses():
    """Bind (without listening) the same port on the other loopback address, so a connection
    there is refused for sure, whatever else runs on this machine."""
    held: list[socket.socket] = []

    def hold(family: socket.AddressFamily, address: str, port: int) -> None:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.bind((address, port))
        held.append(sock)

    yield hold
    for sock in held:
        sock.close()


@pytest.mark.parametrize("server", ["127.0.0.1", "::1"])
def test_every_checked_address_is_tried_in_turn(localhost_layout, other_family_refuses, server):
    """localhost resolving to one or both loopback addresses, in either order, and a receiver
    listening on one family only: reached whenever localhost includes its address, also when
    the first address refuses the connection."""
    with Receiver(host=server) as rx:
        other = ("::1", socket.AF_INET6) if server == "127.0.0.1" else ("127.0.0.1", socket.AF_INET)
        other_family_refuses(other[1], other[0], rx.port)
        attempt = post_json(f"http://localhost:{rx.port}/hook", b"{}", {}, timeout=5, allow_hosts="localhost")
    if ipaddress.ip_address(server) in localhost_layout:
        assert attempt.succeeded, attempt.error
        assert [r.headers["Host"] for r in rx.requests] == [f"localhost:{rx.port}"]  # one request, by name
    else:
        assert attempt.retryable and rx.requests == []
        assert attempt.error == "connection failed: [Errno 111] Connection refused", attempt.error


def test_when_every_address_fails_each_is_named(monkeypatch, other_family_refuses):
    with socket.socket() as v4:
        v4.bind(("127.0.0.1", 0))  # bound, not listening: refused
        port = v4.getsockname()[1]
        other_family_refuses(socket.AF_INET6, "::1", port)
        monkeypatch.setattr(
            ssrf, "resolve", lambda host, p: [ipaddress.ip_address("::1"), ipaddress.ip_address("127.0.0.1")]
        )
        attempt = post_json(
            f"http://two.test:{port}/hook", b"{}", {}, timeout=5, allow_hosts="127.0.0.1, ::1"
        )
    assert attempt.retryable
    assert (
        attempt.error
        == "connection failed: ::1: [Errno 111] Connection refused; 127.0.0.1: [Errno 111] Connection refused"
    )


def test_the_request_carries_the_headers_an_http_client_sends():
    """`Host` first, the client's defaults (`Accept` replaced by ours, after the others), ours,
    `Content-Length`; a 303 turns the POST into a GET without body, length or content type."""
    ours = {"Content-Type": "application/json", "accept": "application/json", "X-Custom": "v"}
    with Receiver(Reply(303, headers={"Location": "/next"}), Reply(200)) as rx:
        attempt = post_json(rx.url(), b'{"a":1}', ours, timeout=5, allow_hosts="127.0.0.1")
        assert attempt.succeeded, attempt.error
        posted, followed = rx.wait_for(2)
    assert list(posted.headers.items()) == [
        ("Host", f"127.0.0.1:{rx.port}"),
        ("Connection", "keep-alive"),
        ("Content-Type", "application/json"),
        ("accept", "application/json"),
        ("X-Custom", "v"),
        ("User-Agent", USER_AGENT),
        ("Accept-Encoding", "identity"),
        ("Content-Length", "7"),
    ]
    assert (posted.method, posted.body) == ("POST", b'{"a":1}')
    assert (followed.method, followed.path, followed.body) == ("GET", "/next", b"")
    assert [name for name in followed.headers if name.lower() in ("content-length", "content-type")] == []


# -- kept connections ----------------------------------------------------------------------------


@pytest.fixture
def resolver(monkeypatch):
    """`pool.test` resolves to the addresses in `answers` (the last one repeats); `calls` counts
    the lookups."""

    class Resolver:
        def __init__(self) -> None:
            self.answers = [["127.0.0.1"]]
            self.calls = 0

        def __call__(self, host: str, port: int) -> list[ssrf.IPAddress]:
            self.calls += 1
            answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
            return [ipaddress.ip_address(a) for a in answer]

    found = Resolver()
    monkeypatch.setattr(ssrf, "resolve", found)
    return found


def test_a_connection_is_kept_for_the_next_attempt_to_the_same_target(resolver):
    with Receiver(keep_alive=True) as rx:
        for _ in range(3):
            attempt = post_json(
                f"http://pool.test:{rx.port}/hook", b"{}", {}, timeout=5, allow_hosts="127.0.0.1"
            )
            assert attempt.succeeded, attempt.error
        assert len(rx.requests) == 3 and rx.connections == 1
    assert resolver.calls == 1  # checked once, within CHECK_TTL_SECONDS


def test_a_name_checked_again_to_the_same_address_keeps_its_connection(resolver, monkeypatch):
    monkeypatch.setattr(transport, "CHECK_TTL_SECONDS", 0.0)  # every attempt resolves and checks again
    with Receiver(keep_alive=True) as rx:
        for _ in range(3):
            attempt = post_json(
                f"http://pool.test:{rx.port}/hook", b"{}", {}, timeout=5, allow_hosts="127.0.0.1"
            )
            assert attempt.succeeded, attempt.error
        assert resolver.calls == 3 and rx.connections == 1


def test_another_address_from_dns_gets_a_new_connection(resolver, monkeypatch):
    monkeypatch.setattr(transport, "CHECK_TTL_SECONDS", 0.0)
    resolver.answers = [["127.0.0.1"], ["127.0.0.2"]]
    with Receiver(host="0.0.0.0", keep_alive=True) as rx:  # both loopback addresses reach it
        for _ in range(3):
            attempt = post_json(
                f"http://pool.test:{rx.port}/hook", b"{}", {}, timeout=5, allow_hosts="127.0.0.0/8"
            )
            assert attempt.succeeded, attempt.error
        # 127.0.0.1 once, then 127.0.0.2 twice on one new connection
        assert rx.connections == 2 and len(rx.requests) == 3


def test_a_policy_change_gets_a_new_connection(resolver):
    with Receiver(keep_alive=True) as rx:
        for policy in ("127.0.0.1", "127.0.0.1", "127.0.0.0/8"):
            attempt = post_json(f"http://pool.test:{rx.port}/hook", b"{}", {}, timeout=5, allow_hosts=policy)
            assert attempt.succeeded, attempt.error
        assert rx.connections == 2 and len(rx.requests) == 3


def test_a_kept_connection_never_serves_a_name_that_now_resolves_to_a_refused_address(resolver, monkeypatch):
    """DNS rebinding against the kept connection: once the check is due again, the new answer
    (a private address) refuses the name, whatever connection is open to the old one."""
    monkeypatch.setattr(transport, "CHECK_TTL_SECONDS", 0.0)
    resolver.answers = [["127.0.0.1"], ["10.0.0.1"]]
    with Receiver(keep_alive=True) as rx:
        first = post_json(f"http://pool.test:{rx.port}/hook", b"{}", {}, timeout=5, allow_hosts="127.0.0.1")
        second = post_json(f"http://pool.test:{rx.port}/hook", b"{}", {}, timeout=5, allow_hosts="127.0.0.1")
    assert first.succeeded, first.error
    assert not second.retryable and "private address 10.0.0.1" in second.error
    assert len(rx.requests) == 1
