"""Who may use Mercury's public HTTP API, and from where: login, throttling, origins.

One login layer for every browser-facing page on the main server (the web chat today,
the operator dashboard next): the operator's name and the dashboard password. Two ways
in: a bearer token (the password, for scripts and `mercury chat`) or the session cookie
from `POST /api/login` (for the browser pages). Each has its own risk:

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

Client addresses and origins are worked out in mercury.http.origin (on top of the pure
rules in mercury.http.addresses); the sessions live in mercury.http.sessions (in the
database when the App builds this: one `WebAuth` for the web chat and the dashboard, so a
login at /login works at /chat and back, and a restart keeps it).
"""

from __future__ import annotations

import hmac
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web

from mercury.core.login_throttle import (
    LoginThrottle,
    ThrottlePolicy,
    ThrottleVerdict,
    failure_message,
    refusal_message,
    throttle_key,
)
from mercury.http.origin import RequestSource
from mercury.http.sessions import (
    SESSION_COOKIE,
    CookieSigner,
    LoginSession,
    MemorySessionStore,
    SessionStore,
)
from mercury.logging import get_logger

log = get_logger(__name__)

__all__ = [
    "SESSION_COOKIE",
    "Caller",
    "LoginSession",
    "PasswordCheck",
    "SessionStore",
    "WebAuth",
    "Write",
    "json_error",
]

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

Write = Literal["json", "upload"] | None
_SAFE = frozenset({"GET", "HEAD", "OPTIONS"})


def json_error(status: int, message: str, **extra: Any) -> web.Response:
    """The public server's error answer: `{"error": message, ...extra}`."""
    return web.json_response({"error": message, **extra}, status=status)


# ------------------------------------------------------------------ pure helpers


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
    """Authentication and request checks for the routes of the public server."""

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
        sessions: SessionStore | None = None,
        cookie_key: bytes | None = None,
    ) -> None:
        self.username = username
        self._password = password or None
        # The App passes the database's store; on its own (tests) sessions live in memory.
        self.sessions: SessionStore = sessions or MemorySessionStore(session_ttl)
        # The App passes the instance's kept key (cookies survive a restart); else random.
        self.cookies = CookieSigner(cookie_key)
        self.source = RequestSource(public_url, trusted_proxies)
        self.throttle = LoginThrottle(throttle)
        self._clock = clock

    @property
    def locked(self) -> bool:
        """No password is configured: nobody can log in (every route says what to set)."""
        return self._password is None

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
        key = throttle_key(self.source.client(request))
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
                remote=self.source.client(request),
                failures=after.failures,
                wait_s=round(after.retry_after_s, 3),
            )
        return PasswordCheck(ok=False, compared=True, verdict=after)

    def check_login(self, request: web.Request, username: str, password: str) -> PasswordCheck:
        """A login form's name and password, under the throttle (see `_check_password`).

        Both are always compared, so timing tells nothing about which one was wrong.
        """
        ok_user = hmac.compare_digest(username.encode(), self.username.encode())
        return self._check_password(request, password, ok_user)

    def waiting(self, request: web.Request) -> ThrottleVerdict:
        """The throttle's verdict for this client now (refuse before reading a body)."""
        return self.throttle.check(throttle_key(self.source.client(request)), self._clock())

    def refusal_text(self, check: PasswordCheck, text: str) -> tuple[int, str, int | None]:
        """(status, message, Retry-After seconds or None) for a refused login."""
        if not check.compared:
            status, message = 429, refusal_message(check.verdict, self.throttle.policy)
        else:
            status, message = 401, failure_message(check.verdict, text)
        if check.verdict.allowed:
            return status, message, None
        return status, message, _ceil_seconds(check.verdict.retry_after_s)

    def _refused(self, check: PasswordCheck, text: str) -> web.Response:
        """429 for a waiting address (not compared), else 401 saying any wait now due."""
        status, message, seconds = self.refusal_text(check, text)
        if seconds is None:
            return json_error(status, message)
        resp = json_error(status, message, retry_after=seconds)
        resp.headers["Retry-After"] = str(seconds)
        return resp

    async def session(self, request: web.Request) -> LoginSession | None:
        """The live login session of this request's cookie, or None.

        None as well while no password is configured: removing the password locks out
        the sessions opened with the old one.
        """
        if self._password is None:
            return None
        return await self.sessions.get(self._session_id(request))

    def _session_id(self, request: web.Request) -> str | None:
        """The session id in this request's cookie, when this instance signed it."""
        return self.cookies.unsign(request.cookies.get(SESSION_COOKIE))

    def cookie_for(self, session_id: str) -> str:
        """The cookie value that carries `session_id` (signed)."""
        return self.cookies.sign(session_id)

    async def start_session(self, request: web.Request, response: web.StreamResponse) -> None:
        """Open a session for the operator and set its cookie on `response`.

        HttpOnly (no script reads it), SameSite=Strict (no other site's page sends it),
        Secure whenever the browser talks https to us or our proxy (see RequestSource).
        """
        session_id, _ = await self.sessions.create(self.username)
        log.info("login", username=self.username, remote=self.source.client(request))
        response.set_cookie(
            SESSION_COOKIE,
            self.cookies.sign(session_id),
            max_age=int(self.sessions.ttl),
            path="/",
            httponly=True,
            samesite="Strict",
            secure=self.source.cookie_secure(request),
        )

    async def end_session(self, request: web.Request, response: web.StreamResponse) -> None:
        """Drop this request's session and clear its cookie on `response`."""
        await self.sessions.drop(self._session_id(request))
        response.del_cookie(
            SESSION_COOKIE,
            path="/",
            httponly=True,
            samesite="Strict",
            secure=self.source.cookie_secure(request),
        )

    async def authenticate(self, request: web.Request) -> Caller | web.Response:
        """The caller, or the error response: 401, or 429 for a throttled bearer token."""
        header = request.headers.get("Authorization", "")
        if header[:7].lower() == "bearer ":
            # The bearer token is the password: guesses through it count like logins.
            check = self._check_password(request, header[7:].strip())
            if check.ok:
                return Caller(self.username, "bearer")
            return self._refused(check, "wrong bearer token (it is the dashboard password)")
        session = await self.sessions.get(self._session_id(request))
        return Caller(session.username, "cookie") if session else json_error(401, NOT_LOGGED_IN)

    async def guard(self, request: web.Request, write: Write = None) -> str | web.Response:
        """The user, or the error response to return.

        503 locked, 429 throttled, 401 not logged in; for a cookie request that changes
        something (`write`): 403 from another origin, 415 not JSON, 403 no upload header.
        """
        if self._password is None:
            return json_error(503, NO_PASSWORD_ERROR)
        caller = await self.authenticate(request)
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
        problem = self.source.origin_problem(request)
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

    def routes(self) -> list[web.RouteDef]:
        """`POST /api/login` and `POST /api/logout`, shared by every page behind this login."""
        return [web.post("/api/login", self.login), web.post("/api/logout", self.logout)]

    async def login(self, request: web.Request) -> web.Response:
        if self._password is None:
            return json_error(503, NO_PASSWORD_ERROR)
        # Scripts send no Origin; a browser that does must be on our own page.
        if "Origin" in request.headers or "Sec-Fetch-Site" in request.headers:
            problem = self.source.origin_problem(request)
            if problem is not None:
                return json_error(403, problem)
        if _media_type(request.content_type) != "application/json":
            return json_error(
                415, "Content-Type must be application/json: send {username, password} as JSON"
            )
        # Refuse a waiting address before reading its body, and again after (below).
        early = self.waiting(request)
        if not early.allowed:
            return self._refused(PasswordCheck(False, False, early), "")
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            return json_error(400, "expected a JSON object {username, password}")
        user, password = str(body.get("username", "")), str(body.get("password", ""))
        check = self.check_login(request, user, password)
        if not check.ok:
            if check.compared:
                # The attempted name is not logged: people type passwords into it.
                log.warning("web chat login refused", remote=self.source.client(request))
            return self._refused(check, "wrong username or password")
        resp = web.json_response({"username": self.username})
        await self.start_session(request, resp)
        return resp

    async def logout(self, request: web.Request) -> web.Response:
        """End the browser session (a write like any other: same origin, JSON)."""
        # A browser never adds Authorization cross-site without a preflight: scripts may
        # skip the browser checks by sending their bearer token.
        if "Authorization" not in request.headers:
            refused = self.write_problem(request, "json")
            if refused is not None:
                return refused
        resp = web.json_response({"ok": True})
        await self.end_session(request, resp)
        return resp
