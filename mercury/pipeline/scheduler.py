"""Scheduled tasks: due tasks become jobs in their space's queue, like any message.

A task answers in the conversation it was created for, else the space's most recently
linked one. Interval and cron tasks are rescheduled from the time they ran (a Mercury that
was down does not replay every missed run: one run, then the next future slot); a one-shot
task is disabled after it ran.

`run_now` (the dashboard's Run now button) queues a task's job through the same code a due
task takes, without moving its schedule. It refuses while the task's space is paused: a
button must not get round an operator's /pause. (`tick` itself does not look at pauses.)
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timedelta

from croniter import croniter

from mercury.logging import get_logger
from mercury.pipeline.dispatcher import Dispatcher
from mercury.pipeline.payload import JobPayload
from mercury.storage import ConversationRecord, Database, JobRecord, TaskRecord, repo, utcnow
from mercury.storage.tasks import get_task, note_task_run

log = get_logger("mercury.scheduler")


def next_cron_run(expr: str, after: datetime) -> datetime:
    """The first time after `after` that the 5-field cron `expr` matches (UTC)."""
    return croniter(expr, after).get_next(datetime)


def next_run(task: TaskRecord, now: datetime) -> datetime | None:
    if task.interval_s:
        return now + timedelta(seconds=task.interval_s)
    if task.cron:
        return next_cron_run(task.cron, now)
    return None  # one-shot


class RunNowRefused(Exception):
    """A task cannot be run now; the message says why, for the operator."""


async def answer_conversation(db: Database, task: TaskRecord) -> ConversationRecord | None:
    """Where a task answers: its own conversation, else its space's latest one."""
    if task.conversation_id:
        return await repo.get_conversation_by_id(db, task.conversation_id)
    return await repo.latest_conversation(db, task.space_id)


async def enqueue_task(db: Database, task: TaskRecord, conv: ConversationRecord) -> JobRecord:
    """Queue one run of `task` in its space, answering in `conv`, like any message."""
    payload = JobPayload(
        platform=conv.platform,
        chat_id=conv.chat_id,
        thread_id=conv.thread_id,
        reply_to=None,
        message_id=None,
        prompt=task.prompt,
        author_id="scheduler",
        author_name=f"scheduled task {task.id}",
        role="member",
        task_id=task.id,
    )
    return await repo.enqueue_job(db, task.space_id, payload=payload.to_dict())


async def run_task_now(db: Database, task_id: int, now: datetime | None = None) -> JobRecord:
    """Queue a task's job now, as if it were due, leaving its schedule as it is.

    Raises RunNowRefused when there is no such task, its space is paused, or the space has
    no conversation to answer in. The caller wakes the dispatcher (Scheduler.run_now does).
    """
    now = now or utcnow()
    task = await get_task(db, task_id)
    if task is None:
        raise RunNowRefused(f"there is no task {task_id}")
    space = await repo.get_space(db, task.space_id)
    if space is not None and space.is_paused(now):
        ends = space.pause_ends
        until = f" until {ends:%Y-%m-%d %H:%M} UTC" if ends else " until it is resumed"
        raise RunNowRefused(f"space {task.space_id} is paused{until}; resume it first")
    conv = await answer_conversation(db, task)
    if conv is None:
        raise RunNowRefused(f"space {task.space_id} has no conversation to answer in")
    job = await enqueue_task(db, task, conv)
    await note_task_run(db, task.id, ran_at=now)
    log.info("task run now", task_id=task.id, space=task.space_id, job=job.id)
    return job


class Scheduler:
    def __init__(self, db: Database, dispatcher: Dispatcher, *, tick: float) -> None:
        self.db = db
        self.dispatcher = dispatcher
        self.tick_s = tick
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick(utcnow())
            except Exception:  # a bad task must not stop the others
                log.exception("scheduler tick failed")
            await asyncio.sleep(self.tick_s)

    async def tick(self, now: datetime) -> int:
        """Enqueue every due task; returns how many were enqueued."""
        enqueued = 0
        for task in await repo.due_tasks(self.db, now):
            conv = await answer_conversation(self.db, task)
            try:
                following = next_run(task, now)
            except (ValueError, KeyError) as exc:
                log.warning("task has a bad schedule; disabled", task_id=task.id, error=str(exc))
                following = None
            await repo.mark_task_ran(self.db, task.id, ran_at=now, next_run_at=following)
            if conv is None:
                log.warning("task has no conversation to answer in", task_id=task.id)
                continue
            await enqueue_task(self.db, task, conv)
            enqueued += 1
        if enqueued:
            self.dispatcher.wake()
        return enqueued

    async def run_now(self, task_id: int) -> JobRecord:
        """Queue a task's job now (see `run_task_now`) and wake the dispatcher for it."""
        job = await run_task_now(self.db, task_id)
        self.dispatcher.wake()
        return job
