"""The Chat page's query (storage/chat_views.py) on a real SQLite file and PostgreSQL.

Each case runs on both databases (the `db` fixture of test_storage.py).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from mercury.storage import (
    Database,
    MessageRole,
    add_message,
    get_or_create_space,
    link_conversation,
)
from mercury.storage.chat_views import MAX_CHATS, platform_chats
from tests.integration.test_storage import db, db_url, postgres_server_url

__all__ = ["db", "db_url", "postgres_server_url"]  # fixtures shared with test_storage.py

T0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


async def _chat(db: Database, platform: str, chat_id: str, space: str) -> int:
    await get_or_create_space(db, space)
    return (await link_conversation(db, platform, chat_id, space)).id


async def _say(db: Database, space: str, conversation_id: int | None, at: datetime) -> None:
    await add_message(
        db,
        space_id=space,
        platform="web",
        role=MessageRole.USER,
        text="hello",
        conversation_id=conversation_id,
        created_at=at,
    )


async def test_web_chats_newest_activity_first_with_their_space_and_count(db: Database) -> None:
    old = await _chat(db, "web", "old", "web-old")
    new = await _chat(db, "web", "new", "web-new")
    await _chat(db, "web", "silent", "web-silent")
    slack = await _chat(db, "slack", "C1", "web-old")  # another platform, same space
    await _say(db, "web-old", old, T0)
    await _say(db, "web-old", old, T0 + timedelta(minutes=1))
    await _say(db, "web-new", new, T0 + timedelta(hours=1))
    await _say(db, "web-old", slack, T0 + timedelta(hours=2))  # the slack chat's, not old's
    await _say(db, "web-old", None, T0 + timedelta(hours=3))  # a reply: no conversation

    chats = await platform_chats(db, "web")

    assert [c.chat_id for c in chats] == ["new", "old", "silent"]
    by_id = {c.chat_id: c for c in chats}
    assert (by_id["old"].space_id, by_id["old"].messages) == ("web-old", 2)
    assert by_id["old"].last_activity == T0 + timedelta(minutes=1)
    assert by_id["new"].last_activity == T0 + timedelta(hours=1)
    assert (by_id["silent"].messages, by_id["silent"].last_activity) == (0, None)
    assert [c.chat_id for c in await platform_chats(db, "slack")] == ["C1"]


async def test_platform_chats_is_bounded(db: Database) -> None:
    for i in range(5):
        conv = await _chat(db, "web", f"chat-{i}", f"space-{i}")
        await _say(db, f"space-{i}", conv, T0 + timedelta(minutes=i))

    assert [c.chat_id for c in await platform_chats(db, "web", limit=2)] == ["chat-4", "chat-3"]
    assert len(await platform_chats(db, "web", limit=0)) == 1  # at least one row is asked for
    assert MAX_CHATS >= 100
    assert await platform_chats(db, "discord") == []
