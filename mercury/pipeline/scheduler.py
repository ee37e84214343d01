"""Scheduled tasks: due tasks become jobs in their space's queue, like any message.

A task answers in the conversation it was created for, else the space's most recently
linked one. Interval and cron tasks are rescheduled from the time they ran (a Mercury that
was down does not replay every missed run: one run, then the next future slot); a one-shot
task is disabled after it ran.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timedelta

from croniter import croniter

from mercury.logging import get_logger
from mercury.pipeline.dispatcher import Dispatcher
from mercury.pipeline.payload import JobPayload
from mercury.storage import Database, TaskRecord, repo, utcnow

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
            conv = (
                await repo.get_conversation_by_id(self.db, task.conversation_id)
                if task.conversation_id
                else await repo.latest_conversation(self.db, task.space_id)
            )
            try:
                following = next_run(task, now)
            except (ValueError, KeyError) as exc:
                log.warning("task has a bad schedule; disabled", task_id=task.id, error=str(exc))
                following = None
            await repo.mark_task_ran(self.db, task.id, ran_at=now, next_run_at=following)
            if conv is None:
                log.warning("task has no conversation to answer in", task_id=task.id)
                continue
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
            await repo.enqueue_job(self.db, task.space_id, payload=payload.to_dict())
            enqueued += 1
        if enqueued:
            self.dispatcher.wake()
        return enqueued
