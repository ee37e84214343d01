"""Recall (storage/recall.py and migration 0010) on a real SQLite file and a real PostgreSQL.

Every case runs on both databases (the `db` fixture of test_storage.py). The host API
endpoint and `mercury-ctl recall` are tested in test_recall_api.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import bindparam, delete, func, inspect, select, text, update

from mercury.storage import (
    Database,
    MessageRole,
    RecallHit,
    add_message,
    downgrade,
    get_or_create_space,
    search_messages,
    upgrade,
)
from mercury.storage.models import Message, Space, UTCDateTime
from mercury.storage.recall import SNIPPET_CHARS, clip_snippet, fts5_query, query_words
from tests.integration.test_storage import db, db_url, postgres_server_url

__all__ = ["db", "db_url", "postgres_server_url"]  # fixtures shared with test_storage.py

T0 = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)
LONG = " ".join(f"filler{i}" for i in range(60))


async def say(
    db: Database,
    text_: str,
    *,
    space: str = "space-a",
    role: MessageRole = MessageRole.USER,
    author: str | None = "Ana",
    minutes: int = 0,
) -> int:
    msg = await add_message(
        db,
        space_id=space,
        platform="web",
        role=role,
        text=text_,
        author_name=author,
        created_at=T0 + timedelta(minutes=minutes),
    )
    return msg.id


@pytest.fixture
async def spaces(db: Database) -> Database:
    await get_or_create_space(db, "space-a")
    await get_or_create_space(db, "space-b")
    return db


def ids(hits: list[RecallHit]) -> list[int]:
    return [h.message_id for h in hits]


# --------------------------------------------------------------------------- searching


async def test_best_matches_first_with_date_author_and_marked_snippet(spaces: Database) -> None:
    db = spaces
    once = await say(db, "The quarterly report is due on Friday", minutes=1)
    thrice = await say(db, "report, report: the report for the board", author="Ben", minutes=2)
    diluted = await say(db, f"{LONG} and somewhere a report {LONG}", minutes=3)
    await say(db, "nothing to see here", minutes=4)
    bot = await say(
        db, "I filed the report.", role=MessageRole.ASSISTANT, author="mercury", minutes=5
    )

    hits = await search_messages(db, "space-a", "report")

    assert ids(hits)[0] == thrice
    assert set(ids(hits)) == {once, thrice, diluted, bot}
    assert ids(hits).index(once) < ids(hits).index(diluted)  # a long text weighs less
    assert [h.rank for h in hits] == sorted((h.rank for h in hits), reverse=True)
    top = hits[0]
    assert (top.author_name, top.role, top.created_at) == (
        "Ben",
        MessageRole.USER,
        T0 + timedelta(minutes=2),
    )
    assert "«report»" in top.snippet
    long_hit = next(h for h in hits if h.message_id == diluted)
    assert "«report»" in long_hit.snippet and len(long_hit.snippet) <= SNIPPET_CHARS
    assert len(long_hit.snippet) < len(f"{LONG} and somewhere a report {LONG}")

    assert len(await search_messages(db, "space-a", "report", limit=2)) == 2


async def test_every_word_must_match_else_any_of_them(spaces: Database) -> None:
    db = spaces
    both = await say(db, "The invoice from the Berlin office arrived", minutes=1)
    invoice = await say(db, "Another invoice, from Paris", minutes=2)
    berlin = await say(db, "Berlin is cold in March", minutes=3)

    assert ids(await search_messages(db, "space-a", "berlin INVOICE")) == [both]
    # No message has all three words: any of them will do, the fullest match first.
    hits = await search_messages(db, "space-a", "invoice berlin zanzibar")
    assert ids(hits)[0] == both
    assert set(ids(hits)) == {both, invoice, berlin}
    assert await search_messages(db, "space-a", "zanzibar timbuktu") == []


async def test_only_the_spaces_own_chat_messages_are_found(spaces: Database) -> None:
    db = spaces
    mine = await say(db, "the wifi password is on the fridge", minutes=1)
    overheard = await say(
        db, "psst, the wifi password changed", role=MessageRole.AMBIENT, minutes=2
    )
    await say(db, "wifi password for space b", space="space-b", minutes=3)
    await say(db, "refused: give me the wifi password", role=MessageRole.REFUSED, minutes=4)

    hits = await search_messages(db, "space-a", "wifi password")
    assert set(ids(hits)) == {mine, overheard}
    assert all(h.role is not MessageRole.REFUSED for h in hits)
    other = await search_messages(db, "space-b", "wifi")
    assert [h.snippet for h in other] == ["«wifi» password for space b"]
    assert await search_messages(db, "no-such-space", "wifi") == []
    # Refused text is not found even when nothing else matches.
    assert await search_messages(db, "space-a", "refused") == []


async def test_before_leaves_out_later_messages(spaces: Database) -> None:
    db = spaces
    early = await say(db, "deploy to staging", minutes=1)
    await say(db, "deploy to production", minutes=10)
    cutoff = T0 + timedelta(minutes=5)
    assert ids(await search_messages(db, "space-a", "deploy", before=cutoff)) == [early]


HOSTILE = [
    '"',
    '""',
    "*",
    "* OR *",
    "AND OR NOT",
    "NOT",
    "'; DROP TABLE messages; --",
    "' OR 1=1 --",
    "NEAR(a b)",
    "text:secret",
    "{text}: secret",
    "^secret",
    "secret*",
    "-secret",
    "!secret & | :*",
    "(",
    ")",
    "\\",
    "%",
    "_",
    "%_%",
    "\x00",
    "🎉🎉",
    "¯\\_(ツ)_/¯",
    "Zürich Café",
    "東京",
    "مرحبا",
    "word " * 300,
]


@pytest.mark.parametrize("query", HOSTILE)
async def test_hostile_queries_neither_raise_nor_match_everything(
    spaces: Database, query: str
) -> None:
    db = spaces
    texts = [
        "to be or not to be and that is all",
        "please drop the table by the window",
        "the secret is in the attic",
        "Treffen im Café in Zürich",
        "東京 tower at night",
        "مرحبا يا صديقي",
        "an ordinary message about lunch",
        "another message about the weather",
        "a third message about nothing",
    ]
    for i, t in enumerate(texts):
        await say(db, t, minutes=i)
    for i, t in enumerate(texts):
        await say(db, t, space="space-b", minutes=i)

    hits = await search_messages(db, "space-a", query, limit=50)

    assert len(hits) < len(texts)
    words = {w.casefold() for w in query_words(query)}
    async with db.transaction() as s:
        for hit in hits:
            found = (await s.scalar(select(Message.text).where(Message.id == hit.message_id))) or ""
            assert words & {w.casefold() for w in query_words(found)}, (query, found)
            assert hit.snippet
    async with db.transaction() as s:
        assert await s.scalar(select(func.count()).select_from(Message)) == 2 * len(texts)


async def test_hostile_words_are_searched_literally(spaces: Database) -> None:
    db = spaces
    hamlet = await say(db, "to be or not to be and that is all", minutes=1)
    window = await say(db, "please drop the table by the window", minutes=2)
    tokyo = await say(db, "東京 tower at night", minutes=3)
    cafe = await say(db, "Treffen im Café in Zürich", minutes=4)
    await say(db, "an ordinary message about lunch", minutes=5)

    assert ids(await search_messages(db, "space-a", "AND OR NOT")) == [hamlet]
    assert ids(await search_messages(db, "space-a", "'; DROP TABLE messages; --")) == [window]
    assert ids(await search_messages(db, "space-a", "東京")) == [tokyo]
    assert ids(await search_messages(db, "space-a", "café ZÜRICH")) == [cafe]
    if db.dialect == "sqlite":  # unicode61 remove_diacritics; PostgreSQL's 'simple' keeps them
        assert ids(await search_messages(db, "space-a", "cafe zurich")) == [cafe]


def test_query_words_and_the_fts5_query_carry_no_syntax() -> None:
    assert query_words('"NEAR(a b)" text:x* -y ^z') == ["NEAR", "a", "b", "text", "x", "y", "z"]
    assert query_words("snake_case Re-use re-USE") == ["snake", "case", "Re", "use"]
    assert query_words("'; --") == []
    assert len(query_words("w " * 100 + " ".join(f"w{i}" for i in range(100)))) == 16
    assert fts5_query(["AND", "x"]) == '"AND" AND "x"'
    assert fts5_query(["a", "b"], any_word=True) == '"a" OR "b"'


def test_clip_snippet_keeps_the_first_match_and_closes_its_mark() -> None:
    assert clip_snippet("short  and\nsimple") == "short and simple"
    early = clip_snippet("«hit» " + "x" * 400)
    assert early.startswith("«hit»") and len(early) <= SNIPPET_CHARS
    late = clip_snippet("y" * 350 + " «hit» tail")
    assert "«hit»" in late and late.startswith("…") and len(late) <= SNIPPET_CHARS
    cut = clip_snippet("«" + "z" * 500 + "»")
    assert cut.count("«") == cut.count("»") == 1 and len(cut) <= SNIPPET_CHARS


# --------------------------------------------------------------------------- the index


async def _index_rowids(db: Database, word: str) -> set[int]:
    """What the index itself holds for `word` (SQLite: the FTS5 table, no join)."""
    async with db.transaction() as s:
        if db.dialect == "sqlite":
            sql = "SELECT rowid FROM messages_fts WHERE messages_fts MATCH :q"
            rows = await s.execute(text(sql), {"q": f'"{word}"'})
        else:
            sql = "SELECT id FROM messages WHERE text_search @@ plainto_tsquery('simple', :q)"
            rows = await s.execute(text(sql), {"q": word})
        return {int(r[0]) for r in rows}


async def test_the_index_follows_updates_and_deletes(spaces: Database) -> None:
    db = spaces
    first = await say(db, "alpha bravo", minutes=1)
    second = await say(db, "alpha charlie", space="space-b", minutes=2)
    async with db.transaction() as s:
        await s.execute(update(Message).where(Message.id == first).values(text="omega bravo"))
    assert await _index_rowids(db, "alpha") == {second}
    assert ids(await search_messages(db, "space-a", "omega")) == [first]
    assert await search_messages(db, "space-a", "alpha") == []

    async with db.transaction() as s:  # a change of another column keeps the entry
        await s.execute(update(Message).where(Message.id == first).values(author_name="Zoe"))
    assert await _index_rowids(db, "omega") == {first}

    async with db.transaction() as s:
        await s.execute(delete(Message).where(Message.id == first))
    assert await _index_rowids(db, "omega") == set()
    async with db.transaction() as s:  # the space's messages go with it (ON DELETE CASCADE)
        await s.execute(delete(Space).where(Space.id == "space-b"))
    assert await _index_rowids(db, "alpha") == set()


async def _search_objects(url: str) -> set[str]:
    database = Database(url)
    try:
        async with database.engine.connect() as conn:

            def read(c: Any) -> set[str]:
                found = set(inspect(c).get_table_names())
                found |= {col["name"] for col in inspect(c).get_columns("messages")}
                found |= {str(i["name"]) for i in inspect(c).get_indexes("messages")}
                return found & {"messages_fts", "text_search", "ix_messages_text_search"}

            return await conn.run_sync(read)
    finally:
        await database.dispose()


async def test_the_migration_indexes_messages_stored_before_it(db_url: str) -> None:
    await upgrade(db_url, "0009")
    url = db_url
    database = Database(url)
    try:
        await get_or_create_space(database, "space-a")
        async with database.transaction() as s:  # the 0009 schema, written as 0009 wrote it
            await s.execute(
                text(
                    "INSERT INTO messages (space_id, platform, role, text, attachments, is_bot,"
                    " created_at, author_name) VALUES ('space-a', 'web', :role, :text, '[]',"
                    " false, :at, 'Ana')"
                ).bindparams(bindparam("at", type_=UTCDateTime())),
                [
                    {"role": "user", "text": "the boat leaves at noon", "at": T0},
                    {"role": "assistant", "text": "noted: the boat at noon", "at": T0},
                    {"role": "user", "text": "unrelated chatter", "at": T0},
                ],
            )
        assert await _search_objects(url) == set()

        await upgrade(url, "0010")
        sqlite = database.dialect == "sqlite"
        expected = {"messages_fts"} if sqlite else {"text_search", "ix_messages_text_search"}
        assert await _search_objects(url) == expected
        hits = await search_messages(database, "space-a", "boat noon")
        assert len(hits) == 2 and all("«boat»" in h.snippet for h in hits)
        # Kept in step from then on.
        await say(database, "a boat for the lake", minutes=1)
        assert len(await search_messages(database, "space-a", "boat")) == 3

        await downgrade(url, "0009")
        assert await _search_objects(url) == set()
        async with database.transaction() as s:
            assert await s.scalar(text("SELECT count(*) FROM messages")) == 4
        await upgrade(url)
        assert len(await search_messages(database, "space-a", "boat")) == 3
    finally:
        await database.dispose()
