"""Login sessions, one aggregate: the dashboard's and the web chat's browser logins.

The caller passes the SHA-256 of the session id (mercury.http.sessions.session_digest):
the id itself never reaches the database, so a copy of this table logs nobody in. An
expired session is deleted when it is looked up, and `prune_sessions` sweeps the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select

from mercury.storage.models import Session, utcnow
from mercury.storage.session import Store, rowcount, to_record, tx

__all__ = [
    "SessionRecord",
    "create_session",
    "drop_session",
    "get_session",
    "prune_sessions",
]


@dataclass(frozen=True, slots=True)
class SessionRecord:
    id_sha256: str
    username: str
    csrf_token: str
    created_at: datetime
    expires_at: datetime


async def create_session(
    store: Store,
    id_sha256: str,
    *,
    username: str,
    csrf_token: str,
    ttl: timedelta,
    now: datetime | None = None,
) -> SessionRecord:
    """Store a new session that ends `ttl` from now."""
    now = now or utcnow()
    row = Session(
        id_sha256=id_sha256,
        username=username,
        csrf_token=csrf_token,
        created_at=now,
        expires_at=now + ttl,
    )
    async with tx(store) as s:
        s.add(row)
        await s.flush()
        return to_record(SessionRecord, row)


async def get_session(
    store: Store, id_sha256: str, *, now: datetime | None = None
) -> SessionRecord | None:
    """The live session with this digest; an expired one is deleted and None returned."""
    now = now or utcnow()
    async with tx(store) as s:
        row = await s.scalar(select(Session).where(Session.id_sha256 == id_sha256))
        if row is None:
            return None
        if row.expires_at <= now:
            await s.execute(delete(Session).where(Session.id_sha256 == id_sha256))
            return None
        return to_record(SessionRecord, row)


async def drop_session(store: Store, id_sha256: str) -> bool:
    """End a session (logout); True if there was one."""
    async with tx(store) as s:
        result = await s.execute(delete(Session).where(Session.id_sha256 == id_sha256))
        return rowcount(result) > 0


async def prune_sessions(store: Store, *, now: datetime | None = None) -> int:
    """Delete every expired session; how many were."""
    now = now or utcnow()
    async with tx(store) as s:
        result = await s.execute(delete(Session).where(Session.expires_at <= now))
        return rowcount(result)
