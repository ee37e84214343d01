"""/tasks: the space's tasks in a few lines, through the inbound handler on real SQLite.

The lines themselves (core/task_text.py) are checked at fixed times; the command is sent
as a chat message and answered from what storage holds: the tasks, their last outcome, the
model calls of their runs (the average cost) and the space's time zone.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from mercury.config import Config
from mercury.core.budget import Spent
from mercury.core.commands import HELP_TEXT, CommandKind, parse_command
from mercury.core.messages import ConversationRef, InboundMessage, Reply, SentMessage
from mercury.core.permissions import Permission, command_permission
from mercury.core.router import denied_notice
from mercury.core.task_text import MAX_LINES, TaskLine, task_line, tasks_text, when_near
from mercury.core.when import TIMEZONE_PREF
from mercury.pipeline.dispatcher import Dispatcher
from mercury.pipeline.inbound import InboundHandler
from mercury.storage import Database, JobStatus, repo, utcnow
from mercury.storage.migrate import upgrade
from mercury.storage.spend import add_model_call
from mercury.storage.tasks import add_task, note_task_outcome, set_task_enabled

BERLIN = ZoneInfo("Europe/Berlin")
NOW = datetime(2024, 3, 30, 12, 0, tzinfo=UTC)  # Saturday, 13:00 in Berlin


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# --------------------------------------------------------------------------- parsing


def test_tasks_is_a_command_for_whoever_may_run() -> None:
    assert parse_command("/tasks") == parse_command("/tasks@mercury_bot")
    cmd = parse_command("/tasks")
    assert cmd is not None and cmd.kind is CommandKind.TASKS
    assert command_permission(cmd) is Permission.RUN
    assert "/tasks" in HELP_TEXT
    assert parse_command("tasks") is None  # bare words go to the agent


# --------------------------------------------------------------------------- the lines


def test_when_near_names_the_day_on_the_space_clock() -> None:
    assert when_near(utc(2024, 3, 30, 17, 0), NOW, BERLIN) == "today 18:00 CET"
    assert when_near(utc(2024, 3, 31, 7, 0), NOW, BERLIN) == "tomorrow 09:00 CEST"
    assert when_near(utc(2024, 3, 29, 7, 0), NOW, BERLIN) == "yesterday 08:00 CET"
    assert when_near(utc(2024, 4, 3, 7, 0), NOW, BERLIN) == "Wed 3 Apr 09:00 CEST"
    assert when_near(utc(2025, 1, 6, 8, 0), NOW, BERLIN) == "Mon 6 Jan 2025 09:00 CET"
    # 23:30 UTC on the 30th is already "tomorrow" in Berlin.
    assert when_near(utc(2024, 3, 30, 23, 30), NOW, BERLIN) == "tomorrow 00:30 CET"
    assert when_near(utc(2024, 3, 30, 23, 30), NOW, UTC) == "today 23:30 UTC"


def test_a_line_per_task_with_next_run_last_result_and_cost() -> None:
    every = TaskLine(
        id=3, prompt="Check the build\nand tell me", cron=None, interval_s=1800, enabled=True,
        next_run_at=utc(2024, 3, 30, 12, 30), last_outcome="ok",
        last_outcome_at=utc(2024, 3, 30, 12, 0), cost=Spent(0.0123, 4000),
    )  # fmt: skip
    assert task_line(every, NOW, BERLIN) == (
        '#3 every 30m "Check the build and tell me" - next today 13:30 CET'
        " - last ok today 13:00 CET - about $0.01 a run"
    )
    cron = TaskLine(
        id=4, prompt="x" * 60, cron="0 9 * * 1-5", interval_s=None, enabled=True,
        next_run_at=utc(2024, 4, 1, 7, 0), last_outcome="refused",
        last_detail="space is paused", last_outcome_at=utc(2024, 3, 29, 8, 0),
        silent=True, cost=Spent(0.0, 5200),
    )  # fmt: skip
    assert task_line(cron, NOW, BERLIN) == (
        f'#4 cron 0 9 * * 1-5 (silent) "{"x" * 39}…" - next Mon 1 Apr 09:00 CEST'
        " - last refused yesterday 09:00 CET (space is paused) - about 5,200 tokens a run"
    )
    paused = TaskLine(5, "p", None, 3600, False, utc(2024, 3, 30, 13, 0))
    assert task_line(paused, NOW, BERLIN) == '#5 every 1h "p" - paused'
    done = TaskLine(6, "p", None, None, False, None, last_outcome="queued")
    assert task_line(done, NOW, BERLIN) == '#6 once "p" - done - last queued'


def test_the_reply_names_the_zone_and_counts_what_it_leaves_out() -> None:
    assert "No scheduled tasks here" in tasks_text([], NOW, BERLIN)
    many = [TaskLine(i, f"task {i}", None, 3600, True, None) for i in range(1, 21)]
    lines = tasks_text(many, NOW, BERLIN).splitlines()
    assert lines[0] == "Scheduled tasks here (times in Europe/Berlin):"
    assert len(lines) == 1 + MAX_LINES + 1
    assert lines[-1] == f"... and {20 - MAX_LINES} more."


# --------------------------------------------------------------------------- in a chat


SPACE = "s1"


@dataclass
class NoticeAdapter:
    platform: str = "web"
    sent: list[str] = field(default_factory=list)

    @property
    def bot_handles(self) -> tuple[str, ...]:
        return ()

    async def send(self, reply: Reply) -> SentMessage:
        self.sent.append(reply.text)
        return SentMessage((f"out{len(self.sent)}",))


@dataclass
class StandInRunner:
    async def abort(self, space_id: str) -> bool:
        return False

    def active_spaces(self) -> set[str]:
        return set()

    def disk_low(self) -> str | None:
        return None


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
    await upgrade(url)
    database = Database(url)
    try:
        yield database
    finally:
        await database.dispose()


async def say(db: Database, config: Config, text: str, author: str = "bob") -> str:
    adapter = NoticeAdapter()

    async def never(job: Any) -> JobStatus:
        raise AssertionError("no job runs in these tests")

    dispatcher = Dispatcher(db, never, max_concurrency=1)
    handler = InboundHandler(config, db, dispatcher, StandInRunner(), {"web": adapter})  # type: ignore[arg-type]
    await handler(
        InboundMessage(
            platform="web",
            platform_message_id=uuid.uuid4().hex,
            conversation=ConversationRef("web", SPACE),
            author_id=author,
            author_name=author,
            text=text,
            ts=utcnow(),
            is_dm=True,
        )
    )
    assert len(adapter.sent) == 1, adapter.sent
    return adapter.sent[0]


async def test_tasks_lists_the_space_tasks_on_its_clock(tmp_path: Path, db: Database) -> None:
    config = Config.model_validate(
        {"data_dir": str(tmp_path), "scheduler": {"timezone": "Europe/Berlin"}}
    )
    assert "No scheduled tasks here" in await say(db, config, "/tasks")
    await repo.get_or_create_space(db, "elsewhere")

    soon = utcnow() + timedelta(hours=1)
    report = await add_task(db, SPACE, "Weekly report for the team", cron="0 9 * * 1",
                            next_run_at=soon)  # fmt: skip
    ping = await add_task(db, SPACE, "Ping the site", interval_s=1800, silent=True)
    await add_task(db, "elsewhere", "Not this space's", interval_s=3600)
    for run, usd in (("r1", 0.02), ("r2", 0.04)):
        await add_model_call(
            db, space_id=SPACE, run_id=run, provider="anthropic", model="m",
            input_tokens=100, output_tokens=0, cost_usd=usd, status=200, incomplete=False,
            task_id=report.id,
        )  # fmt: skip
    await note_task_outcome(db, ping.id, "failed", "the model was down", utcnow())
    await set_task_enabled(db, ping.id, False)

    text = await say(db, config, "/tasks")
    lines = text.splitlines()
    assert lines[0] == "Scheduled tasks here (times in Europe/Berlin):"
    assert len(lines) == 3 and "Not this space's" not in text
    local = soon.astimezone(BERLIN)
    assert lines[1].startswith(f'#{report.id} cron 0 9 * * 1 "Weekly report for the team"')
    assert (
        f"next today {local:%H:%M %Z}" in lines[1]
        or f"next tomorrow {local:%H:%M %Z}" in (lines[1])
    )
    assert lines[1].endswith("about $0.03 a run")
    assert lines[2].startswith(f'#{ping.id} every 30m (silent) "Ping the site" - paused - ')
    assert "last failed" in lines[2] and "(the model was down)" in lines[2]

    # The space's own zone wins over the config's.
    await repo.set_preference(db, SPACE, TIMEZONE_PREF, "America/New_York")
    text = await say(db, config, "/tasks")
    assert text.splitlines()[0] == "Scheduled tasks here (times in America/New_York):"
    assert f"{soon.astimezone(ZoneInfo('America/New_York')):%H:%M %Z}" in text


async def test_tasks_needs_the_run_permission(tmp_path: Path, db: Database) -> None:
    # A default role that is not defined has no permissions (fail closed).
    config = Config.model_validate(
        {"data_dir": str(tmp_path), "permissions": {"default_role": "guest"}}
    )
    await repo.get_or_create_space(db, SPACE)
    await add_task(db, SPACE, "secret plan", interval_s=3600)
    assert await say(db, config, "/tasks") == denied_notice(Permission.RUN)
