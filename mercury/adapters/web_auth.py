"""Who may use the web chat API, and from where: sessions, login, throttling, origins.

Two ways in: a bearer token (the dashboard password, for scripts and `mercury chat`) or
the session cookie from `POST /api/login` (for the browser page). Each has its own risk:

- Guessing the password, through the login route or as a bearer token. Every password
  check goes through `LoginThrottle` (mercury.core.login_throttle): per client address, a
  few free failures, then waits that double up to 15 minutes; while an address waits its
  password is not even compared, and the answer is 429 with Retry-After.
- Cross-site requests riding on the cookie. SameSite=Strict does not cover another port
  of the same host or a sibling subdomain (same *site*), and a form or a `text/plain`
  fetch from such a page needs no CORS preflight. So a cookie-authenticated request that
  changes something must come from our own origin (Origin, or Sec-Fetch-Site when no
  Origin is sent) and be JSON, or, for the multipart upload, carry `X-Mercury-Request: 1`;
  neither can be sent cross-origin without a preflight, which we never grant.
  A bearer token is never sent by a browser on its own, so bearer requests skip this.
- A cookie sent in clear behind a TLS proxy: it is `Secure` whenever the request came over
  https, a trusted proxy says it did, or `server.public_url` is https.

The client address is the TCP peer, unless the peer is one of `server.trusted_proxies`:
then it is the right-most X-Forwarded-For entry that is not a trusted proxy (entries to
its left were written by the client and prove nothing).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from aiohttp import web

from mercury.core.login_throttle import (
    LoginThrottle,
    ThrottlePolicy,
    ThrottleVerdict,
    failure_message,
    refusal_message,
    throttle_key,
)
from mercury.logging import get_logger

log = get_logger("mercury.adapters.web")

SESSION_COOKIE = "mercury_session"
# The chat page sends this on uploads; a cross-origin form cannot send custom headers, and
# a cross-origin fetch with one needs a CORS preflight that Mercury never answers.
REQUEST_HEADER = "X-Mercury-Request"
NO_PASSWORD_ERROR = (
    "web chat is locked: no dashboard password is configured; "
    "set MERCURY_DASHBOARD_PASSWORD (in the environment or .env) and restart"
)
NOT_LOGGED_IN = "not logged in: log in at /chat or send a bearer token"
JSON_TYPE_ERROR = (
    "Content-Type must be application/json: requests made with the session cookie are "
    "JSON only, which another site's form cannot send"
)
UPLOAD_HEADER_ERROR = (
    f"uploads made with the session cookie need the header {REQUEST_HEADER}: 1 "
    "(the chat page sends it; another site's form cannot)"
)
NO_ORIGIN_ERROR = (
    "cross-site request refused: a request made with the session cookie that changes "
    "something must carry an Origin header or Sec-Fetch-Site: same-origin (browsers send "
    "them; scripts should use a bearer token instead)"
)

Write = Literal["json", "upload"] | None
_SAFE = frozenset({"GET", "HEAD", "OPTIONS"})
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def json_error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


class SessionStore:
    """Login sessions in memory. Random ids; only their SHA-256 is kept as the key."""

    def __init__(self, ttl: float, max_sessions: int = 1000) -> None:
        self.ttl = ttl
        self.max_sessions = max_sessions
        self._sessions: dict[str, tuple[str, float]] = {}  # digest -> (username, expiry)

    @staticmethod
    def _key(session_id: str) -> str:
        return hashlib.sha256(session_id.encode()).hexdigest()

    def create(self, username: str) -> str:
        self._prune()
        while len(self._sessions) >= self.max_sessions:  # oldest first (dict order)
            self._sessions.pop(next(iter(self._sessions)))
        session_id = secrets.token_urlsafe(32)
        self._sessions[self._key(session_id)] = (username, time.monotonic() + self.ttl)
        return session_id

    def get(self, session_id: str | None) -> str | None:
        if not session_id:
            return None
        found = self._sessions.get(self._key(session_id))
        if found is None:
            return None
        if found[1] < time.monotonic():
            self._sessions.pop(self._key(session_id), None)
            return None
        return found[0]

    def drop(self, session_id: str | None) -> None:
        if session_id:
            self._sessions.pop(self._key(session_id), None)

    def _prune(self) -> None:
        now = time.monotonic()
        for key in [k for k, (_, exp) in self._sessions.items() if exp < now]:
            del self._sessions[key]


# ------------------------------------------------------------------ pure helpers


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


def _trusted(address: str | None, networks: tuple[IPNetwork, ...]) -> bool:
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
    if not _trusted(peer, trusted):
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


def _media_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


def _ceil_seconds(seconds: float) -> int:
    """Whole seconds for Retry-After, rounded up and never 0 (0 would mean "now")."""
    return max(1, math.ceil(seconds))


@dataclass(frozen=True)
class Caller:
    user: str
    via: Literal["bearer", "cookie"]


@dataclass(frozen=True)
class PasswordCheck:
    ok: bool
    compared: bool  # False: the address must wait, so the password was not looked at
    verdict: ThrottleVerdict


# ---------------------------------------------------------------------- the guard


class WebAuth:
    """Authentication and request checks for the web chat's routes."""

    def __init__(
        self,
        *,
        username: str,
        password: str | None,
        session_ttl: float,
        public_url: str | None = None,
        trusted_proxies: Iterable[str] = (),
        throttle: ThrottlePolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.username = username
        self._password = password or None
        self.sessions = SessionStore(session_ttl)
        self.public_url = public_url
        self.public_origin = origin_of(public_url)
        self.trusted = parse_networks(trusted_proxies)
        self.throttle = LoginThrottle(throttle)
        self._clock = clock

    # ------------------------------------------------------------ request facts

    def client(self, request: web.Request) -> str:
        """The client address of `request` (through trusted proxies)."""
        return client_address(
            request.remote, request.headers.getall("X-Forwarded-For", []), self.trusted
        )

    def _via_trusted_proxy(self, request: web.Request) -> bool:
        return bool(self.trusted) and _trusted(request.remote, self.trusted)

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

    # --------------------------------------------------------- authentication

    def _check_password(
        self, request: web.Request, given: str, name_ok: bool = True
    ) -> PasswordCheck:
        """Compare a password under the throttle.

        Nothing awaits between the throttle check, the comparison and the count, so
        parallel guesses from one address cannot all slip through before the first is
        counted. A waiting address's password is not compared at all.
        """
        assert self._password is not None
        key = throttle_key(self.client(request))
        now = self._clock()
        verdict = self.throttle.check(key, now)
        if not verdict.allowed:
            return PasswordCheck(ok=False, compared=False, verdict=verdict)
        # `&`, not `and`: the password is compared even when the name was wrong.
        if hmac.compare_digest(given.encode(), self._password.encode()) & name_ok:
            self.throttle.success(key)
            return PasswordCheck(ok=True, compared=True, verdict=verdict)
        after = self.throttle.failure(key, now)
        if not after.allowed:
            log.warning(
                "web chat login throttled",
                remote=self.client(request),
                failures=after.failures,
                wait_s=round(after.retry_after_s, 3),
            )
        return PasswordCheck(ok=False, compared=True, verdict=after)

    def _refused(self, check: PasswordCheck, text: str) -> web.Response:
        """429 for a waiting address (not compared), else 401 saying any wait now due."""
        if not check.compared:
            status, message = 429, refusal_message(check.verdict, self.throttle.policy)
        else:
            status, message = 401, failure_message(check.verdict, text)
        if check.verdict.allowed:
            return json_error(status, message)
        seconds = _ceil_seconds(check.verdict.retry_after_s)
        resp = json_error(status, message, retry_after=seconds)
        resp.headers["Retry-After"] = str(seconds)
        return resp

    def authenticate(self, request: web.Request) -> Caller | web.Response:
        """The caller, or the error response: 401, or 429 for a throttled bearer token."""
        header = request.headers.get("Authorization", "")
        if header[:7].lower() == "bearer ":
            # The bearer token is the password: guesses through it count like logins.
            check = self._check_password(request, header[7:].strip())
            if check.ok:
                return Caller(self.username, "bearer")
            return self._refused(check, "wrong bearer token (it is the dashboard password)")
        user = self.sessions.get(request.cookies.get(SESSION_COOKIE))
        return Caller(user, "cookie") if user else json_error(401, NOT_LOGGED_IN)

    def guard(self, request: web.Request, write: Write = None) -> str | web.Response:
        """The user, or the error response to return.

        503 locked, 429 throttled, 401 not logged in; for a cookie request that changes
        something (`write`): 403 from another origin, 415 not JSON, 403 no upload header.
        """
        if self._password is None:
            return json_error(503, NO_PASSWORD_ERROR)
        caller = self.authenticate(request)
        if isinstance(caller, web.Response):
            return caller
        # Any unsafe method counts as a write, so a future route cannot forget the check.
        if caller.via == "cookie" and (write is not None or request.method not in _SAFE):
            refused = self.write_problem(request, write)
            if refused is not None:
                return refused
        return caller.user

    def write_problem(self, request: web.Request, write: Write) -> web.Response | None:
        """Refuse a browser request that another site could have made."""
        problem = self.origin_problem(request)
        if problem is not None:
            log.warning(
                "web chat cross-site request refused",
                path=request.path,
                origin=request.headers.get("Origin"),
                fetch_site=request.headers.get("Sec-Fetch-Site"),
            )
            return json_error(403, problem)
        if write == "json" and _media_type(request.content_type) != "application/json":
            return json_error(415, JSON_TYPE_ERROR)
        if write == "upload" and request.headers.get(REQUEST_HEADER, "").strip() != "1":
            return json_error(403, UPLOAD_HEADER_ERROR)
        return None

    # ------------------------------------------------------------ login/logout

    async def login(self, request: web.Request) -> web.Response:
        if self._password is None:
            return json_error(503, NO_PASSWORD_ERROR)
        # Scripts send no Origin; a browser that does must be on our own page.
        if "Origin" in request.headers or "Sec-Fetch-Site" in request.headers:
            problem = self.origin_problem(request)
            if problem is not None:
                return json_error(403, problem)
        if _media_type(request.content_type) != "application/json":
            return json_error(
                415, "Content-Type must be application/json: send {username, password} as JSON"
            )
        # Refuse a waiting address before reading its body, and again after (below).
        early = self.throttle.check(throttle_key(self.client(request)), self._clock())
        if not early.allowed:
            return self._refused(PasswordCheck(False, False, early), "")
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            return json_error(400, "expected a JSON object {username, password}")
        user, password = str(body.get("username", "")), str(body.get("password", ""))
        # Both are always compared, so timing tells nothing about which one was wrong.
        ok_user = hmac.compare_digest(user.encode(), self.username.encode())
        check = self._check_password(request, password, ok_user)
        if not check.ok:
            if check.compared:
                # The attempted name is not logged: people type passwords into it.
                log.warning("web chat login refused", remote=self.client(request))
            return self._refused(check, "wrong username or password")
        session_id = self.sessions.create(self.username)
        log.info("web chat login", username=self.username, remote=self.client(request))
        resp = web.json_response({"username": self.username})
        resp.set_cookie(
            SESSION_COOKIE,
            session_id,
            max_age=int(self.sessions.ttl),
            path="/",
            httponly=True,
            samesite="Strict",
            secure=self.cookie_secure(request),
        )
        return resp

    async def logout(self, request: web.Request) -> web.Response:
        """End the browser session (a write like any other: same origin, JSON)."""
        # A browser never adds Authorization cross-site without a preflight: scripts may
        # skip the browser checks by sending their bearer token.
        if "Authorization" not in request.headers:
            refused = self.write_problem(request, "json")
            if refused is not None:
                return refused
        self.sessions.drop(request.cookies.get(SESSION_COOKIE))
        resp = web.json_response({"ok": True})
        resp.del_cookie(
            SESSION_COOKIE,
            path="/",
            httponly=True,
            samesite="Strict",
            secure=self.cookie_secure(request),
        )
        return resp
