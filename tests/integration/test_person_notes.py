"""Person notes (storage/person_notes.py) on a real SQLite file and a real PostgreSQL.

A note belongs to one (space, person): these tests prove that no call reaches another
person's note or another space's, that the size cap refuses a write whole (never a cut
note), and that a space's notes go with the space.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete

from mercury.storage import (
    Database,
    NoteError,
    PersonNoteRecord,
    append_note,
    clear_note,
    get_note,
    get_or_create_space,
    list_notes,
    set_note,
)
from mercury.storage.models import Space
from mercury.storage.person_notes import MAX_NOTE_CHARS
from tests.integration.test_storage import db, db_url, postgres_server_url

__all__ = ["db", "db_url", "postgres_server_url"]  # fixtures shared with test_storage.py

T0 = datetime(2027, 2, 15, 9, 30, tzinfo=UTC)
ADA = "slack:U1"
BOB = "slack:U2"


@pytest.fixture
async def spaces(db: Database) -> Database:
    await get_or_create_space(db, "team")
    await get_or_create_space(db, "other")
    return db


async def test_a_note_is_set_read_and_replaced(spaces: Database) -> None:
    db = spaces
    assert await get_note(db, "team", ADA) is None
    made = await set_note(db, "team", ADA, "  prefers metric units\n", by="run:r1", now=T0)
    assert made == PersonNoteRecord("team", ADA, "prefers metric units", T0, "run:r1")
    assert await get_note(db, "team", ADA) == made

    later = T0 + timedelta(hours=1)
    await set_note(db, "team", ADA, "leads the data team", by="run:r2", now=later)
    assert await get_note(db, "team", ADA) == PersonNoteRecord(
        "team", ADA, "leads the data team", later, "run:r2"
    )


async def test_notes_are_per_space_and_per_person(spaces: Database) -> None:
    db = spaces
    await set_note(db, "team", ADA, "Ada in team", now=T0)
    await set_note(db, "team", BOB, "Bob in team", now=T0 + timedelta(minutes=1))
    await set_note(db, "other", ADA, "Ada elsewhere", now=T0)

    assert (await get_note(db, "team", ADA)).text == "Ada in team"  # type: ignore[union-attr]
    assert (await get_note(db, "other", ADA)).text == "Ada elsewhere"  # type: ignore[union-attr]
    assert await get_note(db, "other", BOB) is None
    # The dashboard's list: one space's notes only, the most recently updated first.
    assert [(n.user_key, n.text) for n in await list_notes(db, "team")] == [
        (BOB, "Bob in team"),
        (ADA, "Ada in team"),
    ]

    assert await clear_note(db, "team", ADA) is True
    assert await clear_note(db, "team", ADA) is False  # already gone: safe to do twice
    assert await get_note(db, "team", ADA) is None
    assert (await get_note(db, "team", BOB)).text == "Bob in team"  # type: ignore[union-attr]
    assert (await get_note(db, "other", ADA)).text == "Ada elsewhere"  # type: ignore[union-attr]


async def test_append_starts_a_note_then_adds_lines(spaces: Database) -> None:
    db = spaces
    first = await append_note(db, "team", ADA, "likes green tea", by="run:a", now=T0)
    assert (first.text, first.updated_by, first.updated_at) == ("likes green tea", "run:a", T0)
    second = await append_note(db, "team", ADA, " works on the Q3 report ", now=T0)
    assert second.text == "likes green tea\nworks on the Q3 report"
    assert (await get_note(db, "team", ADA)) == second
    assert await get_note(db, "team", BOB) is None


async def test_the_cap_refuses_a_write_whole_and_never_cuts_a_note(spaces: Database) -> None:
    db = spaces
    exactly = "x" * MAX_NOTE_CHARS
    assert (await set_note(db, "team", ADA, exactly)).text == exactly
    with pytest.raises(
        NoteError, match=f"at most {MAX_NOTE_CHARS} characters.*{MAX_NOTE_CHARS + 1}"
    ):
        await set_note(db, "team", BOB, "y" * (MAX_NOTE_CHARS + 1))
    assert await get_note(db, "team", BOB) is None

    await set_note(db, "team", BOB, "b" * (MAX_NOTE_CHARS - 10))
    with pytest.raises(NoteError, match="would have 4001"):
        await append_note(db, "team", BOB, "0123456789")  # + the newline: one too many
    assert (await get_note(db, "team", BOB)).text == "b" * (MAX_NOTE_CHARS - 10)  # type: ignore[union-attr]
    assert (await append_note(db, "team", BOB, "012345678")).text.endswith("\n012345678")


@pytest.mark.parametrize("text", ["", "   \n", "a\0b"])
async def test_empty_or_nul_text_is_refused(spaces: Database, text: str) -> None:
    with pytest.raises(NoteError):
        await set_note(spaces, "team", ADA, text)
    with pytest.raises(NoteError):
        await append_note(spaces, "team", ADA, text)
    assert await get_note(spaces, "team", ADA) is None


async def test_a_spaces_notes_go_with_the_space(spaces: Database) -> None:
    db = spaces
    await set_note(db, "team", ADA, "gone with the space")
    await set_note(db, "other", ADA, "stays")
    async with db.transaction() as s:
        await s.execute(delete(Space).where(Space.id == "team"))
    assert await list_notes(db, "team") == []
    assert [n.text for n in await list_notes(db, "other")] == ["stays"]
