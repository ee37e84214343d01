"""Scheduled tasks become jobs in their space's queue (real SQLite, real dispatcher claims)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from mercury.pipeline.dispatcher import Dispatcher
from mercury.pipeline.scheduler import Scheduler, next_cron_run
from mercury.storage import Database, JobStatus, repo
from mercury.storage.migrate import upgrade


def test_next_cron_run_is_utc_and_after() -> None:
    after = datetime(2026, 11, 24, 8, 30, tzinfo=UTC)  # a Tuesday
    assert next_cron_run("0 9 * * 1-5", after) == datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
    assert next_cron_run("0 9 * * 1", after) == datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


async def test_due_tasks_are_enqueued_and_rescheduled(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
    await upgrade(url)
    db = Database(url)
    try:
        await repo.get_or_create_space(db, "s1")
        await repo.link_conversation(db, "telegram", "42", "s1")
        await repo.get_or_create_space(db, "lonely")
        now = datetime.now(UTC).replace(microsecond=0)
        past = now - timedelta(minutes=1)
        every = await repo.add_task(db, "s1", "hourly digest", interval_s=3600, next_run_at=past)
        once = await repo.add_task(db, "s1", "remind me", run_at=past)
        cron = await repo.add_task(db, "s1", "weekday standup", cron="0 9 * * 1-5",
                                   next_run_at=past)  # fmt: skip
        later = await repo.add_task(db, "s1", "not yet", run_at=now + timedelta(hours=1))
        nowhere = await repo.add_task(db, "lonely", "no chat", run_at=past)

        claimed: list[int] = []

        async def handler(job):  # type: ignore[no-untyped-def]
            claimed.append(job.id)
            return JobStatus.DONE

        dispatcher = Dispatcher(db, handler, max_concurrency=1)
        scheduler = Scheduler(db, dispatcher, tick=30)
        assert await scheduler.tick(now) == 3

        jobs = await repo.list_jobs(db, status=JobStatus.QUEUED, space_id="s1")
        assert [j.payload["prompt"] for j in jobs] == ["hourly digest", "remind me",
                                                        "weekday standup"]  # fmt: skip
        assert {(j.payload["platform"], j.payload["chat_id"]) for j in jobs} == {("telegram", "42")}
        tasks = {t.id: t for t in await repo.list_tasks(db, "s1")}
        assert tasks[every.id].next_run_at == now + timedelta(hours=1)
        assert tasks[once.id].enabled is False
        assert tasks[cron.id].next_run_at == next_cron_run("0 9 * * 1-5", now)
        assert tasks[later.id].enabled and tasks[later.id].last_run_at is None
        # a space with no conversation has nowhere to answer: not enqueued, not retried
        assert await repo.list_jobs(db, space_id="lonely") == []
        assert (await repo.list_tasks(db, "lonely"))[0].enabled is False
        assert nowhere.id not in tasks
        # nothing is due twice
        assert await scheduler.tick(now) == 0
    finally:
        await db.dispose()
