"""Login sessions kept in the database, so a restart does not log the operator out.

The App builds one `DatabaseSessionStore` and hands it to the one `WebAuth` that the web
chat and the dashboard share. It lives apart from mercury.http.sessions because the web
chat adapter imports that module, and adapters may not reach storage.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import SecretStr

from mercury.config import Config
from mercury.http.auth import WebAuth
from mercury.http.sessions import (
    LoginSession,
    MemorySessionStore,
    SessionStore,
    new_csrf_token,
    new_session_id,
    session_digest,
    signing_key,
)
from mercury.storage import Database
from mercury.storage.sessions import create_session, drop_session, get_session, prune_sessions

__all__ = ["DatabaseSessionStore", "build_web_auth"]


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


def build_web_auth(config: Config, password: SecretStr | None, db: Database | None) -> WebAuth:
    """The one login layer of the web chat and the dashboard (mercury.http.auth).

    Its sessions live in the database and its cookies are signed with the instance's key
    in data_dir, so a restart keeps the operator logged in; without a database yet (tests
    that only mount routes) both live in memory.
    """
    ttl = config.dashboard.session_ttl
    sessions: SessionStore = (
        DatabaseSessionStore(db, ttl) if db is not None else MemorySessionStore(ttl)
    )
    return WebAuth(
        username=config.dashboard.username,
        password=password.get_secret_value() if password else None,
        session_ttl=ttl,
        public_url=config.server.public_url,
        trusted_proxies=config.server.trusted_proxies,
        sessions=sessions,
        cookie_key=signing_key(config.data_dir) if db is not None else None,
    )
