"""What /memory and /forget DO, through the inbound handler on a real SQLite database (the
fixtures of test_commands.py): each is answered from, and changes, the stored notes.

Everyone sees and clears only their own note; an admin clears anyone's by platform:user_id;
a member may not; no command starts a run, and a note of another space is never shown.
"""

from __future__ import annotations

from mercury.pipeline.commands import NO_NOTES
from mercury.storage import Database, get_note, get_or_create_space, set_note
from tests.unit.pipeline.test_commands import (
    ADMIN,
    MEMBER,
    SPACE,
    Chat,
    chat,
    config,
    db,
    db_url,
    queued,
    runner,
)

__all__ = ["chat", "config", "db", "db_url", "runner"]  # fixtures of test_commands.py

BOB = f"web:{MEMBER}"
CAROL = "web:carol"


async def notes(db: Database) -> None:
    """Bob and Carol each have a note here; Bob has one in another space too."""
    await get_or_create_space(db, SPACE)
    await get_or_create_space(db, "elsewhere")
    await set_note(db, SPACE, BOB, "prefers metric units\nworks on the Q3 report")
    await set_note(db, SPACE, CAROL, "Carol's own business")
    await set_note(db, "elsewhere", BOB, "Bob in another space")


async def test_memory_shows_the_senders_own_note_and_nobody_elses(chat: Chat, db: Database) -> None:
    assert await chat.say("/memory", author="dave") == NO_NOTES == "I have no notes about you."
    await notes(db)
    answer = await chat.say("/memory", author=MEMBER)
    assert answer == (
        "What I remember about you here:\nprefers metric units\nworks on the Q3 report\n\n"
        "/forget clears it."
    )
    assert "Carol" not in answer and "another space" not in answer
    assert await chat.say("/memory", author="dave") == NO_NOTES
    assert await queued(db) == []  # a command, never a run


async def test_forget_clears_only_the_senders_own_note(chat: Chat, db: Database) -> None:
    await notes(db)
    answer = await chat.say("/forget", author=MEMBER)
    assert answer == "Done: I no longer remember anything about you here."
    assert await get_note(db, SPACE, BOB) is None
    assert (await get_note(db, SPACE, CAROL)).text == "Carol's own business"  # type: ignore[union-attr]
    assert (await get_note(db, "elsewhere", BOB)).text == "Bob in another space"  # type: ignore[union-attr]
    assert await chat.say("/forget", author=MEMBER) == NO_NOTES  # done twice: nothing more
    assert await chat.say("/memory", author=MEMBER) == NO_NOTES


async def test_an_admin_clears_someone_elses_note_a_member_may_not(
    chat: Chat, db: Database
) -> None:
    await notes(db)
    refused = await chat.say(f"/forget {CAROL}", author=MEMBER)
    assert refused.startswith("Sorry — you don't have permission to")
    assert "other people's memory" in refused
    assert await get_note(db, SPACE, CAROL) is not None

    done = await chat.say(f"/forget {CAROL}", author=ADMIN)
    assert done == f"Done: I no longer remember anything about {CAROL} here."
    assert await get_note(db, SPACE, CAROL) is None
    assert await get_note(db, SPACE, BOB) is not None
    assert await chat.say(f"/forget {CAROL}", author=ADMIN) == (
        f"I have no notes about {CAROL} here."
    )


async def test_a_name_that_is_not_a_user_key_is_answered_and_changes_nothing(
    chat: Chat, db: Database
) -> None:
    await notes(db)
    answer = await chat.say("/forget @carol", author=ADMIN)
    assert answer.startswith("I can't tell who '@carol' is")
    assert await get_note(db, SPACE, CAROL) is not None
