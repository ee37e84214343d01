"""The run author's note through the host API (/spaces/{id}/memory/me): a real unix socket
over a real migrated SQLite database (the fixtures of test_space_api.py).

What is proved: a run's token reaches its own author's note and nobody else's (two runs
of two people in one space never see each other's), nor a note in another space; a run
that acts for nobody gets 409; the cap refuses a write whole and says how to go on. Every
write is read back through storage, not only through the API's answer.
"""

from __future__ import annotations

from mercury.storage import get_note, set_note
from mercury.storage.person_notes import MAX_NOTE_CHARS
from tests.integration.test_space_api import BASE, Api, api, assert_error, db

__all__ = ["api", "db"]  # fixtures shared with test_space_api.py

ME = "/spaces/space-a/memory/me"
ADA = "slack:U-ada"
BOB = "slack:U-bob"


def runs(api: Api) -> tuple[str, str]:
    """Tokens of two runs in space A: one answering Ada, one answering Bob."""
    return (
        api.tokens.mint("run-ada", "space-a", "member", user_key=ADA),
        api.tokens.mint("run-bob", "space-a", "member", user_key=BOB),
    )


async def test_a_run_reads_and_writes_only_its_authors_note(api: Api) -> None:
    ada, bob = runs(api)
    assert await api.call("GET", ME, ada) == (
        200,
        {"user_key": ADA, "text": None, "updated_at": None, "max_chars": MAX_NOTE_CHARS},
    )

    status, body = await api.call("PUT", ME, ada, {"text": "prefers short answers"})
    assert status == 200, body
    assert (body["user_key"], body["text"]) == (ADA, "prefers short answers")
    status, body = await api.call("PUT", ME, ada, {"append": "leads the data team"})
    assert (status, body["text"]) == (200, "prefers short answers\nleads the data team")
    stored = await get_note(api.db, "space-a", ADA)
    assert stored is not None and stored.text == "prefers short answers\nleads the data team"
    assert stored.updated_by == "run:run-ada"
    assert body["updated_at"] == stored.updated_at.isoformat()

    # Bob's run, in the same space, sees none of it and writes only his own.
    status, body = await api.call("GET", ME, bob)
    assert (status, body["user_key"], body["text"]) == (200, BOB, None)
    await api.call("PUT", ME, bob, {"append": "on call this week"})
    assert (await api.call("GET", ME, ada))[1]["text"].endswith("leads the data team")
    assert (await get_note(api.db, "space-a", BOB)).text == "on call this week"  # type: ignore[union-attr]

    # Clearing is the author's own too.
    assert await api.call("DELETE", ME, bob) == (200, {"user_key": BOB, "deleted": True})
    assert await api.call("DELETE", ME, bob) == (200, {"user_key": BOB, "deleted": False})
    assert await get_note(api.db, "space-a", BOB) is None
    assert await get_note(api.db, "space-a", ADA) is not None


async def test_no_route_names_another_person_or_space(api: Api) -> None:
    ada, _ = runs(api)
    await set_note(api.db, "space-a", BOB, "Bob's secret plans")
    await set_note(api.db, "space-b", ADA, "Ada in space B")
    for path in (
        f"/spaces/space-a/memory/{BOB}",
        "/spaces/space-a/memory/slack/U-bob",
        "/spaces/space-a/memory",
    ):
        headers = {"Authorization": f"Bearer {ada}"}
        async with api.session.get(BASE + path, headers=headers) as resp:
            assert resp.status in (404, 405), path
            assert "secret" not in await resp.text()
    # A query parameter or a body naming someone else changes nothing: "me" is the token's.
    status, body = await api.call("GET", f"{ME}?user_key={BOB}", ada)
    assert (status, body["user_key"], body["text"]) == (200, ADA, None)
    status, body = await api.call("PUT", ME, ada, {"text": "mine", "user_key": BOB})
    assert (status, body["user_key"]) == (200, ADA)
    assert (await get_note(api.db, "space-a", BOB)).text == "Bob's secret plans"  # type: ignore[union-attr]
    # Ada's token is space A's: space B's note (hers, even) is out of its reach.
    status, body = await api.call("GET", "/spaces/space-b/memory/me", ada)
    assert status == 403, body
    assert (await get_note(api.db, "space-b", ADA)).text == "Ada in space B"  # type: ignore[union-attr]


async def test_a_run_that_acts_for_nobody_gets_409(api: Api) -> None:
    # The fixture's tokens have no user key: the operator's own run, a creatorless task.
    for method, body in (("GET", None), ("PUT", {"text": "x"}), ("DELETE", None)):
        status, answer = await api.call(method, ME, api.admin_a, body)
        assert_error(status, answer, 409, "invalid_request_error", "acts for no person")
    assert await get_note(api.db, "space-a", "") is None


async def test_bad_writes_are_400_and_change_nothing(api: Api) -> None:
    ada, _ = runs(api)
    await api.call("PUT", ME, ada, {"text": "kept"})
    cases = [
        ({}, "exactly one of"),
        ({"text": "a", "append": "b"}, "exactly one of"),
        ({"text": "   "}, "must not be empty"),
        ({"append": 42}, "must be a string"),
        ({"text": "x" * (MAX_NOTE_CHARS + 1)}, "condense the note"),
        ({"append": "y" * MAX_NOTE_CHARS}, f"at most {MAX_NOTE_CHARS} characters"),
    ]
    for body, fragment in cases:
        status, answer = await api.call("PUT", ME, ada, body)
        assert_error(status, answer, 400, "invalid_request_error", fragment)
    status, answer = await api.call("PUT", ME, ada, raw="[1, 2]")
    assert_error(status, answer, 400, "invalid_request_error", "JSON object")
    assert (await get_note(api.db, "space-a", ADA)).text == "kept"  # type: ignore[union-attr]


async def test_a_write_to_a_space_without_a_row_is_404(api: Api) -> None:
    token = api.tokens.mint("run-ghost", "space-ghost", "member", user_key=ADA)
    status, body = await api.call("PUT", "/spaces/space-ghost/memory/me", token, {"text": "x"})
    assert_error(status, body, 404, "not_found_error", "does not exist")
