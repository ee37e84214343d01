"""Login sessions kept in the database, so a restart does not log the operator out.

The App builds one `DatabaseSessionStore` and hands it to the one `WebAuth` that the web
chat and the dashboard share. It lives apart from mercury.http.sessions because the web
chat adapter imports that module, and adapters may not reach storage.
"""

from __future__ import annotations

from datetime import timedelta

from mercury.http.sessions import LoginSession, new_csrf_token, new_session_id, session_digest
from mercury.storage import Database
from mercury.storage.sessions import create_session, drop_session, get_session, prune_sessions

__all__ = ["DatabaseSessionStore"]


class DatabaseSessionStore:
    """`SessionStore` on the `sessions` table: only the id's SHA-256 is stored."""

    def __init__(self, db: Database, ttl: float) -> None:
        self.db = db
        self.ttl = ttl

    async def create(self, username: str) -> tuple[str, LoginSession]:
        await prune_sessions(self.db)  # logins are rare: the one moment to tidy up
        session_id = new_session_id()
        record = await create_session(
            self.db,
            session_digest(session_id),
            username=username,
            csrf_token=new_csrf_token(),
            ttl=timedelta(seconds=self.ttl),
        )
        return session_id, LoginSession(record.username, record.csrf_token)

    async def get(self, session_id: str | None) -> LoginSession | None:
        if not session_id:
            return None
        record = await get_session(self.db, session_digest(session_id))
        return LoginSession(record.username, record.csrf_token) if record else None

    async def drop(self, session_id: str | None) -> None:
        if session_id:
            await drop_session(self.db, session_digest(session_id))
