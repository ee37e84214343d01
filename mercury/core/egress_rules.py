"""Which addresses a run's egress may connect to: public ones, plus what the operator allows.

The egress proxy (api/egress.py) resolves a granted host name once and connects to the
address it checked here, so a DNS answer cannot point a run at the host's own services,
the LAN or a cloud metadata endpoint. Non-public addresses (loopback, private, link-local,
multicast, reserved, unspecified, shared/CGNAT, and IPv6 forms that embed one of those)
are refused unless `extensions.allow_private` lists them: "ip", "ip:port" ("[v6]:port")
or a CIDR network. Pure: plain data in, a decision out.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ALLOW_PRIVATE_FORMS = (
    'an IP address ("10.0.0.5"), "ip:port" ("10.0.0.5:8080", "[::1]:8080") '
    'or a CIDR network ("10.0.0.0/8")'
)


@dataclass(frozen=True)
class PrivateRule:
    """One `extensions.allow_private` entry: a network, and a port (None = any port)."""

    network: IPNetwork
    port: int | None = None

    def allows(self, address: IPAddress, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        return address.version == self.network.version and address in self.network


def parse_private_rule(text: str) -> PrivateRule:
    """An `allow_private` entry; ValueError saying which forms are accepted."""
    item = text.strip()
    problem = ValueError(f'expected {ALLOW_PRIVATE_FORMS}, got "{text}"')
    if not item:
        raise problem
    port: int | None = None
    host = item
    if item.startswith("["):
        # "[v6]" or "[v6]:port"
        inner, sep, rest = item[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise problem
        host = inner
        if rest:
            port = _port(rest[1:], problem)
    elif item.count(":") == 1:
        host, _, port_text = item.partition(":")
        port = _port(port_text, problem)
    try:
        if "/" in host:
            if port is not None:
                raise problem
            return PrivateRule(ipaddress.ip_network(host, strict=False))
        address = normalize(ipaddress.ip_address(host))
    except ValueError:
        raise problem from None
    return PrivateRule(ipaddress.ip_network(address), port)


def _port(text: str, problem: ValueError) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise problem
    return int(text)


def parse_private_rules(items: Iterable[str]) -> tuple[PrivateRule, ...]:
    return tuple(parse_private_rule(item) for item in items)


def normalize(address: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address (::ffff:a.b.c.d) as the IPv4 address it reaches."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def non_public_kind(address: IPAddress) -> str | None:
    """Why `address` is not a public one ("loopback", "private", ...), or None if it is."""
    address = normalize(address)
    if isinstance(address, ipaddress.IPv6Address):
        # 6to4 and Teredo carry an IPv4 address a relay would deliver to.
        for embedded in (address.sixtofour, address.teredo and address.teredo[1]):
            if embedded is not None and (kind := non_public_kind(embedded)) is not None:
                return f"{kind} (embedded in {address})"
    checks = (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
    )
    for kind, hit in checks:
        if hit:
            return kind
    if not address.is_global:  # shared address space (100.64/10) and the like
        return "not globally routable"
    return None


def address_refusal(
    address: IPAddress, port: int, allowed: Iterable[PrivateRule] = ()
) -> str | None:
    """Why a run may not connect to `address`:`port`, or None when it may."""
    address = normalize(address)
    kind = non_public_kind(address)
    if kind is None:
        return None
    if any(rule.allows(address, port) for rule in allowed):
        return None
    return f"{address} is not a public address ({kind})"
