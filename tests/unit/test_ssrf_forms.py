"""Webhook address policy, every spelling of a forbidden target (SPEC section 3, "Addresses";
issue 7, "SSRF"). No network: literals are decoded by getaddrinfo itself, names come from
/etc/hosts, and a refused target is refused before any connection is attempted.

test_actions_policy.py checks `why_forbidden` on addresses and a few loopback spellings;
this file covers the forms an attacker would try: decimal, hex and octal IPv4, short forms,
IPv6 (loopback, link-local with a zone, unique-local, unspecified, IPv4-mapped/compatible,
NAT64, 6to4), the metadata addresses in each form, names that resolve to them, and URL
tricks (userinfo, fragments, a trailing dot, full-width dots) through `post_json`.
Redirects to such addresses are in tests/integration/test_ssrf_redirects.py.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import time
from pathlib import Path

import pytest

from engine.actions import ssrf
from engine.actions.http import post_json
from engine.exceptions import PermanentDeliveryError

FORMS = {
    # loopback
    "127.0.0.1": "loopback", "127.1": "loopback", "127.000.000.001": "loopback", "0177.0.0.1": "loopback",
    "2130706433": "loopback", "0x7f000001": "loopback", "0x7f.1": "loopback", "127.0.0.1.": "loopback",
    "127.255.255.254": "loopback",
    # private
    "10.0.0.1": "private", "167772161": "private", "0x0a000001": "private", "10.1": "private", "172.31.255.255": "private",
    "192.168.0.1": "private", "100.64.0.1": "not globally routable",
    # link-local and cloud metadata
    "169.254.1.1": "link-local", "169.254.169.254": "cloud metadata", "2852039166": "cloud metadata",
    "0xa9fea9fe": "cloud metadata", "0251.0376.0251.0376": "cloud metadata", "0xA9.0xFE.0xA9.0xFE": "cloud metadata",
    "169.254.43518": "cloud metadata",
    # unspecified (connecting to 0.0.0.0 reaches this machine on Linux)
    "0": "unspecified", "0.0.0.0": "unspecified",
    # IPv6
    "[::1]": "loopback", "[0:0:0:0:0:0:0:1]": "loopback", "[::]": "unspecified", "[fe80::1]": "link-local",
    "[fe80::1%eth0]": "link-local", "[fc00::1]": "private", "[fd12:3456::1]": "private", "[fd00:ec2::254]": "cloud metadata",
    "[ff02::1]": "multicast", "[::ffff:127.0.0.1]": "IPv4 127.0.0.1 inside IPv6, loopback",
    "[::ffff:7f00:1]": "IPv4 127.0.0.1 inside IPv6, loopback", "[0:0:0:0:0:ffff:127.0.0.1]": "IPv4 127.0.0.1 inside IPv6",
    "[::ffff:169.254.169.254]": "IPv4 169.254.169.254 inside IPv6, cloud metadata",
    "[::ffff:10.0.0.1]": "IPv4 10.0.0.1 inside IPv6, private", "[::127.0.0.1]": "reserved",
    "[64:ff9b::a9fe:a9fe]": "IPv4 169.254.169.254 inside IPv6, cloud metadata",
    "[2002:a9fe:a9fe::]": "IPv4 169.254.169.254 inside IPv6, cloud metadata", "[2002:7f00:1::]": "IPv4 127.0.0.1 inside IPv6",
}  # fmt: skip


@pytest.mark.parametrize(("host", "reason"), FORMS.items())
def test_every_form_of_a_forbidden_address_is_refused(host, reason):
    with pytest.raises(PermanentDeliveryError) as refused:
        ssrf.check_target(host, 80, "")
    message = str(refused.value)
    assert f"({reason}" in message, message
    # Advice to allow-list it, except for the metadata endpoint (it hands out credentials).
    assert ("allow it with ENGINE_WEBHOOK_ALLOW_HOSTS" in message) == ("cloud metadata" not in reason), (
        message
    )


METADATA_FORMS = [host for host, reason in FORMS.items() if "cloud metadata" in reason]
RANGES = ["0.0.0.0/0", "::/0", "0.0.0.0/0,::/0", "169.254.0.0/16", "169.254.169.0/24", "fd00::/8", "fd00:ec2::/64",
          "::ffff:0:0/96", "64:ff9b::/96", "2002::/16", "fd00:ec2::254/127"]  # fmt: skip


@pytest.mark.parametrize("host", METADATA_FORMS)
def test_no_range_opens_a_metadata_address(host):
    for allow in RANGES:
        with pytest.raises(PermanentDeliveryError) as refused:
            ssrf.check_target(host, 80, allow)
        message = str(refused.value)
        assert "cloud metadata" in message and "allow it with" not in message, (allow, message)
    # Saying why the range that covers it did not open it.
    with pytest.raises(
        PermanentDeliveryError, match="a range, or a name that also resolves to other addresses, does not"
    ):
        ssrf.check_target(host, 80, "0.0.0.0/0,::/0")


def test_a_range_still_opens_ordinary_private_addresses():
    for host in ("10.0.0.1", "192.168.1.1", "127.0.0.1", "[::1]", "[fd12:3456::1]", "169.254.1.1"):
        assert ssrf.check_target(host, 80, "0.0.0.0/0,::/0")


@pytest.mark.parametrize(
    ("allow", "host"),
    [("169.254.169.254", "169.254.169.254"), ("169.254.169.254", "2852039166"), ("169.254.169.254", "0xa9fea9fe"),
     ("169.254.169.254/32", "169.254.169.254"), ("169.254.169.254", "[::ffff:169.254.169.254]"),
     ("fd00:ec2::254", "[fd00:ec2::254]"), ("[fd00:ec2::254]", "[fd00:ec2::254]"), ("fd00:ec2::254/128", "[fd00:ec2::254]")],
)  # fmt: skip
def test_an_exact_entry_opens_a_metadata_address(allow, host):
    assert ssrf.check_target(host, 80, f"10.0.0.0/8, {allow}") == [
        ipaddress.ip_address(
            "fd00:ec2::254"
            if "fd00" in host
            else "::ffff:169.254.169.254"
            if "ffff" in host
            else "169.254.169.254"
        )
    ]


def test_one_metadata_address_listed_does_not_open_the_other():
    with pytest.raises(PermanentDeliveryError, match="fd00:ec2::254 \\(cloud metadata\\)"):
        ssrf.check_target("[fd00:ec2::254]", 80, "169.254.169.254")
    with pytest.raises(PermanentDeliveryError, match=re.escape("169.254.169.254 (cloud metadata)")):
        ssrf.check_target("169.254.169.254", 80, "fd00:ec2::254, 169.254.169.253")


def fake_dns(monkeypatch, answers: dict[str, list[str]]) -> None:
    """Names answered from `answers`; anything else as the real resolver says."""
    real = ssrf.resolve

    def resolve(host, port):
        name = host.rstrip(".").lower()
        return [ipaddress.ip_address(a) for a in answers[name]] if name in answers else real(host, port)

    monkeypatch.setattr(ssrf, "resolve", resolve)


def test_a_listed_name_opens_a_metadata_address_only_when_it_resolves_to_nothing_else(monkeypatch):
    fake_dns(monkeypatch, {"metadata.internal": ["169.254.169.254", "fd00:ec2::254"],
                           "mixed.internal": ["10.0.0.7", "169.254.169.254"]})  # fmt: skip
    assert len(ssrf.check_target("metadata.internal", 80, "metadata.internal")) == 2
    with pytest.raises(PermanentDeliveryError) as refused:
        ssrf.check_target("mixed.internal", 80, "mixed.internal")
    assert "169.254.169.254 (cloud metadata)" in str(refused.value) and "allow it with" not in str(
        refused.value
    )
    # Listed by address, the name's metadata address is open; 10.0.0.7 still needs its own entry.
    assert len(ssrf.check_target("mixed.internal", 80, "169.254.169.254, 10.0.0.0/8")) == 2
    with pytest.raises(PermanentDeliveryError, match=re.escape("10.0.0.7 (private); allow it with")):
        ssrf.check_target("mixed.internal", 80, "169.254.169.254")


def _hosts_file_names() -> list[str]:
    """Names /etc/hosts gives a non-public address (localhost, the machine's own name, …)."""
    names = set()
    for line in Path("/etc/hosts").read_text().splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2:
            try:
                address = ipaddress.ip_address(fields[0])
            except ValueError:
                continue
            if ssrf.why_forbidden(address):
                names.update(fields[1:])
    return sorted(names)


HOSTS_NAMES = _hosts_file_names()


@pytest.mark.parametrize("name", HOSTS_NAMES + [n.upper() + "." for n in HOSTS_NAMES[:1]])
def test_names_that_resolve_to_forbidden_addresses_are_refused(name):
    # localhost, ip6-localhost (where /etc/hosts has it), the machine's own name…; a
    # trailing dot and capitals change nothing
    with pytest.raises(PermanentDeliveryError, match=r"resolves to a private address"):
        ssrf.check_target(name, 80, "")


def test_the_hosts_file_gives_names_to_test():
    assert "localhost" in HOSTS_NAMES


def test_a_name_is_refused_when_any_of_its_addresses_is(monkeypatch):
    """DNS answering a public and a private address (a rebinding set-up): refused, whatever
    the order, because the request would go to one of them."""
    answers = [
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", 80)),
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.7", 80)),
    ]
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: answers)
    with pytest.raises(PermanentDeliveryError, match=re.escape("10.0.0.7 (private)")):
        ssrf.check_target("rebind.example", 80, "")
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: answers[::-1])
    with pytest.raises(PermanentDeliveryError, match=re.escape("10.0.0.7 (private)")):
        ssrf.check_target("rebind.example", 80, "")


def test_allowing_a_name_does_not_allow_its_address_under_another_spelling(localhost_layout):
    # Every address of the listed name, in the resolver's order: the connection tries each.
    assert ssrf.check_target("localhost", 80, "localhost") == localhost_layout
    for other in ("127.0.0.1", "2130706433", "[::ffff:127.0.0.1]", "[::1]"):
        with pytest.raises(PermanentDeliveryError):
            ssrf.check_target(other, 80, "localhost")


def test_allowing_an_address_allows_its_spellings_and_nothing_next_to_it(localhost_layout):
    for spelling in ("127.0.0.1", "2130706433", "0x7f000001", "0177.0.0.1", "127.1", "[::ffff:127.0.0.1]"):
        assert ssrf.check_target(spelling, 80, "127.0.0.1") is not None
    for neighbour in ("127.0.0.2", "[::1]", "0.0.0.0", "[::ffff:127.0.0.2]", "[::127.0.0.1]"):
        with pytest.raises(PermanentDeliveryError):
            ssrf.check_target(neighbour, 80, "127.0.0.1")
    # A name is refused when any of its addresses is: localhost with ::1 needs ::1 allowed too.
    if localhost_layout == [ipaddress.ip_address("127.0.0.1")]:
        assert ssrf.check_target("localhost", 80, "127.0.0.1") == localhost_layout
    else:
        with pytest.raises(PermanentDeliveryError, match="resolves to a private address ::1 \\(loopback\\)"):
            ssrf.check_target("localhost", 80, "127.0.0.1")
    assert ssrf.check_target("localhost", 80, "127.0.0.1, ::1") == localhost_layout


URL_TRICKS = [
    "http://127.0.0.1@169.254.169.254/latest/meta-data",  # userinfo: the host is after the @
    "http://127.0.0.1:80@169.254.169.254/",
    "http://169.254.169.254#@127.0.0.1/",  # the fragment starts before the @
    "http://169.254.169.254?@127.0.0.1/",
    "HTTP://169.254.169.254/",
    "http://169。254。169。254/",  # ideographic full stops: IDNA maps them to dots
    "http://[::ffff:169.254.169.254]/",
    "http://2852039166/",
    "https://0xa9fea9fe:443/",
]


@pytest.mark.parametrize("url", URL_TRICKS)
def test_url_tricks_still_name_the_metadata_address_and_are_refused_at_once(url):
    # 127.0.0.1 is allowed: a parser that read the "wrong" host would let these through.
    started = time.monotonic()
    attempt = post_json(
        url, b"{}", {"Authorization": "Bearer tok-never-sent"}, timeout=10, allow_hosts="127.0.0.1"
    )
    assert attempt.error is not None and not attempt.retryable and attempt.http_status is None
    assert "169.254.169.254" in attempt.error or "a9fe:a9fe" in attempt.error, attempt.error
    assert time.monotonic() - started < 2  # refused before any connection was tried
    assert attempt.request["headers"]["Authorization"] == "[redacted]"
