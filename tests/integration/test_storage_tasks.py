"""What the Tasks page adds to storage/tasks.py, on a real SQLite file and a real PostgreSQL.

Each case runs on both databases (the `db` fixture of test_storage.py): the last result
reads the task id out of the jobs' JSON payload, which each database spells differently.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mercury.storage import (
    Database,
    JobStatus,
    RunReason,
    enqueue_job,
    finish_job,
    get_or_create_space,
    record_run,
)
from mercury.storage.tasks import (
    add_task,
    count_tasks,
    get_task,
    last_task_results,
    note_task_run,
    set_task_enabled,
    task_page,
    update_task,
)
from tests.integration.test_storage import db, db_url, postgres_server_url

__all__ = ["db", "db_url", "postgres_server_url"]  # fixtures shared with test_storage.py

NOW = datetime(2026, 3, 10, 12, 30, tzinfo=UTC)


async def test_get_and_count_tasks(db: Database) -> None:
    await get_or_create_space(db, "a")
    await get_or_create_space(db, "b")
    one = await add_task(db, "a", "one", interval_s=3600)
    await add_task(db, "a", "two", interval_s=60)
    await add_task(db, "b", "three", run_at=NOW)
    assert await count_tasks(db) == 3
    assert await count_tasks(db, "a") == 2
    assert await count_tasks(db, "nobody") == 0
    got = await get_task(db, one.id)
    assert got is not None and got.prompt == "one" and got.interval_s == 3600
    assert await get_task(db, 999_999) is None


async def test_update_task_replaces_prompt_and_schedule_but_not_enabled(db: Database) -> None:
    await get_or_create_space(db, "a")
    task = await add_task(db, "a", "old", interval_s=3600)
    await set_task_enabled(db, task.id, False)
    nxt = NOW + timedelta(days=1)
    updated = await update_task(db, task.id, prompt="new", cron="0 9 * * 1-5", next_run_at=nxt)
    assert updated is not None
    stored = await get_task(db, task.id)
    assert stored == updated
    assert (stored.prompt, stored.cron, stored.interval_s, stored.run_at) == (
        "new",
        "0 9 * * 1-5",
        None,
        None,
    )
    assert stored.next_run_at == nxt
    assert stored.enabled is False  # a paused task stays paused
    with pytest.raises(ValueError, match="exactly one"):
        await update_task(db, task.id, prompt="x", cron="* * * * *", interval_s=60, next_run_at=nxt)
    with pytest.raises(ValueError, match="positive"):
        await update_task(db, task.id, prompt="x", interval_s=0, next_run_at=nxt)
    assert await update_task(db, 999_999, prompt="x", interval_s=60, next_run_at=nxt) is None
    assert (await get_task(db, task.id)) == stored  # the refused edits changed nothing


async def test_pause_keeps_next_run_and_resume_sets_it(db: Database) -> None:
    await get_or_create_space(db, "a")
    task = await add_task(db, "a", "p", interval_s=3600, next_run_at=NOW)
    paused = await set_task_enabled(db, task.id, False)
    assert paused is not None and paused.enabled is False and paused.next_run_at == NOW
    later = NOW + timedelta(hours=2)
    resumed = await set_task_enabled(db, task.id, True, next_run_at=later)
    assert resumed is not None and resumed.enabled and resumed.next_run_at == later
    assert await get_task(db, task.id) == resumed
    assert await set_task_enabled(db, 999_999, False) is None


async def test_note_task_run_leaves_the_schedule(db: Database) -> None:
    await get_or_create_space(db, "a")
    task = await add_task(db, "a", "p", interval_s=3600, next_run_at=NOW)
    await note_task_run(db, task.id, ran_at=NOW - timedelta(minutes=5))
    stored = await get_task(db, task.id)
    assert stored is not None
    assert stored.last_run_at == NOW - timedelta(minutes=5)
    assert stored.next_run_at == NOW and stored.enabled


async def test_last_task_results_newest_job_and_its_newest_run(db: Database) -> None:
    await get_or_create_space(db, "a")
    ran = await add_task(db, "a", "ran", interval_s=3600)
    waiting = await add_task(db, "a", "waiting", interval_s=3600)
    never = await add_task(db, "a", "never", interval_s=3600)
    # Older job of `ran`: failed run. Newer job: a crash then an ok retry.
    old = await enqueue_job(db, "a", payload={"prompt": "ran", "task_id": ran.id})
    await record_run(db, space_id="a", reason=RunReason.TIMEOUT, job_id=old.id, started_at=NOW)
    new = await enqueue_job(db, "a", payload={"prompt": "ran", "task_id": ran.id})
    await record_run(
        db, space_id="a", reason=RunReason.CRASHED, job_id=new.id, started_at=NOW,
        error="boom",
    )  # fmt: skip
    ok = await record_run(
        db,
        space_id="a",
        reason=RunReason.OK,
        job_id=new.id,
        started_at=NOW + timedelta(minutes=1),
        finished_at=NOW + timedelta(minutes=2),
    )
    await finish_job(db, new.id, JobStatus.DONE)
    queued = await enqueue_job(db, "a", payload={"prompt": "w", "task_id": waiting.id})
    # Jobs of no task, or of a task not asked about, are not counted.
    await enqueue_job(db, "a", payload={"prompt": "a message", "task_id": None})
    await enqueue_job(db, "a", payload={"prompt": "no key"})

    results = await last_task_results(db, [ran.id, waiting.id, never.id])
    assert set(results) == {ran.id, waiting.id}
    last = results[ran.id]
    assert (last.job_id, last.job_status, last.run_id, last.reason) == (
        new.id,
        JobStatus.DONE,
        ok.id,
        RunReason.OK,
    )
    assert last.finished_at == NOW + timedelta(minutes=2)
    assert last.started_at == NOW + timedelta(minutes=1)
    wait = results[waiting.id]
    assert (wait.job_id, wait.job_status, wait.run_id, wait.reason) == (
        queued.id,
        JobStatus.QUEUED,
        None,
        None,
    )
    assert await last_task_results(db, []) == {}
    assert await last_task_results(db, [never.id]) == {}


async def test_task_page_is_bounded_and_filtered(db: Database) -> None:
    await get_or_create_space(db, "a")
    await get_or_create_space(db, "b")
    ids = [(await add_task(db, "a" if i % 2 else "b", f"t{i}", interval_s=60)).id for i in range(7)]
    job = await enqueue_job(db, "b", payload={"prompt": "t0", "task_id": ids[0]})
    first = await task_page(db, limit=3)
    assert [r.task.id for r in first] == ids[:3]
    assert first[0].last is not None and first[0].last.job_id == job.id
    assert first[1].last is None
    assert [r.task.id for r in await task_page(db, limit=3, offset=6)] == ids[6:]
    assert [r.task.space_id for r in await task_page(db, space_id="a")] == ["a", "a", "a"]
    assert await task_page(db, space_id="nobody") == []
