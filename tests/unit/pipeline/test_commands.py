"""What each chat command DOES, through the inbound handler on a real SQLite database.

Parsing and routing are tested in test_core_commands.py and test_core_router.py; here a
command is sent as a chat message and its effect is read back from storage (a fresh
`Database` on the same file where it matters: a pause must survive a restart) and from
what the next message does.

The runner is a small stand-in with the methods the handler and the commands call
(`abort`, `active_spaces`, `disk_low`): a real run needs a container. /stop against a real
running container is tested end to end in tests/integration/test_run_cancellation.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import count
from pathlib import Path
from typing import Any

import pytest

from mercury.config import Config
from mercury.core.history import HistoryItem, select_history
from mercury.core.messages import ConversationRef, InboundMessage, Reply, SentMessage
from mercury.core.triggers import TRIGGER_PREF
from mercury.pipeline.commands import ChatCommands, find_leg, model_list_text
from mercury.pipeline.dispatcher import Dispatcher
from mercury.pipeline.inbound import InboundHandler
from mercury.pipeline.payload import JobPayload
from mercury.storage import Database, JobStatus, MessageRole, repo, utcnow
from mercury.storage.migrate import upgrade

SPACE = "s1"  # the web chat names its space: conversation "s1" is space "s1"
ADMIN = "admin"
MEMBER = "bob"


@dataclass
class StandInRunner:
    """The runner's command-facing methods, with a run "in flight" when `running` has it."""

    running: set[str] = field(default_factory=set)
    aborted: list[str] = field(default_factory=list)

    async def abort(self, space_id: str) -> bool:
        self.aborted.append(space_id)
        if space_id in self.running:
            self.running.discard(space_id)
            return True
        return False

    def active_spaces(self) -> set[str]:
        return set(self.running)

    def disk_low(self) -> str | None:
        return None


@dataclass
class NoticeAdapter:
    """Keeps what the handler sends back (command answers, refusals)."""

    platform: str = "web"
    sent: list[str] = field(default_factory=list)

    @property
    def bot_handles(self) -> tuple[str, ...]:
        return ()

    async def send(self, reply: Reply) -> SentMessage:
        self.sent.append(reply.text)
        return SentMessage((f"out{len(self.sent)}",))


class Chat:
    """One web conversation with the handler; each message a DM (so always addressed)."""

    def __init__(self, handler: InboundHandler, adapter: NoticeAdapter) -> None:
        self.handler = handler
        self.adapter = adapter
        self._ids = count(1)

    async def say(
        self, text: str, *, author: str = ADMIN, ts: datetime | None = None, dm: bool = True
    ) -> str:
        """Send `text`; the one notice it got back, or "" when none."""
        before = len(self.adapter.sent)
        msg_id = next(self._ids)
        await self.handler(
            InboundMessage(
                platform="web",
                platform_message_id=f"m{msg_id}",
                conversation=ConversationRef("web", "s1"),
                author_id=author,
                author_name=author,
                text=text,
                ts=ts or utcnow(),
                is_dm=dm,
            )
        )
        answers = self.adapter.sent[before:]
        assert len(answers) <= 1, answers
        return answers[0] if answers else ""


@pytest.fixture
async def db_url(tmp_path: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
    await upgrade(url)
    return url


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return Config.model_validate(
        {
            "data_dir": str(tmp_path),
            "permissions": {"admins": [f"web:{ADMIN}"]},
            "model": {
                "chain": [
                    {"provider": "anthropic", "model": "claude-sonnet-4-5"},
                    {"provider": "openai", "model": "gpt-4o"},
                ]
            },
        }
    )


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = Database(db_url)
    try:
        yield database
    finally:
        await database.dispose()


@pytest.fixture
def runner() -> StandInRunner:
    return StandInRunner()


@pytest.fixture
def chat(config: Config, db: Database, runner: StandInRunner) -> Chat:
    adapter = NoticeAdapter()

    async def never(job: Any) -> JobStatus:  # the dispatcher is never started here
        raise AssertionError("no job runs in these tests")

    dispatcher = Dispatcher(db, never, max_concurrency=1)
    handler = InboundHandler(config, db, dispatcher, runner, {"web": adapter})  # type: ignore[arg-type]
    return Chat(handler, adapter)


async def queued(db: Database) -> list[JobPayload]:
    jobs = await repo.list_jobs(db, status=JobStatus.QUEUED, space_id=SPACE)
    return [JobPayload.from_dict(j.payload) for j in jobs]


async def reread_space(db_url: str) -> repo.SpaceRecord:
    """The space as a restarted Mercury (a new connection pool) reads it."""
    fresh = Database(db_url)
    try:
        space = await repo.get_space(fresh, SPACE)
    finally:
        await fresh.dispose()
    assert space is not None
    return space


# ------------------------------------------------------------------------- pause / resume


async def test_pause_until_resume_holds_messages_back_and_survives_a_restart(
    chat: Chat, db: Database, db_url: str
) -> None:
    assert await chat.say("hello") == ""
    assert [(p.prompt, p.user_key) for p in await queued(db)] == [("hello", "web:admin")]

    assert await chat.say("/pause") == "Paused. Send /resume to continue."
    space = await reread_space(db_url)
    far = utcnow() + timedelta(days=3650)
    assert space.is_paused(far) and space.pause_ends is None

    refusal = await chat.say("are you there?", author=MEMBER)
    assert refusal == "I'm paused here until an admin sends /resume."
    assert [p.prompt for p in await queued(db)] == ["hello"]  # not queued
    kept = await repo.recent_messages(db, SPACE, limit=10)
    assert [(m.text, m.role) for m in kept][-1] == ("are you there?", MessageRole.REFUSED)

    assert await chat.say("/resume") == "Resumed."
    space = await reread_space(db_url)
    assert not space.is_paused(utcnow()) and space.paused_until is None
    assert await chat.say("back?", author=MEMBER) == ""
    assert [p.prompt for p in await queued(db)] == ["hello", "back?"]


async def test_a_timed_pause_ends_by_itself(chat: Chat, db: Database, db_url: str) -> None:
    before = utcnow()
    answer = await chat.say("/pause 2h")
    after = utcnow()
    space = await reread_space(db_url)
    ends = space.pause_ends
    assert ends is not None
    assert before + timedelta(hours=2) - timedelta(seconds=1) <= ends
    assert ends <= after + timedelta(hours=2)
    assert answer == f"Paused until {ends:%Y-%m-%d %H:%M} UTC. /resume to continue sooner."
    assert space.is_paused(ends - timedelta(seconds=1)) and not space.is_paused(ends)

    refusal = await chat.say("now?", author=MEMBER)
    assert refusal.startswith("I'm paused here until") and "/resume" not in refusal
    assert await queued(db) == []
    # Once its end has passed (moved into the past: the router reads the clock), the pause
    # is over without anyone clearing it.
    await repo.pause_space(db, SPACE, utcnow() - timedelta(seconds=1))
    assert await chat.say("later?", author=MEMBER) == ""
    assert [p.prompt for p in await queued(db)] == ["later?"]


async def test_a_member_cannot_pause(chat: Chat, db_url: str) -> None:
    refusal = await chat.say("/pause", author=MEMBER)
    assert refusal.startswith("Sorry — you don't have permission")
    assert (await reread_space(db_url)).paused_until is None


# ------------------------------------------------------------------------- clear


async def test_clear_starts_the_history_after_it(chat: Chat, db: Database) -> None:
    old = utcnow() - timedelta(minutes=5)
    await chat.say("my name is Ada", ts=old)
    await chat.say("remember it", ts=old + timedelta(minutes=1))
    assert await chat.say("clear") == "Cleared: the next message starts a fresh conversation."
    await chat.say("what is my name?", ts=utcnow() + timedelta(seconds=1))

    space = await repo.get_space(db, SPACE)
    assert space is not None and space.context_reset_at is not None
    rows = await repo.recent_messages(db, SPACE, limit=20, roles=(MessageRole.USER,))
    items = [
        HistoryItem(str(m.id), m.author_id or "", m.author_name or "", m.text, m.created_at)
        for m in rows
    ]
    window = select_history(items, turns=20, max_chars=10_000, since=space.context_reset_at)
    assert [h.text for h in window] == ["what is my name?"]
    # Everything is still on record: the boundary hides, it does not delete.
    every = await repo.recent_messages(db, SPACE, limit=20, include_before_reset=True)
    assert "my name is Ada" in [m.text for m in every]


# ------------------------------------------------------------------------- model, status


async def test_model_switch_is_stored_and_status_reports_it(
    chat: Chat, db: Database, runner: StandInRunner
) -> None:
    status = await chat.say("/status")
    assert status == "Idle.\nNothing waiting.\nModel: claude-sonnet-4-5."

    assert await chat.say("/model switch 2") == "This space now uses openai/gpt-4o first."
    assert (await repo.get_preferences(db, SPACE)).get("_model") == "gpt-4o"
    listing = await chat.say("/model list")
    assert listing.splitlines()[1:] == [
        "1. anthropic/claude-sonnet-4-5",
        "2. openai/gpt-4o (current)",
    ]

    back = await chat.say("/model switch anthropic/claude-sonnet-4-5")
    assert back == "This space now uses anthropic/claude-sonnet-4-5 first."
    assert (await repo.get_preferences(db, SPACE))["_model"] == "claude-sonnet-4-5"
    unknown = await chat.say("/model switch gpt-9")
    assert unknown == "No model 'gpt-9' in the chain; /model list shows them."
    assert (await repo.get_preferences(db, SPACE))["_model"] == "claude-sonnet-4-5"


async def test_status_reports_the_queue_the_run_and_the_pause(
    chat: Chat, db: Database, runner: StandInRunner
) -> None:
    await chat.say("one", author=MEMBER)
    await chat.say("two", author=MEMBER)
    runner.running.add(SPACE)
    lines = (await chat.say("/status")).splitlines()
    assert lines[:2] == ["Working on a request.", "2 requests waiting."]

    await chat.say("/pause")
    assert "I'm paused here until an admin sends /resume." in await chat.say("/status")
    await chat.say("/resume")
    await chat.say("/pause 30m")
    status = await chat.say("/status")
    assert "I'm paused here until" in status and "/resume" not in status


async def test_status_counts_a_long_queue_in_full(
    config: Config, db: Database, runner: StandInRunner
) -> None:
    """Every waiting request counts, not just the first page a listing returns."""
    space = await repo.get_or_create_space(db, "busy")
    for _ in range(130):
        await repo.enqueue_job(db, space.id, payload={"platform": "web", "chat_id": "c"})
    status = await ChatCommands(config, db, runner).status(space.id)
    assert "130 requests waiting." in status.splitlines()


# ------------------------------------------------------------------------- stop


async def test_stop_drops_the_queue_and_aborts_the_running_run(
    chat: Chat, db: Database, runner: StandInRunner
) -> None:
    assert await chat.say("stop") == "Nothing was running."  # and nothing waiting
    await chat.say("first", author=MEMBER)
    await chat.say("second", author=MEMBER)
    runner.running.add(SPACE)

    answer = await chat.say("stop", author=MEMBER)
    assert answer == "Stopped the running request. Cleared 2 waiting message(s)."
    assert runner.aborted == [SPACE, SPACE] and not runner.running
    assert await queued(db) == []
    aborted = await repo.list_jobs(db, status=JobStatus.ABORTED, space_id=SPACE)
    assert [(JobPayload.from_dict(j.payload).prompt, j.error) for j in aborted] == [
        ("first", "stopped by /stop"),
        ("second", "stopped by /stop"),
    ]
    # The next message is queued as usual.
    await chat.say("third", author=MEMBER)
    assert [p.prompt for p in await queued(db)] == ["third"]


async def test_help_answers_with_the_command_list(chat: Chat) -> None:
    assert (await chat.say("/help")).startswith("Commands:")


# ------------------------------------------------------------------------- pure helpers


def test_find_leg_by_number_name_or_provider(config: Config) -> None:
    chain = config.model.chain
    assert find_leg(chain, "1") is chain[0] and find_leg(chain, " 2 ") is chain[1]
    assert find_leg(chain, "gpt-4o") is chain[1]
    assert find_leg(chain, "openai/gpt-4o") is chain[1]
    assert find_leg(chain, "3") is None and find_leg(chain, "0") is None
    assert find_leg(chain, "anthropic/gpt-4o") is None and find_leg(chain, "") is None


def test_model_list_marks_the_current_model(config: Config) -> None:
    text = model_list_text(config.model.chain, "gpt-4o")
    assert text == "Models:\n1. anthropic/claude-sonnet-4-5\n2. openai/gpt-4o (current)"


async def test_commands_work_without_the_inbound_handler(
    config: Config, db: Database, runner: StandInRunner
) -> None:
    """The commands module takes only what it needs: a store, the runner, the config."""
    await repo.get_or_create_space(db, "lone")
    commands = ChatCommands(config, db, runner)
    now = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    assert (await commands.status("lone", now)).startswith("Idle.")
    assert await commands.pause("lone", None) == "Paused. Send /resume to continue."
    assert "paused here until an admin sends /resume" in await commands.status("lone", now)


# ------------------------------------------------------------------------- trigger mode


async def test_a_space_trigger_mode_overrides_the_configured_one(chat: Chat, db: Database) -> None:
    """The dashboard stores a space's own trigger mode as a preference; the next message in
    a group chat follows it, and removing it restores the configured `mention` mode."""
    await chat.say("hello everyone", author=MEMBER, dm=False)
    assert await queued(db) == []  # configured: mention only

    await repo.set_preference(db, SPACE, TRIGGER_PREF, "always")
    await chat.say("hello again", author=MEMBER, dm=False)
    assert [p.prompt for p in await queued(db)] == ["hello again"]

    await repo.delete_preference(db, SPACE, TRIGGER_PREF)
    await chat.say("and once more", author=MEMBER, dm=False)
    assert [p.prompt for p in await queued(db)] == ["hello again"]
