"""Where a request comes from: its client address and its origin, as pure functions.

The client address is the TCP peer, unless the peer is one of `server.trusted_proxies`:
then it is the right-most X-Forwarded-For entry that is not a trusted proxy (entries to
its left were written by the client and prove nothing). Login throttling counts against
it, so a forged header must never mint a fresh identity.

An origin is `scheme://host[:port]`, normalised, so that `Origin` headers and
`server.public_url` compare equal when they name the same server.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    """`server.trusted_proxies` entries (addresses or CIDR networks) as networks."""
    return tuple(ipaddress.ip_network(v.strip(), strict=False) for v in values)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address from a header entry: `1.2.3.4`, `1.2.3.4:5678`, `[::1]:80`, `::1`."""
    text = text.strip()
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else text[1:]
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def is_trusted(address: str | None, networks: tuple[IPNetwork, ...]) -> bool:
    """Whether `address` (a peer or header entry) is inside one of `networks`."""
    ip = _ip(address) if address else None
    return ip is not None and any(ip in net for net in networks)


def client_address(
    remote: str | None, forwarded_for: Iterable[str], trusted: tuple[IPNetwork, ...]
) -> str:
    """The address a request is counted against (see the module docstring).

    An X-Forwarded-For entry that is not an address stops the walk at the hop that
    forwarded it: garbage cannot mint a fresh identity for every request.
    """
    peer = remote or "unknown"
    if not is_trusted(peer, trusted):
        return peer
    hops = [h.strip() for line in forwarded_for for h in line.split(",") if h.strip()]
    current = peer
    for hop in reversed(hops):
        ip = _ip(hop)
        if ip is None:
            return current
        current = str(ip)
        if not any(ip in net for net in trusted):
            return current
    return current


def origin_of(url: str | None) -> str | None:
    """`scheme://host[:port]` normalised (lower case, default port dropped), or None."""
    if not url:
        return None
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), parts.hostname
    if scheme not in ("http", "https") or not host:
        return None
    if ":" in host:
        host = f"[{host}]"
    if port is None or (scheme, port) in (("http", 80), ("https", 443)):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"
