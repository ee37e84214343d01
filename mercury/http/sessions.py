"""Login sessions for the browser: the cookie's name and the in-memory store behind it.

Only the SHA-256 of a session id is kept, so a memory dump or a log of the dict does not
hand out live sessions. Sessions end at their TTL, on logout, or when the store is full
(oldest first); a restart logs everyone out, which is fine for one operator.
"""

from __future__ import annotations

import hashlib
import secrets
import time

SESSION_COOKIE = "mercury_session"


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
