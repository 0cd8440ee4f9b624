"""Redirects to forbidden addresses: a receiver on an allowed host (127.0.0.1) answers with a
redirect to a refused target; the redirect is refused before anything connects to it, at any
hop, whatever spelling the Location uses. (No database: `post_json` is the transport every
webhook and Slack incoming webhook uses.)"""

from __future__ import annotations

import time

import pytest

from engine.actions.http import post_json
from tests.receiver import Receiver, Reply

REFUSED_TARGETS = {
    "http://169.254.169.254/latest/meta-data/": "169.254.169.254 (cloud metadata)",
    "http://2852039166/latest/meta-data/": "169.254.169.254 (cloud metadata)",
    "http://0xa9fea9fe/": "169.254.169.254 (cloud metadata)",
    "//169.254.169.254/x": "169.254.169.254 (cloud metadata)",  # scheme-relative
    "http://[::ffff:a9fe:a9fe]/": "::ffff:a9fe:a9fe (IPv4 169.254.169.254 inside IPv6, cloud metadata)",
    "http://[fd00:ec2::254]/": "fd00:ec2::254 (cloud metadata)",
    "http://10.0.0.1/admin": "10.0.0.1 (private)",  # would hang until the timeout if connected
    "http://0x0a000001/": "10.0.0.1 (private)",
    "http://192.168.1.1/": "192.168.1.1 (private)",
    "http://0.0.0.0:9/": "0.0.0.0 (unspecified)",  # reaches this machine on Linux
    "http://[::]:9/": ":: (unspecified)",
    "http://127.0.0.2:9/": "127.0.0.2 (loopback)",  # next to the allowed 127.0.0.1
    "http://[::1]:9/": "::1 (loopback)",
    "http://[fe80::1]/": "fe80::1 (link-local)",
    "http://[fc00::1]/": "fc00::1 (private)",
}


@pytest.mark.parametrize(("location", "reason"), REFUSED_TARGETS.items())
@pytest.mark.parametrize("status", [302, 307])
def test_a_redirect_to_a_refused_address_is_refused(location, reason, status):
    with Receiver(Reply(status, b"", {"Location": location})) as rx:
        started = time.monotonic()
        attempt = post_json(
            rx.url("/hook"), b"{}", {"Authorization": "Bearer tok"}, timeout=10, allow_hosts="127.0.0.1"
        )
        elapsed = time.monotonic() - started
    assert len(rx.requests) == 1
    assert attempt.error is not None and not attempt.retryable, attempt
    assert f"resolves to a private address {reason}" in attempt.error, attempt.error
    assert elapsed < 3, "the refused target was connected to"


def test_the_refusal_holds_at_any_hop():
    with Receiver(Reply(308, b"", {"Location": "http://169.254.169.254/"})) as second:
        with Receiver(Reply(307, b"", {"Location": second.url("/next")})) as first:
            attempt = post_json(first.url("/hook"), b'{"a": 1}', {}, timeout=10, allow_hosts="127.0.0.1")
    assert [r.path for r in first.requests] == ["/hook"] and [r.path for r in second.requests] == ["/next"]
    assert second.requests[0].body == b'{"a": 1}'  # 307 repeats the POST
    assert "169.254.169.254 (cloud metadata)" in attempt.error


def test_allowing_a_name_does_not_allow_redirects_to_its_address(localhost_layout):
    """With only the *name* localhost allowed, a redirect to 127.0.0.1 is another target
    (the receivers listen on 127.0.0.1 only: where localhost is ::1 first, that is tried first)."""
    with Receiver(Reply(302, b"", {"Location": "/elsewhere"})) as same, Receiver(Reply(200)) as other:
        relative = post_json(
            f"http://localhost:{same.port}/hook", b"{}", {}, timeout=10, allow_hosts="localhost"
        )
        # a relative redirect stays on localhost: followed (as a GET, 302), and answered 302 again
        assert [r.path for r in same.requests][:2] == ["/hook", "/elsewhere"]
        assert relative.error and "redirect" in relative.error
        with Receiver(Reply(302, b"", {"Location": other.url("/x")})) as rx:
            attempt = post_json(
                f"http://localhost:{rx.port}/hook", b"{}", {}, timeout=10, allow_hosts="localhost"
            )
    assert other.requests == []
    assert "resolves to a private address 127.0.0.1 (loopback)" in attempt.error


@pytest.mark.parametrize(
    "location",
    ["file:///etc/passwd", "gopher://127.0.0.1:25/x", "ftp://127.0.0.1/", "dict://127.0.0.1:11211/"],
)
def test_a_redirect_to_another_scheme_is_refused(location):
    with Receiver(Reply(302, b"", {"Location": location})) as rx:
        attempt = post_json(rx.url("/hook"), b"{}", {}, timeout=10, allow_hosts="127.0.0.1")
    assert len(rx.requests) == 1
    assert attempt.error and not attempt.retryable
    assert "non-http" in attempt.error or "bad webhook URL" in attempt.error, attempt.error
