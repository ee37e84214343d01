"""Person notes, one aggregate: what the agent remembers about one person in one space.

In a shared space what the bot learns about a person belongs to that person: one note per
(space, "platform:user_id"), given only to the runs that person triggers (input.json
`person_note`) and written only through their own runs' host API token
(api/routes/memory.py), so no other person's run can read or change it. The person sees
and clears it with /memory and /forget; an admin may clear anyone's (chat or dashboard).

A note is short on purpose, because it is in every prompt of its person: at most
MAX_NOTE_CHARS characters. A write past that is refused (NoteError), never cut: the agent
is told to condense the note instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select

from mercury.storage.errors import StorageError
from mercury.storage.models import PersonNote, utcnow
from mercury.storage.session import Store, rowcount, to_record, tx, upsert

MAX_NOTE_CHARS = 4_000


class NoteError(StorageError):
    """A note that cannot be stored (empty, too long, a NUL); the message says which."""


class NoteTooLong(NoteError):
    """The note would pass MAX_NOTE_CHARS: condense it, nothing was stored."""


@dataclass(frozen=True, slots=True)
class PersonNoteRecord:
    space_id: str
    user_key: str
    text: str
    updated_at: datetime
    updated_by: str | None


def _checked(text: str) -> str:
    """The text to store (trimmed), or NoteError naming what is wrong with it."""
    text = text.strip()
    if not text:
        raise NoteError("a note must not be empty (clear it instead)")
    if "\0" in text:
        raise NoteError("a note must not contain NUL characters")
    if len(text) > MAX_NOTE_CHARS:
        raise NoteTooLong(
            f"a note holds at most {MAX_NOTE_CHARS} characters; this one would have {len(text)}"
        )
    return text


async def get_note(store: Store, space_id: str, user_key: str) -> PersonNoteRecord | None:
    """The person's note in the space, or None."""
    async with tx(store) as s:
        row = await s.get(PersonNote, (space_id, user_key))
        return to_record(PersonNoteRecord, row) if row is not None else None


async def set_note(
    store: Store,
    space_id: str,
    user_key: str,
    text: str,
    *,
    by: str | None = None,
    now: datetime | None = None,
) -> PersonNoteRecord:
    """Replace the person's note with `text`; NoteError if it is empty or too long.
    `by` says who wrote it (e.g. "run:<run id>"), for the dashboard."""
    text = _checked(text)
    when = now or utcnow()
    async with tx(store) as s:
        await upsert(
            s,
            PersonNote,
            {
                "space_id": space_id,
                "user_key": user_key,
                "text": text,
                "updated_at": when,
                "updated_by": by,
            },
            ["space_id", "user_key"],
            {"text": text, "updated_at": when, "updated_by": by},
        )
    return PersonNoteRecord(space_id, user_key, text, when, by)


async def append_note(
    store: Store,
    space_id: str,
    user_key: str,
    text: str,
    *,
    by: str | None = None,
    now: datetime | None = None,
) -> PersonNoteRecord:
    """Add `text` as a new line of the person's note (starting one if there is none).

    NoteError when the line is empty or the note would grow past MAX_NOTE_CHARS: the
    note is then left as it was, whole."""
    line = text.strip()
    if not line:
        raise NoteError("nothing to append: the text is empty")
    async with tx(store) as s:
        # Read and write in one transaction; FOR UPDATE keeps a concurrent append on
        # PostgreSQL from writing over this one (SQLite serialises writers anyway).
        old = await s.scalar(
            select(PersonNote.text)
            .where(PersonNote.space_id == space_id, PersonNote.user_key == user_key)
            .with_for_update()
        )
        combined = f"{old.rstrip()}\n{line}" if old else line
        return await set_note(s, space_id, user_key, combined, by=by, now=now)


async def clear_note(store: Store, space_id: str, user_key: str) -> bool:
    """Delete the person's note; True if there was one."""
    async with tx(store) as s:
        result = await s.execute(
            delete(PersonNote).where(
                PersonNote.space_id == space_id, PersonNote.user_key == user_key
            )
        )
        return bool(rowcount(result))


async def list_notes(store: Store, space_id: str) -> list[PersonNoteRecord]:
    """Every person's note in the space, most recently updated first (the dashboard's)."""
    async with tx(store) as s:
        rows = await s.scalars(
            select(PersonNote)
            .where(PersonNote.space_id == space_id)
            .order_by(PersonNote.updated_at.desc(), PersonNote.user_key)
        )
        return [to_record(PersonNoteRecord, r) for r in rows]


__all__ = [
    "MAX_NOTE_CHARS",
    "NoteError",
    "NoteTooLong",
    "PersonNoteRecord",
    "append_note",
    "clear_note",
    "get_note",
    "list_notes",
    "set_note",
]
