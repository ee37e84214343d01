"""The Spaces pages' queries (storage/space_views.py) on a real SQLite file and PostgreSQL.

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
    pause_until_resumed,
)
from mercury.storage.space_views import (
    MAX_PAGE,
    attachment_names,
    conversation_page,
    linked_conversations,
    space_summaries,
)
from tests.integration.test_storage import db, db_url, postgres_server_url

__all__ = ["db", "db_url", "postgres_server_url"]  # fixtures shared with test_storage.py

T0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


async def _say(db: Database, space: str, text: str, at: datetime, **kw: object) -> int:
    msg = await add_message(
        db,
        space_id=space,
        platform="web",
        role=MessageRole.USER,
        text=text,
        created_at=at,
        **kw,  # type: ignore[arg-type]
    )
    return msg.id


async def test_space_summaries_newest_activity_first_with_counts(db: Database) -> None:
    for sid in ("quiet", "old", "new"):
        await get_or_create_space(db, sid)
    await _say(db, "old", "a", T0)
    await _say(db, "old", "b", T0 + timedelta(minutes=1))
    await _say(db, "new", "c", T0 + timedelta(hours=1))
    await link_conversation(db, "web", "chat-1", "old")
    await link_conversation(db, "slack", "C1", "old")
    await link_conversation(db, "web", "chat-2", "new")
    await pause_until_resumed(db, "quiet")

    page = await space_summaries(db)
    assert [i.space.id for i in page.items] == ["new", "old", "quiet"]
    by_id = {i.space.id: i for i in page.items}
    assert (by_id["old"].messages, by_id["old"].conversations) == (2, 2)
    assert (by_id["new"].messages, by_id["new"].conversations) == (1, 1)
    assert (by_id["quiet"].messages, by_id["quiet"].conversations) == (0, 0)
    assert by_id["new"].last_activity == T0 + timedelta(hours=1)
    assert by_id["old"].last_activity == T0 + timedelta(minutes=1)
    assert by_id["quiet"].last_activity is None
    assert by_id["quiet"].space.is_paused(T0)
    assert page.total == 3 and not page.has_next


async def test_space_summaries_pages(db: Database) -> None:
    for i in range(5):
        await get_or_create_space(db, f"s{i}")
        await _say(db, f"s{i}", "hi", T0 + timedelta(minutes=i))
    first = await space_summaries(db, offset=0, limit=2)
    second = await space_summaries(db, offset=2, limit=2)
    last = await space_summaries(db, offset=4, limit=2)
    assert [i.space.id for i in first.items] == ["s4", "s3"]
    assert [i.space.id for i in second.items] == ["s2", "s1"]
    assert [i.space.id for i in last.items] == ["s0"]
    assert first.has_next and second.has_next and not last.has_next
    assert last.total == 5
    assert (await space_summaries(db, limit=10_000)).limit == MAX_PAGE


async def test_conversation_page_goes_backwards_by_cursor(db: Database) -> None:
    await get_or_create_space(db, "a")
    await get_or_create_space(db, "other")
    ids = [await _say(db, "a", f"m{i}", T0 + timedelta(seconds=i)) for i in range(5)]
    await _say(db, "other", "not mine", T0)

    newest = await conversation_page(db, "a", limit=2)
    assert [m.text for m in newest.messages] == ["m3", "m4"]
    assert newest.older == ids[3]
    middle = await conversation_page(db, "a", before=newest.older, limit=2)
    assert [m.text for m in middle.messages] == ["m1", "m2"]
    first = await conversation_page(db, "a", before=middle.older, limit=2)
    assert [m.text for m in first.messages] == ["m0"]
    assert first.older is None
    exact = await conversation_page(db, "a", limit=5)
    assert len(exact.messages) == 5 and exact.older is None


async def test_conversation_page_keeps_authors_and_attachments(db: Database) -> None:
    await get_or_create_space(db, "a")
    await _say(
        db,
        "a",
        "see file",
        T0,
        author_id="u1",
        author_name="Ann",
        attachments=["inbox/00-report.pdf", {"name": "legacy.txt"}],
    )
    (msg,) = (await conversation_page(db, "a")).messages
    assert (msg.author_name, msg.author_id) == ("Ann", "u1")
    assert attachment_names(msg.attachments) == ["00-report.pdf", "legacy.txt"]


def test_attachment_names_ignores_junk() -> None:
    assert attachment_names([None, 3, "", {"x": 1}, "a\\b\\c.txt", "/space/inbox/x"]) == [
        "c.txt",
        "x",
    ]


async def test_linked_conversations_lists_only_the_space(db: Database) -> None:
    await get_or_create_space(db, "a")
    await get_or_create_space(db, "b")
    await link_conversation(db, "web", "z", "a")
    await link_conversation(db, "slack", "C9", "a", thread_id="171.2")
    await link_conversation(db, "web", "other", "b")
    convs = await linked_conversations(db, "a")
    assert [(c.platform, c.chat_id, c.thread_id) for c in convs] == [
        ("slack", "C9", "171.2"),
        ("web", "z", None),
    ]
