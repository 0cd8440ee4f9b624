"""Which addresses a webhook may reach (SPEC section 3, "Addresses").

A rule's author must not be able to make the service talk to its own network (databases,
cloud metadata endpoints, admin interfaces). So the target's host name is resolved here,
*every* address it resolves to is checked, and the request is then sent to the checked
address itself (see `http.py`), so a second DNS answer cannot swap in another one
(DNS rebinding). The check runs on resolved addresses, which also covers the odd spellings
of IPv4 literals (`2130706433`, `0x7f000001`, `0177.0.0.1`): getaddrinfo decodes them.

ENGINE_WEBHOOK_ALLOW_HOSTS lists exceptions: host names (matched as written in the URL),
addresses, or CIDR ranges (matched against every resolved address).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from functools import lru_cache

from engine.exceptions import DeliveryError, PermanentDeliveryError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

METADATA_ADDRESSES = frozenset(
    {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


@dataclass(frozen=True)
class AllowList:
    hosts: frozenset[str]
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

    def allows_host(self, host: str) -> bool:
        return _normal_host(host) in self.hosts

    def allows_address(self, addr: IPAddress) -> bool:
        candidates = [addr, *filter(None, [embedded_ipv4(addr)])]
        return any(a.version == n.version and a in n for a in candidates for n in self.networks)


@lru_cache(maxsize=16)
def parse_allow_list(text: str) -> AllowList:
    """`"127.0.0.1, localhost, 10.0.0.0/8"` -> AllowList."""
    hosts: set[str] = set()
    networks = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item.strip("[]"), strict=False))
        except ValueError:
            hosts.add(_normal_host(item))
    return AllowList(frozenset(hosts), tuple(networks))


def _normal_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


def embedded_ipv4(addr: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, 6to4, Teredo, NAT64), if any."""
    if addr.version != 6:
        return None
    assert isinstance(addr, ipaddress.IPv6Address)
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr.sixtofour is not None:
        return addr.sixtofour
    if addr.teredo is not None:
        return addr.teredo[1]
    if addr in _NAT64:
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return None


def why_forbidden(addr: IPAddress) -> str | None:
    """A word saying why the address is not public, or None when it is."""
    if addr in METADATA_ADDRESSES:
        return "cloud metadata"
    inner = embedded_ipv4(addr)
    if inner is not None:
        reason = why_forbidden(inner)
        if reason:
            return f"IPv4 {inner} inside IPv6, {reason}"
        if addr.ipv4_mapped is not None:
            # A mapped address is a way to write an IPv4 one; judge it by that.
            return None
    for attribute in ("loopback", "link_local", "unspecified", "multicast", "private", "reserved"):
        if getattr(addr, f"is_{attribute}"):
            return attribute.replace("_", "-")
    if not addr.is_global:
        return "not globally routable"
    return None


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address the host resolves to, in getaddrinfo's order, without duplicates."""
    try:
        infos = socket.getaddrinfo(_normal_host(host), port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        # A DNS failure may be temporary: retryable.
        raise DeliveryError(f"cannot resolve webhook host {host}: {exc}") from exc
    seen: list[IPAddress] = []
    for info in infos:
        addr = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if addr not in seen:
            seen.append(addr)
    if not seen:
        raise DeliveryError(f"webhook host {host} has no address")
    return seen


def check_target(host: str, port: int, allow_hosts: str) -> IPAddress:
    """Resolve `host` and return the address to connect to, or refuse.

    Every resolved address must be public or allowed; a host name listed in `allow_hosts`
    is trusted whatever it resolves to. Raises PermanentDeliveryError when refused.
    """
    allow = parse_allow_list(allow_hosts)
    addresses = resolve(host, port)
    if allow.allows_host(host):
        return addresses[0]
    for addr in addresses:
        reason = why_forbidden(addr)
        if reason and not allow.allows_address(addr):
            raise PermanentDeliveryError(
                f"webhook target {host} resolves to a private address {addr} ({reason}); "
                "allow it with ENGINE_WEBHOOK_ALLOW_HOSTS"
            )
    return addresses[0]
