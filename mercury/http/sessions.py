"""Login sessions for the browser: the cookie's name and the stores behind it.

A session is a random id in an HttpOnly cookie; the server keeps only the id's SHA-256,
so a database dump, a memory dump or a log of the store does not hand out live sessions.
Each session carries its own CSRF token, which every state-changing dashboard request
must echo (mercury.dashboard.render.check_csrf).

Two stores with one async interface (`SessionStore`):
- `DatabaseSessionStore` (mercury.http.stored_sessions), what the App uses: sessions live
  in the `sessions` table, so a restart does not log the operator out, and the web chat
  and the dashboard share them (a login at /login works at /chat and back). It is its
  own module so that this one, which the web chat adapter imports, stays free of storage.
- `MemorySessionStore`, for a web chat built on its own (tests, no database): a restart
  logs everyone out; at most `max_sessions`, oldest dropped first.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

SESSION_COOKIE = "mercury_session"

__all__ = [
    "SESSION_COOKIE",
    "CookieSigner",
    "LoginSession",
    "MemorySessionStore",
    "SessionStore",
    "new_csrf_token",
    "new_session_id",
    "session_digest",
    "signing_key",
]


@dataclass(frozen=True, slots=True)
class LoginSession:
    """A live login: who, and the CSRF token their pages must send back."""

    username: str
    csrf_token: str


def new_session_id() -> str:
    """A fresh session id (256 random bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def session_digest(session_id: str) -> str:
    """What the store keeps instead of the id: its SHA-256, hex."""
    return hashlib.sha256(session_id.encode()).hexdigest()


KEY_FILE = "session-signing.key"


def signing_key(data_dir: Path) -> bytes:
    """The instance's cookie-signing key: 32 random bytes in `data_dir` (0600), made on
    first use and kept, so cookies signed before a restart still verify after it."""
    path = data_dir / KEY_FILE
    try:
        key = path.read_bytes()
        if len(key) >= 32:
            return key
    except FileNotFoundError:
        pass
    key = secrets.token_bytes(32)
    tmp = path.with_name(f".{KEY_FILE}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key)
    os.replace(tmp, path)
    return key


class CookieSigner:
    """The session cookie is `<id>.<HMAC-SHA256(key, id)>`: a cookie not made by this
    instance is refused before any store is asked, and a session id read out of the store
    (only its SHA-256 is there anyway) is no cookie without the key."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or secrets.token_bytes(32)  # no key given: valid for this process

    def _mac(self, session_id: str) -> str:
        digest = hmac.new(self._key, session_id.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def sign(self, session_id: str) -> str:
        return f"{session_id}.{self._mac(session_id)}"

    def unsign(self, cookie: str | None) -> str | None:
        """The session id of a cookie this instance signed, else None."""
        if not cookie or "." not in cookie:
            return None
        session_id, _, mac = cookie.rpartition(".")
        if not session_id or not hmac.compare_digest(mac.encode(), self._mac(session_id).encode()):
            return None
        return session_id


class SessionStore(Protocol):
    """Where login sessions live; `ttl` is their lifetime in seconds."""

    ttl: float

    async def create(self, username: str) -> tuple[str, LoginSession]:
        """A new session: (the id for the cookie, the session)."""
        ...

    async def get(self, session_id: str | None) -> LoginSession | None:
        """The live session with this id, or None (unknown, expired, no id)."""
        ...

    async def drop(self, session_id: str | None) -> None:
        """End a session (logout); unknown ids are ignored."""
        ...


class MemorySessionStore:
    """Sessions in memory, keyed by the id's SHA-256 (see the module docstring)."""

    def __init__(self, ttl: float, max_sessions: int = 1000) -> None:
        self.ttl = ttl
        self.max_sessions = max_sessions
        # digest -> (session, monotonic expiry)
        self._sessions: dict[str, tuple[LoginSession, float]] = {}

    async def create(self, username: str) -> tuple[str, LoginSession]:
        self._prune()
        while len(self._sessions) >= self.max_sessions:  # oldest first (dict order)
            self._sessions.pop(next(iter(self._sessions)))
        session_id = new_session_id()
        session = LoginSession(username, new_csrf_token())
        self._sessions[session_digest(session_id)] = (session, time.monotonic() + self.ttl)
        return session_id, session

    async def get(self, session_id: str | None) -> LoginSession | None:
        if not session_id:
            return None
        key = session_digest(session_id)
        found = self._sessions.get(key)
        if found is None:
            return None
        if found[1] < time.monotonic():
            self._sessions.pop(key, None)
            return None
        return found[0]

    async def drop(self, session_id: str | None) -> None:
        if session_id:
            self._sessions.pop(session_digest(session_id), None)

    def _prune(self) -> None:
        now = time.monotonic()
        for key in [k for k, (_, exp) in self._sessions.items() if exp < now]:
            del self._sessions[key]
