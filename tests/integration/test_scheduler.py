"""Scheduled tasks on a real SQLite file, driven by `Scheduler.tick(now)` at explicit times.

The parts are real: the storage, the web chat adapter the notices go to (its log in
memory), the inbound handler's kind of rate ledger, a BudgetBook counting stored model
calls, and the run executor for what a task's job ends with (a job "run" with no model
configured fails through the executor's real path, without a container). The clock is
the test's: every time is given.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from mercury.adapters.web.adapter import WebChatAdapter
from mercury.config import Config
from mercury.core.ratelimit import RateLedger, RateRule
from mercury.core.run_reason import RunReason
from mercury.core.tasks import RetryRule
from mercury.pipeline.budget import BudgetBook
from mercury.pipeline.dispatcher import Dispatcher
from mercury.pipeline.payload import JobPayload
from mercury.pipeline.runs import RunExecutor
from mercury.pipeline.scheduler import (
    RunNowRefused,
    Scheduler,
    TaskGate,
    next_cron_run,
    run_task_now,
    task_cost_estimate,
)
from mercury.pipeline.task_hook import task_text
from mercury.sandbox.types import RunResult
from mercury.storage import Database, JobRecord, JobStatus, MessageRole, repo
from mercury.storage.migrate import upgrade
from mercury.storage.spend import add_model_call
from mercury.storage.tasks import TaskRecord, add_task, get_task, list_tasks, set_task_enabled

NOW = datetime(2026, 3, 10, 12, 30, tzinfo=UTC)
NO_MODEL = "Mercury has no model configured yet, so it cannot answer."


def test_next_cron_run_is_utc_and_after() -> None:
    after = datetime(2026, 11, 24, 8, 30, tzinfo=UTC)  # a Tuesday
    assert next_cron_run("0 9 * * 1-5", after) == datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
    assert next_cron_run("0 9 * * 1", after) == datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


# --------------------------------------------------------------------------- the rig


@dataclass
class Rig:
    db: Database
    web: WebChatAdapter
    scheduler: Scheduler
    executor: RunExecutor
    book: BudgetBook
    ledger: RateLedger
    clock: list[datetime]

    def said(self, chat: str = "team") -> list[str]:
        """What the web chat shows in `chat`: every message the bot posted there."""
        return [e["text"] for e in self.web.logs.after(chat, None) if e.get("role") == "assistant"]

    async def jobs(self, status: JobStatus | None = JobStatus.QUEUED) -> list[JobRecord]:
        return await repo.list_jobs(self.db, status=status, space_id="team")

    async def task(self, task_id: int) -> TaskRecord:
        task = await get_task(self.db, task_id)
        assert task is not None
        return task

    async def run_queued(self) -> list[JobStatus]:
        """Hand each queued job to the executor (no model: each fails, as a model error
        would) and finish it, as the dispatcher does."""
        statuses = []
        for job in await self.jobs():
            status = await self.executor(job)
            await repo.finish_job(self.db, job.id, status)
            statuses.append(status)
        return statuses


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    rig = await make_rig(tmp_path)
    try:
        yield rig
    finally:
        await rig.db.dispose()


async def make_rig(
    tmp_path: Path, *, budgets: dict[str, Any] | None = None, burst: int = 100
) -> Rig:
    url = f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
    await upgrade(url)
    db = Database(url)
    config = Config(data_dir=tmp_path / "data", budgets=budgets or {})
    clock = [NOW]
    web = WebChatAdapter(username="admin", password="pw", max_upload=1024, upload_dir=tmp_path)
    book = BudgetBook(config, db, clock=lambda: clock[0])
    ledger = RateLedger(RateRule(burst=burst, burst_window_s=60))

    async def probe(space: str, key: str | None, task_id: int, estimate: Any) -> Any:
        return await book.check(space, key, task_id=task_id, estimate=estimate)

    executor = RunExecutor(config, db, runner=None, host=None, adapters={"web": web},  # type: ignore[arg-type]
                           model_problem=NO_MODEL)  # fmt: skip

    async def handler(job: JobRecord) -> JobStatus:  # never started: tick() is driven
        raise AssertionError("the dispatcher does not run in these tests")

    scheduler = Scheduler(
        db,
        Dispatcher(db, handler, max_concurrency=1),
        tick=30,
        gate=TaskGate(admins=frozenset({"web:root"}), ledger=ledger, budget=probe),
        adapters={"web": web},
        retries=RetryRule(attempts=2, backoff_s=60),
        executor=executor,
        clock=lambda: clock[0],
        started_at=NOW - timedelta(hours=1),
    )
    await repo.get_or_create_space(db, "team")
    await repo.link_conversation(db, "web", "team", "team")
    return Rig(db, web, scheduler, executor, book, ledger, clock)


# --------------------------------------------------------------------------- queueing


async def test_due_tasks_are_enqueued_and_rescheduled(rig: Rig) -> None:
    db = rig.db
    await repo.get_or_create_space(db, "lonely")
    past = NOW - timedelta(minutes=1)
    every = await add_task(db, "team", "hourly digest", interval_s=3600, next_run_at=past)
    once = await add_task(db, "team", "remind me", run_at=past)
    cron = await add_task(db, "team", "weekday standup", cron="0 9 * * 1-5", next_run_at=past)
    later = await add_task(db, "team", "not yet", run_at=NOW + timedelta(hours=1))
    nowhere = await add_task(db, "lonely", "no chat", run_at=past)

    assert await rig.scheduler.tick(NOW) == 3
    jobs = await rig.jobs()
    assert [j.payload["prompt"] for j in jobs] == ["hourly digest", "remind me", "weekday standup"]
    assert {(j.payload["platform"], j.payload["chat_id"]) for j in jobs} == {("web", "team")}
    tasks = {t.id: t for t in await list_tasks(db, "team")}
    assert tasks[every.id].next_run_at == NOW + timedelta(hours=1)
    assert tasks[once.id].enabled is False
    assert tasks[cron.id].next_run_at == next_cron_run("0 9 * * 1-5", NOW)
    assert tasks[later.id].enabled and tasks[later.id].last_run_at is None
    assert {tasks[t.id].last_outcome for t in (every, once, cron)} == {"queued"}
    # A space with no conversation has nowhere to answer: not enqueued, not retried.
    assert await repo.list_jobs(db, space_id="lonely") == []
    lonely = await rig.task(nowhere.id)
    assert lonely.enabled is False and lonely.last_outcome == "refused"
    assert lonely.last_detail is not None and lonely.last_detail.startswith("no conversation")
    # Nothing is due twice.
    assert await rig.scheduler.tick(NOW) == 0


async def test_a_tasks_run_acts_for_its_creator(rig: Rig) -> None:
    db = rig.db
    await repo.set_role(db, "team", "web", "alice", "helper")
    await repo.grant_permission(db, "team", "helper", "run")
    alice = await add_task(
        db, "team", "a", interval_s=3600, next_run_at=NOW, created_by="web:alice"
    )
    operator = await add_task(
        db, "team", "o", interval_s=3600, next_run_at=NOW, created_by="operator"
    )
    legacy = await add_task(db, "team", "l", interval_s=3600, next_run_at=NOW, created_by="run:r1")
    assert await rig.scheduler.tick(NOW) == 3
    payloads = {j.payload["task_id"]: j.payload for j in await rig.jobs()}
    assert (payloads[alice.id]["role"], payloads[alice.id]["user_key"]) == ("helper", "web:alice")
    assert (payloads[operator.id]["role"], payloads[operator.id]["user_key"]) == ("admin", None)
    assert (payloads[legacy.id]["role"], payloads[legacy.id]["user_key"]) == ("member", None)
    # Alice's run is counted against her rate limit, like her messages.
    assert rig.ledger.recent("team", "web:alice", NOW) == (NOW,)


# --------------------------------------------------------------------------- refusals


async def test_a_paused_spaces_task_does_not_run_and_says_why_once(rig: Rig) -> None:
    db = rig.db
    task = await add_task(db, "team", "daily digest", interval_s=3600, next_run_at=NOW)
    await repo.pause_until_resumed(db, "team")
    assert await rig.scheduler.tick(NOW) == 0
    assert await rig.jobs() == []
    stored = await rig.task(task.id)
    assert (stored.last_outcome, stored.last_detail) == ("refused", "the space is paused")
    assert stored.last_outcome_at == NOW and stored.enabled
    assert stored.next_run_at == NOW + timedelta(hours=1)  # the refused slot is skipped
    assert rig.said() == [
        f'Scheduled task {task.id} ("daily digest") did not run: this space is paused until '
        "an admin sends /resume."
    ]
    # The next slots are refused in silence: one notice per streak.
    for hours in (1, 2):
        assert await rig.scheduler.tick(NOW + timedelta(hours=hours)) == 0
    assert len(rig.said()) == 1
    # Resumed: the next slot runs.
    await repo.resume_space(db, "team")
    assert await rig.scheduler.tick(NOW + timedelta(hours=3)) == 1
    assert (await rig.task(task.id)).last_outcome == "queued"
    assert len(rig.said()) == 1


async def test_a_refused_one_shot_task_is_disabled_and_says_so(rig: Rig) -> None:
    task = await add_task(rig.db, "team", "remind me", run_at=NOW)
    await repo.pause_until_resumed(rig.db, "team")
    assert await rig.scheduler.tick(NOW) == 0
    stored = await rig.task(task.id)
    assert stored.enabled is False and stored.last_outcome == "refused"
    (notice,) = rig.said()
    assert notice.endswith("It was due once, so it will not run again.")


async def test_a_muted_creators_task_does_not_run(rig: Rig) -> None:
    await repo.mute(rig.db, "team", "web", "bob")
    task = await add_task(
        rig.db, "team", "x", interval_s=3600, next_run_at=NOW, created_by="web:bob"
    )
    assert await rig.scheduler.tick(NOW) == 0
    stored = await rig.task(task.id)
    assert stored.last_detail == "the task's creator is muted in this space"
    (notice,) = rig.said()
    assert "did not run: the person who created it is muted here." in notice


async def test_a_creator_without_run_permission_is_refused(rig: Rig) -> None:
    db = rig.db
    await repo.set_role(db, "team", "web", "carol", "viewer")  # a role with no permissions
    viewer = await add_task(
        db, "team", "v", interval_s=3600, next_run_at=NOW, created_by="web:carol"
    )
    # The config's admins act as admins whatever the space's roles say.
    await repo.set_role(db, "team", "web", "root", "viewer")
    root = await add_task(db, "team", "r", interval_s=3600, next_run_at=NOW, created_by="web:root")
    assert await rig.scheduler.tick(NOW) == 1
    assert [j.payload["task_id"] for j in await rig.jobs()] == [root.id]
    stored = await rig.task(viewer.id)
    assert stored.last_detail == (
        "no permission: the creator's role (viewer) may not use the agent here"
    )
    assert len(rig.said()) == 1 and "(viewer) may not use me here" in rig.said()[0]


async def test_a_rate_limited_creators_task_does_not_run(tmp_path: Path) -> None:
    rig = await make_rig(tmp_path, burst=1)
    try:
        db = rig.db
        rig.ledger.record("team", "web:dan", NOW - timedelta(seconds=10))  # a message of his
        task = await add_task(
            db, "team", "x", interval_s=3600, next_run_at=NOW, created_by="web:dan"
        )
        assert await rig.scheduler.tick(NOW) == 0
        stored = await rig.task(task.id)
        assert stored.last_detail is not None
        assert stored.last_detail.startswith("rate limit: the creator's limit of runs a minute")
        assert len(rig.said()) == 1
        # A minute later the window is free again: the next slot runs, and is counted.
        assert await rig.scheduler.tick(NOW + timedelta(hours=1)) == 1
        assert len(rig.ledger.recent("team", "web:dan", NOW + timedelta(hours=1))) == 1
    finally:
        await rig.db.dispose()


async def test_an_over_budget_spaces_task_does_not_run(tmp_path: Path) -> None:
    rig = await make_rig(tmp_path, budgets={"space_day": "$1"})
    try:
        db = rig.db
        task = await add_task(db, "team", "digest", interval_s=3600, next_run_at=NOW)
        await add_model_call(db, space_id="team", run_id="r1", provider="anthropic",
                             model="m", input_tokens=10, output_tokens=10, cost_usd=1.2,
                             status=200, incomplete=False, at=NOW - timedelta(hours=1))  # fmt: skip
        await rig.book.load()
        assert await rig.scheduler.tick(NOW) == 0
        stored = await rig.task(task.id)
        assert stored.last_outcome == "refused"
        assert (
            stored.last_detail == "spending cap: this space's daily spending cap ($1.00) is reached"
        )
        (notice,) = rig.said()
        assert "this space's daily spending cap ($1.00) is reached; it resets at" in notice
        assert await rig.jobs() == []
    finally:
        await rig.db.dispose()


async def test_a_task_whose_usual_cost_would_pass_its_cap_is_not_started(tmp_path: Path) -> None:
    rig = await make_rig(tmp_path, budgets={"task_run": "$0.50"})
    try:
        db = rig.db
        cheap = await add_task(db, "team", "cheap", interval_s=3600, next_run_at=NOW)
        dear = await add_task(db, "team", "dear", interval_s=3600, next_run_at=NOW)
        for run, cost in (("a", 0.6), ("b", 0.8)):
            await add_model_call(db, space_id="team", run_id=run, provider="anthropic",
                                 model="m", input_tokens=100, output_tokens=100, cost_usd=cost,
                                 status=200, incomplete=False, task_id=dear.id,
                                 at=NOW - timedelta(days=1))  # fmt: skip
        estimate = await task_cost_estimate(db, dear.id)
        assert estimate is not None and round(estimate.usd, 6) == 0.7 and estimate.tokens == 200
        assert await task_cost_estimate(db, cheap.id) is None  # never ran
        assert await rig.scheduler.tick(NOW) == 1
        assert [j.payload["task_id"] for j in await rig.jobs()] == [cheap.id]
        stored = await rig.task(dear.id)
        assert stored.last_detail == (
            "spending cap: this task's spending cap per run ($0.50) would be passed by the "
            "task's usual cost ($0.70)"
        )
    finally:
        await rig.db.dispose()


# --------------------------------------------------------------------------- failures


async def test_a_failing_task_is_retried_then_reported_once(rig: Rig) -> None:
    task = await add_task(rig.db, "team", "daily digest", interval_s=86400, next_run_at=NOW)
    schedule = NOW + timedelta(days=1)
    assert await rig.scheduler.tick(NOW) == 1
    assert await rig.run_queued() == [JobStatus.FAILED]
    stored = await rig.task(task.id)
    assert stored.failures == 1 and stored.retry_at == NOW + timedelta(minutes=1)
    assert stored.last_outcome == "failed" and stored.next_run_at == schedule
    assert rig.said() == []  # nothing in the chat while retries remain

    # Not before its time; then the retry runs without moving the schedule.
    assert await rig.scheduler.tick(NOW + timedelta(seconds=59)) == 0
    rig.clock[0] = NOW + timedelta(minutes=1)
    assert await rig.scheduler.tick(rig.clock[0]) == 1
    assert await rig.run_queued() == [JobStatus.FAILED]
    stored = await rig.task(task.id)
    assert stored.failures == 2 and stored.retry_at == rig.clock[0] + timedelta(minutes=2)
    assert stored.next_run_at == schedule and rig.said() == []

    rig.clock[0] += timedelta(minutes=2)
    assert await rig.scheduler.tick(rig.clock[0]) == 1
    assert await rig.run_queued() == [JobStatus.FAILED]
    stored = await rig.task(task.id)
    assert (stored.failures, stored.retry_at, stored.next_run_at) == (0, None, schedule)
    assert stored.last_detail == "run failed: error (after 3 tries)"
    assert rig.said() == [
        f'Scheduled task {task.id} ("daily digest") failed after 3 tries. {NO_MODEL}'
    ]
    assert len(await rig.jobs(None)) == 3
    assert await rig.scheduler.tick(rig.clock[0] + timedelta(hours=1)) == 0  # no more tries


async def test_a_slot_that_falls_due_during_a_retry_is_that_retry(rig: Rig) -> None:
    task = await add_task(rig.db, "team", "often", interval_s=120, next_run_at=NOW)
    assert await rig.scheduler.tick(NOW) == 1
    await rig.run_queued()
    rig.clock[0] = NOW + timedelta(minutes=2)  # the retry (at +1m) and the slot are both due
    assert await rig.scheduler.tick(rig.clock[0]) == 1
    await rig.run_queued()
    stored = await rig.task(task.id)
    assert stored.failures == 2 and stored.next_run_at == rig.clock[0] + timedelta(minutes=2)


async def test_a_paused_task_is_not_retried(rig: Rig) -> None:
    task = await add_task(rig.db, "team", "x", interval_s=86400, next_run_at=NOW)
    await rig.scheduler.tick(NOW)
    await rig.run_queued()
    await set_task_enabled(rig.db, task.id, False)
    stored = await rig.task(task.id)
    assert stored.retry_at is None and stored.failures == 0
    assert await rig.scheduler.tick(NOW + timedelta(hours=1)) == 0


async def test_a_run_stopped_by_a_spending_cap_is_not_retried(rig: Rig) -> None:
    task = await add_task(rig.db, "team", "costly", interval_s=86400, next_run_at=NOW)
    await rig.scheduler.tick(NOW)
    (job,) = await rig.jobs()
    posted = await rig.scheduler.ended(job, task.id, RunReason.BUDGET, "Sorry — a cap.")
    assert posted == f'Scheduled task {task.id} ("costly") was stopped. Sorry — a cap.'
    stored = await rig.task(task.id)
    assert (stored.last_outcome, stored.retry_at, stored.failures) == ("refused", None, 0)
    assert stored.last_detail is not None and stored.last_detail.startswith("spending cap:")


async def test_a_stopped_run_is_not_retried_nor_reported(rig: Rig) -> None:
    task = await add_task(rig.db, "team", "x", interval_s=86400, next_run_at=NOW)
    await rig.scheduler.tick(NOW)
    (job,) = await rig.jobs()
    assert await rig.scheduler.ended(job, task.id, RunReason.ABORTED, None) is None
    stored = await rig.task(task.id)
    assert (stored.last_outcome, stored.last_detail) == ("failed", "stopped with /stop")
    assert stored.retry_at is None


# --------------------------------------------------------------------------- silent


async def _end(rig: Rig, job: JobRecord, result: RunResult) -> None:
    """The executor's end of a run: its answer decided with the scheduler, then stored and
    delivered (the container part of `RunExecutor.__call__` is not needed here)."""
    ex = rig.executor
    payload = JobPayload.from_dict(job.payload)
    text = ex._reply_text(job, result)
    answer = (text, await task_text(ex.tasks, job, payload, result.reason, text))
    stored = await ex._store_outcome(job, payload, result, None, NOW, answer=answer)
    if stored is not None:
        await ex.outbox.deliver(stored)


async def test_a_silent_tasks_reply_is_kept_but_not_posted(rig: Rig) -> None:
    quiet = await add_task(
        rig.db, "team", "check quietly", interval_s=3600, next_run_at=NOW, silent=True
    )
    loud = await add_task(rig.db, "team", "say it", interval_s=3600, next_run_at=NOW)
    assert rig.executor.tasks is rig.scheduler and await rig.scheduler.silent(quiet.id)
    assert not await rig.scheduler.silent(loud.id)
    await rig.scheduler.tick(NOW)
    jobs = {j.payload["task_id"]: j for j in await rig.jobs()}
    for task_id, reply in ((quiet.id, "all fine, nothing to say"), (loud.id, "hello")):
        result = RunResult(run_id=f"r{task_id}", space_id="team", reason=RunReason.OK, reply=reply)
        await _end(rig, jobs[task_id], result)
    assert rig.said() == ["hello"]
    history = await repo.recent_messages(rig.db, "team", limit=10, roles=(MessageRole.ASSISTANT,))
    assert sorted(m.text for m in history) == ["all fine, nothing to say", "hello"]
    assert (await rig.task(quiet.id)).last_outcome == "ok"


async def test_a_silent_task_still_reports_its_failure(rig: Rig) -> None:
    task = await add_task(rig.db, "team", "quiet", run_at=NOW, silent=True)
    rig.scheduler.retries = RetryRule(attempts=0)
    await rig.scheduler.tick(NOW)
    assert await rig.run_queued() == [JobStatus.FAILED]
    assert rig.said() == [f'Scheduled task {task.id} ("quiet") failed after 1 try. {NO_MODEL}']


# --------------------------------------------------------------------------- catch-up


async def test_catch_up_once_runs_a_missed_slot_and_skip_does_not(rig: Rig) -> None:
    started = rig.scheduler.started_at
    assert started is not None
    missed = started - timedelta(hours=2)  # due while Mercury was down
    once = await add_task(rig.db, "team", "once", interval_s=86400, next_run_at=missed)
    skip = await add_task(
        rig.db, "team", "skip", interval_s=86400, next_run_at=missed, catch_up="skip"
    )
    skip_once = await add_task(rig.db, "team", "one-shot", run_at=missed, catch_up="skip")
    fresh = await add_task(
        rig.db,
        "team",
        "fresh",
        interval_s=86400,
        next_run_at=started + timedelta(minutes=1),
        catch_up="skip",
    )
    assert await rig.scheduler.tick(NOW) == 2
    assert sorted(j.payload["task_id"] for j in await rig.jobs()) == sorted([once.id, fresh.id])
    skipped = await rig.task(skip.id)
    assert (skipped.last_outcome, skipped.last_detail) == (
        "skipped",
        "missed while Mercury was down",
    )
    assert skipped.next_run_at == NOW + timedelta(days=1) and skipped.enabled
    one_shot = await rig.task(skip_once.id)
    assert one_shot.enabled is False and one_shot.last_outcome == "skipped"
    assert rig.said() == []  # a skipped slot is recorded, not announced


# --------------------------------------------------------------------------- run now


async def test_run_now_is_checked_like_a_due_task_and_keeps_the_schedule(rig: Rig) -> None:
    db = rig.db
    later = NOW + timedelta(hours=5)
    await repo.mute(db, "team", "web", "eve")
    muted = await add_task(
        db, "team", "m", interval_s=3600, next_run_at=later, created_by="web:eve"
    )
    with pytest.raises(RunNowRefused, match="creator is muted"):
        await rig.scheduler.run_now(muted.id)
    assert (await rig.task(muted.id)).last_outcome is None  # the operator was told; no record
    ok = await add_task(
        db, "team", "fine", interval_s=3600, next_run_at=later, created_by="web:fay"
    )
    job = await rig.scheduler.run_now(ok.id)
    assert job.payload["user_key"] == "web:fay"
    stored = await rig.task(ok.id)
    assert stored.next_run_at == later and stored.last_outcome == "queued"
    assert rig.ledger.recent("team", "web:fay", NOW) == (NOW,)
    # Without a gate (no pipeline): pause, mute and permission still apply.
    await repo.pause_until_resumed(db, "team")
    with pytest.raises(RunNowRefused, match="paused until it is resumed"):
        await run_task_now(db, ok.id, NOW)
    assert rig.said() == []
