"""Several schedulers on one database take each due run exactly once (issue 18 groundwork).

Two or five `Scheduler` instances, each with its own `Database` (its own connection pool,
as separate processes have) and its own chat adapter, tick at the same controllable `now`
over many due tasks: interval, cron, one-shot, a task waiting for a retry, a missed slot
that is skipped, and refused ones (a muted creator, a paused space, a space with nowhere to
answer). Each due slot must become exactly one job, each refusal be recorded and said once,
the retry be taken once; and a second round at a later time must do the same again.

`Racing` makes the race as bad as it can be: every instance reads its due list, then waits
for all the others to have read theirs, before taking anything; so all of them try to take
every task. The same is done with plain `asyncio.gather` (whatever interleaving happens),
and with schedulers in separate OS processes started by this test. Both databases: a SQLite
file and a real PostgreSQL (the `db_url` fixture of test_storage.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from asyncio.subprocess import PIPE
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from mercury.adapters.web.adapter import WebChatAdapter
from mercury.core.run_reason import RunReason
from mercury.pipeline.dispatcher import Dispatcher
from mercury.pipeline.scheduler import Scheduler, TaskGate, next_cron_run
from mercury.storage import Database, JobRecord, JobStatus, repo
from mercury.storage.migrate import upgrade
from mercury.storage.tasks import (
    TaskRecord,
    add_task,
    get_task,
    note_task_outcome,
    start_task_run,
)
from tests.integration.test_storage import db_url, postgres_server_url

__all__ = ["db_url", "postgres_server_url"]  # fixtures shared with test_storage.py

NOW = datetime(2026, 3, 10, 12, 30, tzinfo=UTC)
STARTED = NOW - timedelta(minutes=30)  # due times before this were missed while down
CRON = "*/30 * * * *"
HOUR = timedelta(hours=1)
ROOT = Path(__file__).resolve().parents[2]


class Racing(Scheduler):
    """A scheduler that, after reading its due tasks, waits for `ready` before taking them:
    with a barrier over all instances, every one of them tries to take every due task."""

    ready: Callable[[], Awaitable[Any]] | None = None

    async def due(self, now: datetime) -> list[TaskRecord]:
        tasks = await super().due(now)
        if self.ready is not None:
            await self.ready()
        return tasks


@dataclass
class Instance:
    """One Mercury's scheduler: its own pool on the shared database, its own chat."""

    db: Database
    web: WebChatAdapter
    scheduler: Racing

    def said(self, chat: str) -> list[str]:
        return [e["text"] for e in self.web.logs.after(chat, None) if e.get("role") == "assistant"]


async def _no_dispatch(job: JobRecord) -> JobStatus:
    raise AssertionError("the dispatcher does not run in these tests")


def instance(url: str, upload_dir: Path) -> Instance:
    db = Database(url)
    web = WebChatAdapter(username="admin", password="pw", max_upload=1024, upload_dir=upload_dir)
    scheduler = Racing(
        db,
        Dispatcher(db, _no_dispatch, max_concurrency=1),
        tick=30,
        gate=TaskGate(),
        adapters={"web": web},
        started_at=STARTED,
    )
    return Instance(db, web, scheduler)


@dataclass(frozen=True)
class Plan:
    """The tasks of the scenario, by kind (ids)."""

    interval: list[int]
    cron: list[int]
    one_shot: list[int]
    retry: int
    skip: int
    muted: int
    paused: list[int]
    lonely: int
    later: int

    @property
    def first_round(self) -> list[int]:
        """The tasks whose job the first round queues."""
        return [*self.interval, *self.cron, *self.one_shot, self.retry]

    @property
    def second_round(self) -> list[int]:
        """An hour later: the recurring ones again, and the slot skipped before."""
        return [*self.interval, *self.cron, self.skip]


async def plan(db: Database) -> Plan:
    """Spaces and tasks: "team" answers in its web chat, "quiet" is paused, "lonely" has
    no conversation."""
    for space in ("team", "quiet", "lonely"):
        await repo.get_or_create_space(db, space)
    for space in ("team", "quiet"):
        await repo.link_conversation(db, "web", space, space)
    await repo.pause_until_resumed(db, "quiet")
    await repo.mute(db, "team", "web", "bob")
    past = NOW - timedelta(minutes=1)
    interval = [
        (await add_task(db, "team", f"every {i}", interval_s=3600, next_run_at=past)).id
        for i in range(6)
    ]
    cron = [
        (await add_task(db, "team", f"cron {i}", cron=CRON, next_run_at=past)).id for i in range(4)
    ]
    one_shot = [(await add_task(db, "team", f"once {i}", run_at=past)).id for i in range(4)]
    # A task whose last run failed: its retry is due, its schedule is not.
    retry = await add_task(db, "team", "retry", interval_s=86400, next_run_at=past)
    await start_task_run(db, retry.id, ran_at=past, next_run_at=NOW + timedelta(hours=12),
                         move=True)  # fmt: skip
    await note_task_outcome(db, retry.id, "failed", "run failed: error (retrying)", past,
                            failures=1, retry_at=NOW - timedelta(seconds=10))  # fmt: skip
    skip = await add_task(db, "team", "skip", interval_s=3600, catch_up="skip",
                          next_run_at=STARTED - timedelta(hours=1))  # fmt: skip
    muted = await add_task(
        db, "team", "muted", interval_s=3600, next_run_at=past, created_by="web:bob"
    )
    paused = [
        (await add_task(db, "quiet", "paused", interval_s=3600, next_run_at=past)).id,
        (await add_task(db, "quiet", "paused once", run_at=past)).id,
    ]
    lonely = await add_task(db, "lonely", "nowhere", run_at=past)
    later = await add_task(db, "team", "later", run_at=NOW + timedelta(days=1))
    return Plan(interval, cron, one_shot, retry.id, skip.id, muted.id, paused, lonely.id, later.id)


@pytest.fixture
async def url(db_url: str) -> str:
    await upgrade(db_url)
    return db_url


@asynccontextmanager
async def schedulers(url: str, n: int, tmp_path: Path) -> AsyncIterator[list[Instance]]:
    instances = [instance(url, tmp_path) for _ in range(n)]
    try:
        yield instances
    finally:
        for one in instances:
            await one.db.dispose()


def race_hard(instances: list[Instance]) -> None:
    """Every instance reads its due tasks before any takes one (a barrier over all)."""
    barrier = asyncio.Barrier(len(instances))
    for one in instances:
        one.scheduler.ready = barrier.wait


async def tick_all(instances: list[Instance], now: datetime) -> int:
    """All instances tick at once, at the same `now`; how many jobs they queued in all."""
    return sum(await asyncio.gather(*(one.scheduler.tick(now) for one in instances)))


NOTICE = re.compile(r"^Scheduled task (\d+) \(")


def notices(said: list[str]) -> Counter[int]:
    """How many times each task's refusal was said, over every instance's chats."""
    ids = [NOTICE.match(text) for text in said]
    assert all(ids), said
    return Counter(int(m.group(1)) for m in ids if m)


def said_by(instances: list[Instance]) -> list[str]:
    return [text for one in instances for chat in ("team", "quiet") for text in one.said(chat)]


async def jobs_per_task(db: Database) -> Counter[int]:
    jobs = await repo.list_jobs(db, limit=10_000)
    return Counter(int(j.payload["task_id"]) for j in jobs)


async def task(db: Database, task_id: int) -> TaskRecord:
    found = await get_task(db, task_id)
    assert found is not None
    return found


async def check_first_round(db: Database, p: Plan, queued: int, said: list[str]) -> None:
    """Each due slot became one job; each refusal was recorded and said once."""
    assert await jobs_per_task(db) == Counter(p.first_round)
    assert queued == len(p.first_round)
    assert notices(said) == Counter([p.muted, *p.paused])
    for task_id in p.interval:
        t = await task(db, task_id)
        assert (t.next_run_at, t.last_outcome, t.last_run_at) == (NOW + HOUR, "queued", NOW)
    for task_id in p.cron:
        t = await task(db, task_id)
        assert (t.next_run_at, t.last_outcome) == (next_cron_run(CRON, NOW), "queued")
    for task_id in p.one_shot:
        t = await task(db, task_id)
        assert (t.enabled, t.next_run_at, t.last_outcome) == (False, None, "queued")
    retry = await task(db, p.retry)
    assert (retry.retry_at, retry.failures, retry.last_outcome) == (None, 1, "queued")
    assert retry.next_run_at == NOW + timedelta(hours=12)  # a retry leaves the schedule
    skip = await task(db, p.skip)
    assert (skip.last_outcome, skip.next_run_at) == ("skipped", NOW + HOUR)
    muted = await task(db, p.muted)
    assert (muted.last_outcome, muted.next_run_at) == ("refused", NOW + HOUR)
    paused, paused_once = [await task(db, i) for i in p.paused]
    assert (paused.last_outcome, paused.next_run_at) == ("refused", NOW + HOUR)
    assert (paused_once.last_outcome, paused_once.enabled) == ("refused", False)
    lonely = await task(db, p.lonely)
    assert (lonely.last_outcome, lonely.enabled) == ("refused", False)
    assert (await task(db, p.later)).last_outcome is None


@pytest.mark.parametrize("n", [2, 5])
@pytest.mark.parametrize("hard", [True, False], ids=["barrier", "gather"])
async def test_many_schedulers_take_each_due_run_once(
    url: str, tmp_path: Path, n: int, hard: bool
) -> None:
    async with schedulers(url, n, tmp_path) as instances:
        if hard:
            race_hard(instances)
        p = await plan(instances[0].db)
        db = instances[0].db

        queued = await tick_all(instances, NOW)
        await check_first_round(db, p, queued, said_by(instances))
        # Nothing is due twice, whoever ticks.
        assert await tick_all(instances, NOW) == 0

        # An hour later the recurring slots come due again: once each; the refusals of the
        # same kind are recorded again and said no more (one notice per streak).
        later = NOW + HOUR
        assert await tick_all(instances, later) == len(p.second_round)
        assert await jobs_per_task(db) == Counter(p.first_round) + Counter(p.second_round)
        assert notices(said_by(instances)) == Counter([p.muted, *p.paused])
        for task_id in p.interval:
            assert (await task(db, task_id)).next_run_at == later + HOUR
        assert (await task(db, p.paused[0])).last_outcome_at == later
        assert await tick_all(instances, later) == 0


async def test_a_retry_after_a_failed_run_is_taken_once(url: str, tmp_path: Path) -> None:
    """A run fails (the executor tells one scheduler); its retry is due for all of them."""
    async with schedulers(url, 5, tmp_path) as instances:
        race_hard(instances)
        db = instances[0].db
        await repo.get_or_create_space(db, "team")
        await repo.link_conversation(db, "web", "team", "team")
        daily = await add_task(db, "team", "daily", interval_s=86400, next_run_at=NOW)
        assert await tick_all(instances, NOW) == 1
        (job,) = await repo.list_jobs(db)
        first = instances[3].scheduler
        first.clock = lambda: NOW
        assert await first.ended(job, daily.id, RunReason.ERROR, "it broke") is None
        retry_at = (await task(db, daily.id)).retry_at
        assert retry_at is not None
        assert await tick_all(instances, retry_at) == 1
        assert await jobs_per_task(db) == Counter({daily.id: 2})
        stored = await task(db, daily.id)
        assert (stored.retry_at, stored.failures) == (None, 1)
        assert stored.next_run_at == NOW + timedelta(days=1)
        assert said_by(instances) == []


async def test_a_time_written_by_hand_is_still_claimed(url: str, tmp_path: Path) -> None:
    """An operator's hand edit stores a time in another spelling (SQLite keeps text, e.g.
    without microseconds): the claim compares times, not text, so the task still runs."""
    async with schedulers(url, 2, tmp_path) as instances:
        race_hard(instances)
        db = instances[0].db
        await repo.get_or_create_space(db, "team")
        await repo.link_conversation(db, "web", "team", "team")
        edited = await add_task(db, "team", "edited", interval_s=3600, next_run_at=NOW)
        by_hand = "2026-03-10 12:29:00" + ("+00" if db.dialect == "postgresql" else "")
        async with db.transaction() as s:
            await s.execute(
                text(f"UPDATE tasks SET next_run_at = '{by_hand}' WHERE id = :id"),
                {"id": edited.id},
            )
        assert (await task(db, edited.id)).next_run_at == NOW - timedelta(minutes=1)
        assert await tick_all(instances, NOW) == 1
        assert await jobs_per_task(db) == Counter({edited.id: 1})
        assert (await task(db, edited.id)).next_run_at == NOW + HOUR


# --------------------------------------------------------------------------- processes

CHILD = (
    "import asyncio; from tests.integration.test_scheduler_many import child; asyncio.run(child())"
)
RESULT = "RESULT "


async def child() -> None:
    """One OS process's scheduler: read the due tasks, print "ready", wait for a line on
    stdin, take them, print what it queued and said. (Run by the test below.)"""
    one = instance(os.environ["MERCURY_TEST_SCHEDULER_URL"], Path(os.environ["MERCURY_TEST_DIR"]))

    async def ready() -> None:
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)

    one.scheduler.ready = ready
    try:
        queued = await one.scheduler.tick(datetime.fromisoformat(os.environ["MERCURY_TEST_NOW"]))
    finally:
        await one.db.dispose()
    print(RESULT + json.dumps({"queued": queued, "said": said_by([one])}), flush=True)


async def _line(proc: asyncio.subprocess.Process, prefix: str) -> str:
    """The next line of a child's stdout that starts with `prefix` (others are its logs)."""
    assert proc.stdout is not None
    while True:
        line = (await proc.stdout.readline()).decode()
        if not line:
            raise AssertionError(f"a scheduler process ended before printing {prefix!r}")
        if line.startswith(prefix):
            return line.removeprefix(prefix).strip()


async def test_schedulers_in_separate_processes_take_each_due_run_once(
    url: str, tmp_path: Path
) -> None:
    db = Database(url)
    try:
        p = await plan(db)
    finally:
        await db.dispose()
    env = os.environ | {
        "MERCURY_TEST_SCHEDULER_URL": url,
        "MERCURY_TEST_DIR": str(tmp_path),
        "MERCURY_TEST_NOW": NOW.isoformat(),
    }
    procs = []
    for i in range(3):
        log = (tmp_path / f"child{i}.log").open("wb")
        procs.append(
            await asyncio.create_subprocess_exec(
                sys.executable, "-c", CHILD, cwd=ROOT, env=env, stdin=PIPE, stdout=PIPE, stderr=log
            )
        )
    try:
        # Each has read the same due tasks before any takes one: a hang guard, not a timing.
        async with asyncio.timeout(300):
            for proc in procs:
                await _line(proc, "ready")
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write(b"go\n")
                await proc.stdin.drain()
            results = [json.loads(await _line(proc, RESULT)) for proc in procs]
            for proc in procs:
                assert await proc.wait() == 0
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    db = Database(url)
    try:
        queued = sum(r["queued"] for r in results)
        await check_first_round(db, p, queued, [text for r in results for text in r["said"]])
    finally:
        await db.dispose()
