"""The run author's own note: what the agent remembers about the person it is answering.

GET    /spaces/{space_id}/memory/me                         note
PUT    /spaces/{space_id}/memory/me   {"text"} | {"append"}  note (replaced, or a line added)
DELETE /spaces/{space_id}/memory/me                         {"user_key", "deleted"}

A note: {"user_key", "text" (null: none yet), "updated_at", "max_chars"}.

"me" is the person the run acts for: the `user_key` its token was minted with (the
sender of the message, or the creator of the scheduled task). There is no route, and no
parameter, that names another person: a run can reach one note, its author's, in its own
space (the auth middleware already refused other spaces). A run that acts for nobody (the
operator's `mercury sandbox run`, a task without a creator) gets 409. Notes are capped
(storage/person_notes.py): a write past the cap is refused whole with 400 and the agent
is told to condense the note.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from mercury.api.auth import grant_of, http_error
from mercury.api.routes.common import (
    BASE,
    INVALID,
    bad,
    existing_space,
    iso,
    json_body,
    space_api,
    string_field,
)
from mercury.api.tokens import RunGrant
from mercury.storage import (
    NoteError,
    PersonNoteRecord,
    append_note,
    clear_note,
    get_note,
    set_note,
)
from mercury.storage.person_notes import MAX_NOTE_CHARS, NoteTooLong

routes = web.RouteTableDef()

NO_PERSON = (
    "this run acts for no person (the operator's own run, or a scheduled task without a "
    "creator), so it has no person's memory to read or write"
)
CONDENSE = (
    "; condense the note: read it (mercury-ctl memory show) and write it back shorter "
    "(mercury-ctl memory set)"
)


def _author(request: web.Request) -> tuple[RunGrant, str]:
    """The run's grant and the user key of the person it acts for; 409 when it has none."""
    grant = grant_of(request)
    if not grant.user_key:
        raise http_error(web.HTTPConflict, INVALID, NO_PERSON)
    return grant, grant.user_key


def note_json(user_key: str, note: PersonNoteRecord | None) -> dict[str, Any]:
    return {
        "user_key": user_key,
        "text": note.text if note is not None else None,
        "updated_at": iso(note.updated_at) if note is not None else None,
        "max_chars": MAX_NOTE_CHARS,
    }


@routes.get(f"{BASE}/memory/me")
async def get_my_note(request: web.Request) -> web.Response:
    grant, key = _author(request)
    note = await get_note(space_api(request).db, grant.space_id, key)
    return web.json_response(note_json(key, note))


@routes.put(f"{BASE}/memory/me")
async def put_my_note(request: web.Request) -> web.Response:
    grant, key = _author(request)
    data = await json_body(request)
    wanted = [k for k in ("text", "append") if k in data]
    if len(wanted) != 1:
        raise bad('send exactly one of "text" (replace the note) and "append" (add a line)')
    # A sanity bound on the request; the cap on the note it makes is the storage's,
    # whose refusal tells the agent to condense (an append may push a note past it).
    value = string_field(data, wanted[0], max_chars=2 * MAX_NOTE_CHARS)
    assert value is not None  # required: string_field raised otherwise
    db = space_api(request).db
    space_id = await existing_space(db, grant.space_id)
    write = set_note if wanted[0] == "text" else append_note
    try:
        note = await write(db, space_id, key, value, by=f"run:{grant.run_id}")
    except NoteTooLong as exc:
        raise bad(f"{exc}{CONDENSE}") from None
    except NoteError as exc:
        raise bad(str(exc)) from None
    return web.json_response(note_json(key, note))


@routes.delete(f"{BASE}/memory/me")
async def delete_my_note(request: web.Request) -> web.Response:
    grant, key = _author(request)
    deleted = await clear_note(space_api(request).db, grant.space_id, key)
    return web.json_response({"user_key": key, "deleted": deleted})
