"""Login sessions (storage/sessions.py) on a real SQLite file and a real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from mercury.http.sessions import session_digest
from mercury.http.stored_sessions import DatabaseSessionStore
from mercury.storage import Database
from mercury.storage.models import Session
from mercury.storage.sessions import (
    create_session,
    drop_session,
    get_session,
    prune_sessions,
)
from tests.integration.test_storage import db, db_url, postgres_server_url

__all__ = ["db", "db_url", "postgres_server_url"]  # fixtures shared with test_storage.py

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


async def test_a_session_lives_until_it_expires_then_is_deleted(db: Database) -> None:
    made = await create_session(db, "a" * 64, username="admin", csrf_token="tok", ttl=HOUR, now=NOW)
    assert (made.username, made.csrf_token, made.expires_at) == ("admin", "tok", NOW + HOUR)
    found = await get_session(db, "a" * 64, now=NOW + HOUR - timedelta(seconds=1))
    assert found == made
    assert await get_session(db, "b" * 64, now=NOW) is None
    assert await get_session(db, "a" * 64, now=NOW + HOUR) is None  # expired...
    # ...and gone, even for a clock that goes back.
    assert await get_session(db, "a" * 64, now=NOW) is None


async def test_drop_and_prune(db: Database) -> None:
    for key, ttl in (("1", HOUR), ("2", 2 * HOUR), ("3", 3 * HOUR)):
        await create_session(db, key * 64, username="admin", csrf_token=key, ttl=ttl, now=NOW)
    assert await drop_session(db, "1" * 64) is True
    assert await drop_session(db, "1" * 64) is False
    assert await prune_sessions(db, now=NOW + 2 * HOUR) == 1  # "2" ended; "3" lives on
    assert await get_session(db, "3" * 64, now=NOW) is not None
    assert await get_session(db, "2" * 64, now=NOW) is None


async def test_the_store_keeps_only_the_digest_of_the_id(db: Database) -> None:
    store = DatabaseSessionStore(db, ttl=3600)
    session_id, session = await store.create("admin")
    assert await store.get(session_id) == session
    async with db.transaction() as s:
        rows = list(await s.scalars(select(Session)))
    assert [r.id_sha256 for r in rows] == [session_digest(session_id)]
    assert all(session_id not in str(v) for r in rows for v in vars(r).values())
    await store.drop(session_id)
    assert await store.get(session_id) is None and await store.get(None) is None
