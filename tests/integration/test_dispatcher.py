"""The dispatcher holding jobs back (low disk) and putting deferred jobs back (real SQLite)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mercury.pipeline.dispatcher import Dispatcher, JobDeferred
from mercury.storage import Database, JobRecord, JobStatus, repo
from mercury.storage.migrate import upgrade


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
    await upgrade(url)
    database = Database(url)
    await repo.get_or_create_space(database, "s1")
    try:
        yield database
    finally:
        await database.dispose()


async def wait_for(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    for _ in range(int(timeout / 0.02)):
        if await predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


async def test_a_closed_gate_holds_queued_jobs_until_it_opens(db: Database) -> None:
    handled: list[int] = []
    why: list[str | None] = ["only 10 MiB free, under disk.min_free (1024 MiB)"]

    async def handler(job: JobRecord) -> JobStatus:
        handled.append(job.id)
        return JobStatus.DONE

    dispatcher = Dispatcher(db, handler, max_concurrency=2, poll_interval=0.05, gate=lambda: why[0])
    job = await repo.enqueue_job(db, "s1", payload={"prompt": "x"})
    dispatcher.start()
    try:
        await asyncio.sleep(0.3)
        assert handled == []
        assert dispatcher.held == why[0]
        (queued,) = await repo.list_jobs(db, status=JobStatus.QUEUED)
        assert queued.id == job.id  # kept, in the queue
        why[0] = None
        dispatcher.wake()

        async def done() -> bool:
            return [j.status for j in await repo.list_jobs(db)] == [JobStatus.DONE]

        await wait_for(done)
        assert handled == [job.id]
        assert dispatcher.held is None
    finally:
        await dispatcher.stop(1, on_timeout=asyncio.sleep)  # type: ignore[arg-type]


async def test_a_deferred_job_goes_back_unrun_and_runs_later(db: Database) -> None:
    calls: list[int] = []

    async def handler(job: JobRecord) -> JobStatus:
        calls.append(job.attempts)
        if len(calls) == 1:
            raise JobDeferred("low disk")
        return JobStatus.DONE

    dispatcher = Dispatcher(db, handler, max_concurrency=1, poll_interval=0.05)
    await repo.enqueue_job(db, "s1", payload={"prompt": "x"})
    dispatcher.start()
    try:

        async def done() -> bool:
            return [j.status for j in await repo.list_jobs(db)] == [JobStatus.DONE]

        await wait_for(done)
    finally:
        await dispatcher.stop(1, on_timeout=asyncio.sleep)  # type: ignore[arg-type]
    # Claimed twice, but the deferred claim did not count as an attempt.
    assert calls == [1, 1]


async def test_finishing_a_job_is_retried_while_the_database_is_locked(
    db: Database, tmp_path: Path
) -> None:
    """A locked database when the job ends must not leave it `running` (its space stuck)."""
    import sqlite3

    locker = sqlite3.connect(tmp_path / "m.db", timeout=0, isolation_level=None)
    release = asyncio.Event()

    async def handler(job: JobRecord) -> JobStatus:
        # Another process takes the write lock just as the run ends, for longer than
        # SQLite's busy_timeout (5 s): the first attempt to finish the job fails.
        locker.execute("BEGIN EXCLUSIVE")
        asyncio.get_running_loop().call_later(6.5, release.set)
        return JobStatus.DONE

    dispatcher = Dispatcher(db, handler, max_concurrency=1, poll_interval=0.05)
    job = await repo.enqueue_job(db, "s1", payload={"prompt": "x"})
    dispatcher.start()
    try:
        await release.wait()
        locker.execute("COMMIT")

        async def done() -> bool:
            found = await repo.get_job(db, job.id)
            return found is not None and found.status is JobStatus.DONE

        await wait_for(done, timeout=30)
    finally:
        locker.close()
        await dispatcher.stop(1.0, on_timeout=_nothing)


async def _nothing() -> None:
    return None
