"""input.json's `person_note` (pipeline/run_input.py) on a real SQLite database: a run gets
the note of the person it acts for (the job's user key) and never another person's, nor
the same person's note of another space; a run that acts for nobody gets none."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mercury.config import Config
from mercury.pipeline.payload import JobPayload
from mercury.pipeline.run_input import build_run_input
from mercury.storage import Database, get_or_create_space, repo, set_note
from mercury.storage.migrate import upgrade

SPACE = "team"


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
    await upgrade(url)
    database = Database(url)
    await get_or_create_space(database, SPACE)
    await get_or_create_space(database, "elsewhere")
    await set_note(database, SPACE, "slack:U-ada", "Ada: prefers metric units")
    await set_note(database, SPACE, "slack:U-bob", "Bob: on call this week")
    await set_note(database, "elsewhere", "slack:U-cy", "Cy elsewhere")
    try:
        yield database
    finally:
        await database.dispose()


async def note_for(db: Database, user_key: str | None, author: str = "someone") -> str | None:
    """The person_note of the input.json a job of `user_key` in SPACE is given."""
    payload = JobPayload(
        platform="slack",
        chat_id="C1",
        thread_id=None,
        reply_to=None,
        message_id=None,
        prompt="hi",
        author_id=author,
        author_name=author,
        role="member",
        user_key=user_key,
    )
    job = await repo.enqueue_job(db, SPACE, payload=payload.to_dict())
    data = await build_run_input(Config(), db, job, payload, "run-1", "general", None)
    return data.to_dict()["person_note"]


async def test_a_run_gets_its_own_persons_note_only(db: Database) -> None:
    assert await note_for(db, "slack:U-ada", "U-ada") == "Ada: prefers metric units"
    assert await note_for(db, "slack:U-bob", "U-bob") == "Bob: on call this week"
    # The author id alone decides nothing: the user key does (Ada's id on another platform
    # is another person).
    assert await note_for(db, "discord:U-ada", "U-ada") is None
    assert await note_for(db, "slack:U-cy", "U-cy") is None  # Cy's note is another space's


async def test_a_run_that_acts_for_nobody_gets_no_note(db: Database) -> None:
    assert await note_for(db, None, "scheduler") is None
