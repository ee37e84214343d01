"""/budget through the inbound handler on a real SQLite database with a real BudgetBook.

Anyone who may use the agent sees the caps and what is used; only an admin changes them,
and a change applies to the running checks at once (the book's cached caps are dropped).
A reached cap refuses messages but not /budget, so an admin can raise it from the chat.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mercury.api.usage import MeteredCall
from mercury.config import Config
from mercury.core.budget import Cap, Scope
from mercury.core.budget_text import BudgetSetting
from mercury.core.commands import Command, CommandKind
from mercury.pipeline.budget import BudgetBook, read_overrides
from mercury.pipeline.commands import ChatCommands
from mercury.pipeline.dispatcher import Dispatcher
from mercury.pipeline.inbound import InboundHandler
from mercury.storage import Database, JobStatus, repo
from mercury.storage.migrate import upgrade
from tests.unit.pipeline.test_commands import (
    ADMIN,
    MEMBER,
    SPACE,
    Chat,
    NoticeAdapter,
    StandInRunner,
)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return Config.model_validate(
        {
            "data_dir": str(tmp_path),
            "permissions": {"admins": [f"web:{ADMIN}"]},
            "budgets": {"space_day": "$5", "user_day": "$2", "instance_day": "$100"},
        }
    )


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
    await upgrade(url)
    database = Database(url)
    try:
        yield database
    finally:
        await database.dispose()


@pytest.fixture
async def book(config: Config, db: Database) -> BudgetBook:
    book = BudgetBook(config, db)
    await book.load()
    return book


@pytest.fixture
def chat(config: Config, db: Database, book: BudgetBook) -> Chat:
    adapter = NoticeAdapter()

    async def never(job: Any) -> JobStatus:  # the dispatcher is never started here
        raise AssertionError("no job runs in these tests")

    dispatcher = Dispatcher(db, never, max_concurrency=1)
    handler = InboundHandler(
        config,
        db,
        dispatcher,
        StandInRunner(),  # type: ignore[arg-type]
        {"web": adapter},  # type: ignore[dict-item]
        budget=book,
    )
    return Chat(handler, adapter)


async def spend(book: BudgetBook, usd: float, user: str | None = None) -> None:
    """A model call of the space, counted and stored as the proxy's meter would."""
    book.count(
        MeteredCall(
            run_id="run-1",
            space_id=SPACE,
            provider="anthropic",
            model="claude-sonnet-4-5",
            input_tokens=1000,
            output_tokens=100,
            cost_usd=usd,
            status=200,
            user_key=user,
        )
    )
    await book.drain()


async def queued(db: Database) -> int:
    return await repo.count_jobs(db, status=JobStatus.QUEUED, space_id=SPACE)


async def test_a_member_sees_the_caps_and_what_is_used(chat: Chat, book: BudgetBook) -> None:
    assert await chat.say("hello", author=MEMBER) == ""  # creates the space
    await spend(book, 1.25, user=f"web:{MEMBER}")
    text = await chat.say("/budget", author=MEMBER)
    lines = text.splitlines()
    assert lines[0] == "Spending caps (days and months are UTC):"
    assert any(line.startswith("• All spaces, per day: $100.00 — $1.25 used") for line in lines)
    assert any(line.startswith("• This space, per day: $5.00 — $1.25 used") for line in lines)
    assert any(line.startswith("• Each person, per day: $2.00") for line in lines)
    assert "• Each run of a scheduled task: no cap" in lines
    assert "/budget <cap> <value>" in lines[-1]


async def test_a_member_may_not_change_a_cap(chat: Chat, db: Database) -> None:
    answer = await chat.say("/budget day $50", author=MEMBER)
    assert answer.startswith("Sorry — you don't have permission")
    assert await read_overrides(db, SPACE) == {}


async def test_an_admin_change_applies_to_the_running_checks_at_once(
    chat: Chat, db: Database, book: BudgetBook
) -> None:
    await chat.say("hello")
    assert (await book.caps_for(SPACE)).space_day == Cap(usd=5.0)  # cached for a while now

    assert await chat.say("/budget day $10") == "This space's daily cap is now $10.00."
    assert await read_overrides(db, SPACE) == {Scope.SPACE_DAY: Cap(usd=10.0)}
    assert (await book.caps_for(SPACE)).space_day == Cap(usd=10.0)  # not the cached $5

    assert (
        await chat.say("/budget user off")
        == "The daily cap per person in this space is now no cap."
    )
    assert (await book.caps_for(SPACE)).user_day is None
    text = await chat.say("/budget")
    assert "• This space, per day: $10.00 (set for this space)" in text
    assert "• Each person, per day: no cap (set for this space)" in text

    answer = await chat.say("/budget day default")
    assert answer == "This space's daily cap follows mercury.yaml again: $5.00."
    assert await read_overrides(db, SPACE) == {Scope.USER_DAY: None}
    assert (await book.caps_for(SPACE)).space_day == Cap(usd=5.0)


async def test_a_bad_value_is_answered_and_nothing_is_stored(chat: Chat, db: Database) -> None:
    answer = await chat.say("/budget day plenty")
    assert answer.startswith("I couldn't set that: space_day: expected a dollar amount")
    answer = await chat.say("/budget instance_day $500")
    assert answer.endswith("set budgets.instance_day in mercury.yaml.")
    assert await read_overrides(db, SPACE) == {}


async def test_when_a_cap_is_reached_budget_still_answers_so_an_admin_can_raise_it(
    chat: Chat, db: Database, book: BudgetBook
) -> None:
    await chat.say("hello", author=MEMBER)
    assert await queued(db) == 1
    await spend(book, 5.5)

    refusal = await chat.say("are you there?", author=MEMBER)
    assert refusal.startswith("Sorry — this space's daily spending cap ($5.00) is reached")
    assert await queued(db) == 1
    shown = await chat.say("/budget", author=MEMBER)
    assert "• This space, per day: $5.00 — $5.50 used, REACHED" in shown

    assert await chat.say("/budget day $20") == "This space's daily cap is now $20.00."
    assert await chat.say("back?", author=MEMBER) == ""
    assert await queued(db) == 2


async def test_budget_counts_the_senders_own_day_when_told_who_asks(
    config: Config, db: Database, book: BudgetBook
) -> None:
    await repo.get_or_create_space(db, SPACE)
    await spend(book, 0.75, user="web:bob")
    await spend(book, 0.5, user="web:eve")
    commands = ChatCommands(config, db, StandInRunner(), budget=book)
    text = await commands.run(Command(CommandKind.BUDGET), SPACE, "web:bob")
    assert "• Each person, per day: $2.00 — you: $0.75 used" in text
    assert "• This space, per day: $5.00 — $1.25 used" in text


async def test_without_a_book_the_spend_is_read_from_the_database(
    config: Config, db: Database, book: BudgetBook
) -> None:
    # What a process with no counters of its own sees: the stored calls.
    await repo.get_or_create_space(db, SPACE)
    await spend(book, 0.75, user="web:bob")
    commands = ChatCommands(config, db, StandInRunner())
    text = await commands.run(Command(CommandKind.BUDGET), SPACE, "web:bob")
    assert "• This space, per day: $5.00 — $0.75 used" in text
    assert "you: $0.75 used" in text
    answer = await commands.run(
        Command(CommandKind.BUDGET_SET, budget=BudgetSetting(Scope.TASK_RUN, Cap(usd=0.5))),
        SPACE,
    )
    assert answer == "The cap per run of a scheduled task here is now $0.50."
