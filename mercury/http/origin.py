"""Where one request came from, as far as Mercury can tell behind its proxies.

The pure rules live in mercury.http.addresses; this applies them to an aiohttp request
with the operator's settings (`server.trusted_proxies`, `server.public_url`). Proxy
headers (X-Forwarded-For, -Proto, -Host) count only when a trusted proxy sent them.
"""

from __future__ import annotations

from collections.abc import Iterable

from aiohttp import web

from mercury.http.addresses import client_address, is_trusted, origin_of, parse_networks

NO_ORIGIN_ERROR = (
    "cross-site request refused: a request made with the session cookie that changes "
    "something must carry an Origin header or Sec-Fetch-Site: same-origin (browsers send "
    "them; scripts should use a bearer token instead)"
)


class RequestSource:
    """Client address, scheme and allowed origins of requests to the public server."""

    def __init__(self, public_url: str | None = None, trusted_proxies: Iterable[str] = ()) -> None:
        self.public_url = public_url
        self.public_origin = origin_of(public_url)
        self.trusted = parse_networks(trusted_proxies)

    def client(self, request: web.Request) -> str:
        """The client address of `request` (through trusted proxies)."""
        return client_address(
            request.remote, request.headers.getall("X-Forwarded-For", []), self.trusted
        )

    def _via_trusted_proxy(self, request: web.Request) -> bool:
        return bool(self.trusted) and is_trusted(request.remote, self.trusted)

    def _forwarded(self, request: web.Request, name: str) -> str | None:
        """The first value of a proxy header, only when a trusted proxy sent the request."""
        if not self._via_trusted_proxy(request):
            return None
        value = request.headers.get(name, "").split(",", 1)[0].strip()
        return value or None

    def scheme(self, request: web.Request) -> str:
        forwarded = self._forwarded(request, "X-Forwarded-Proto")
        return forwarded.lower() if forwarded else request.scheme

    def own_origins(self, request: web.Request) -> set[str]:
        """Origins this request may come from: the URL it was sent to, and public_url."""
        host = self._forwarded(request, "X-Forwarded-Host") or request.host
        found = {origin_of(f"{self.scheme(request)}://{host}"), self.public_origin}
        return {o for o in found if o}

    def cookie_secure(self, request: web.Request) -> bool:
        """Mark the cookie Secure when the browser talks https to us or to our proxy."""
        return (
            request.secure
            or self.scheme(request) == "https"
            or (self.public_origin or "").startswith("https://")
        )

    def origin_problem(self, request: web.Request) -> str | None:
        """Why `request` is not a same-origin browser request, or None if it is."""
        origin = request.headers.get("Origin")
        fetch_site = request.headers.get("Sec-Fetch-Site")
        if origin is None and fetch_site is None:
            return NO_ORIGIN_ERROR
        if fetch_site is not None and fetch_site.strip().lower() != "same-origin":
            return (
                f"cross-site request refused: the browser marks it Sec-Fetch-Site: "
                f"{fetch_site.strip()[:20]}; only Mercury's own pages may use the session "
                "cookie to change things"
            )
        if origin is not None:
            allowed = self.own_origins(request)
            if origin_of(origin) not in allowed:
                return (
                    f"cross-site request refused: Origin {origin.strip()[:100]!r} is not this "
                    f"server ({', '.join(sorted(allowed)) or 'unknown'}); only Mercury's own "
                    "pages may use the session cookie to change things. Behind a reverse "
                    "proxy, set server.public_url to the address browsers use"
                )
        return None
