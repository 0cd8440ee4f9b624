"""Which addresses a webhook may reach.

A rule's author must not be able to make the service talk to its own network (databases,
cloud metadata endpoints, admin interfaces). So the target's host name is resolved here,
*every* address it resolves to is checked (one refused address refuses the name), and the
request is then sent only to the checked addresses (see `http.py`, which tries them in
turn), so a second DNS answer cannot swap in another one (DNS rebinding). The check runs on
resolved addresses, which also covers the odd spellings of IPv4 literals (`2130706433`,
`0x7f000001`, `0177.0.0.1`): getaddrinfo decodes them.

ENGINE_WEBHOOK_ALLOW_HOSTS lists exceptions: host names (matched as written in the URL),
addresses, or CIDR ranges (matched against every resolved address). Cloud metadata
addresses hand out the machine's credentials: no range opens them (`0.0.0.0/0` is a
common shortcut), only the address itself, or a listed name that resolves to nothing else.

`resolve` is the only place a webhook's host name is looked up (tests replace it to play
resolver layouts, e.g. `localhost` as `::1` then `127.0.0.1`).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit

from engine.exceptions import DeliveryError, PermanentDeliveryError
from engine.rules.actions import ActionModel, PagerDutyAction, WebhookAction

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

METADATA_ADDRESSES = frozenset(
    {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
METADATA_REASON = "cloud metadata"  # why_forbidden's word for them
# How long `refused_urls` waits for DNS: checking rules must not hang on a slow resolver.
RESOLVE_BUDGET_SECONDS = 3.0


@dataclass(frozen=True)
class AllowList:
    hosts: frozenset[str]
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

    def allows_host(self, host: str) -> bool:
        return _normal_host(host) in self.hosts

    def allows_address(self, addr: IPAddress) -> bool:
        """Listed itself, or inside a listed range (its embedded IPv4 address too)."""
        return any(a.version == n.version and a in n for a in _spellings(addr) for n in self.networks)

    def lists_address(self, addr: IPAddress) -> bool:
        """Listed as a single address (`169.254.169.254`, or `/32`), not merely inside a range."""
        return any(
            n.num_addresses == 1 and a == n.network_address for a in _spellings(addr) for n in self.networks
        )


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


def _spellings(addr: IPAddress) -> list[IPAddress]:
    """The address, and the IPv4 address it carries if any: allowing 127.0.0.1 allows
    ::ffff:127.0.0.1 too."""
    return [addr, *filter(None, [embedded_ipv4(addr)])]


def is_metadata(addr: IPAddress) -> bool:
    """A cloud metadata address, in any of the forms `why_forbidden` knows."""
    return any(a in METADATA_ADDRESSES for a in _spellings(addr))


def embedded_ipv4(addr: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, 6to4, Teredo, NAT64), if any."""
    if not isinstance(addr, ipaddress.IPv6Address):
        return None
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
        return METADATA_REASON
    inner = embedded_ipv4(addr)
    if inner is not None:
        reason = why_forbidden(inner)
        if reason:
            return f"IPv4 {inner} inside IPv6, {reason}"
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
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


def check_target(host: str, port: int, allow_hosts: str) -> list[IPAddress]:
    """Resolve `host` and return its addresses (all checked, in the order to try them), or refuse.

    Every resolved address must be public or allowed, else the name is refused (a request
    could go to any of them). A host name listed in `allow_hosts` is trusted whatever it
    resolves to, except a cloud metadata address (see `refusal`). Raises
    PermanentDeliveryError when refused, DeliveryError when the name does not resolve.
    """
    addresses = resolve(host, port)
    problem = refusal(host, addresses, allow_hosts)
    if problem:
        raise PermanentDeliveryError(problem)
    return addresses


def refusal(host: str, addresses: list[IPAddress], allow_hosts: str) -> str | None:
    """Why the policy refuses `host` resolving to `addresses`, or None when it may be reached."""
    allow = parse_allow_list(allow_hosts)
    name_listed = allow.allows_host(host)
    for addr in addresses:
        reason = why_forbidden(addr)
        if reason is None:
            continue
        refused = f"webhook target {host} resolves to a private address {addr} ({reason})"
        if is_metadata(addr):
            # Only an exact entry opens it: the address, or a listed name that is only an alias of it.
            if allow.lists_address(addr) or (name_listed and all(map(is_metadata, addresses))):
                continue
            refused += "; refused: a metadata endpoint hands out this machine's cloud credentials"
            if name_listed or allow.allows_address(addr):
                refused += " (a range, or a name that also resolves to other addresses, does not open it)"
            return refused
        if not (name_listed or allow.allows_address(addr)):
            return refused + "; allow it with ENGINE_WEBHOOK_ALLOW_HOSTS"
    return None


def refused_urls(
    urls: Iterable[str], allow_hosts: str, timeout: float = RESOLVE_BUDGET_SECONDS
) -> dict[str, str]:
    """The URLs among `urls` that the policy would refuse if they were sent now, with why.

    For warnings before anything is sent (`engine rules validate`). Host names are resolved
    now, all at once, for at most `timeout` seconds. Not judged (the check at send time
    decides): a host that does not resolve (in time, or at all), a templated host (`${…}`),
    a URL that does not parse.
    """
    targets: dict[str, tuple[str, int]] = {}
    for url in urls:
        try:
            parts = urlsplit(url)
            host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            continue
        if host and "$" not in host:
            targets[url] = (host, port)
    found = _resolve_all(set(targets.values()), timeout)
    refused = {}
    for url, target in targets.items():
        problem = refusal(target[0], found[target], allow_hosts) if target in found else None
        if problem:
            refused[url] = problem
    return refused


def _resolve_all(targets: set[tuple[str, int]], timeout: float) -> dict[tuple[str, int], list[IPAddress]]:
    """`resolve` for each target at once; the ones that failed or did not answer in time are left out."""
    found: dict[tuple[str, int], list[IPAddress]] = {}
    lock = threading.Lock()

    def lookup(target: tuple[str, int]) -> None:
        try:
            addresses = resolve(*target)
        except DeliveryError:
            return
        with lock:
            found[target] = addresses

    # Daemon threads: a lookup still hanging at the deadline must not hold the process at exit.
    threads = [threading.Thread(target=lookup, args=(t,), daemon=True, name="resolve") for t in targets]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    with lock:  # a late answer may still arrive: copy under the lock
        return dict(found)


def address_warnings(actions: Sequence[ActionModel], allow_hosts: str) -> list[list[str]]:
    """For each action, a warning when the address policy will refuse its target when it is
    sent with `allow_hosts` (this shell's ENGINE_WEBHOOK_ALLOW_HOSTS; the service may differ).

    Checked: a webhook's or PagerDuty action's `url`, and the incoming-webhook URL of a Slack,
    Discord or Teams action when its variable is set here (the warning names the variable,
    never the URL: it is a secret). Names are resolved
    now; one that does not resolve is left to the check at send time (`refused_urls`).
    """
    targets: list[tuple[str, str] | None] = []  # (field, url) per action
    for action in actions:
        secret_url = getattr(action, "webhook_url", None)
        if isinstance(action, (WebhookAction, PagerDutyAction)):
            targets.append(("action.url", action.url))
        elif secret_url is not None and os.environ.get(secret_url.env):
            targets.append((f"action.webhook_url (${secret_url.env})", os.environ[secret_url.env]))
        else:
            targets.append(None)
    refused = refused_urls([t[1] for t in targets if t], allow_hosts)
    here = (
        f"ENGINE_WEBHOOK_ALLOW_HOSTS={allow_hosts}"
        if allow_hosts.strip()
        else "ENGINE_WEBHOOK_ALLOW_HOSTS unset"
    )
    return [
        [f"{t[0]}: sending will be refused (with {here}, as in this shell): {refused[t[1]]}"]
        if t and t[1] in refused
        else []
        for t in targets
    ]
