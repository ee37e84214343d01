"""What a scheduled task's job shows in its chat: the run executor asks the scheduler
(which sets `RunExecutor.tasks`) through `TaskHook`. Jobs of no task never reach it, and a
failure of the hook never loses an answer: the job's own text is posted then."""

from __future__ import annotations

from typing import Protocol

from mercury.logging import get_logger
from mercury.pipeline.payload import JobPayload
from mercury.sandbox.types import RunReason
from mercury.storage import JobRecord

log = get_logger("mercury.runs")


class TaskHook(Protocol):
    """Scheduled tasks (pipeline/scheduler.py, which sets `RunExecutor.tasks`): what a
    task's job shows in its chat. Jobs of no task never reach it."""

    async def silent(self, task_id: int) -> bool:
        """True: the run shows no typing, status or preview (its reply may not be posted)."""
        ...

    async def ended(
        self, job: JobRecord, task_id: int, reason: RunReason, text: str | None
    ) -> str | None:
        """Told how the task's job ended (`text`: its reply or notice); what to post."""
        ...


async def task_silent(tasks: TaskHook | None, payload: JobPayload) -> bool:
    """Whether a task's run works unseen (TaskHook.silent); False for other jobs."""
    if payload.task_id is None or tasks is None:
        return False
    try:
        return await tasks.silent(payload.task_id)
    except Exception:
        log.exception("asking whether a task is silent failed", task_id=payload.task_id)
        return False


async def task_text(
    tasks: TaskHook | None,
    job: JobRecord,
    payload: JobPayload,
    reason: RunReason,
    text: str | None,
) -> str | None:
    """What of a job's answer is posted: all of it, unless the job is a task's and the
    scheduler says otherwise (a retry coming, a silent task, its one failure report)."""
    if payload.task_id is None or tasks is None:
        return text
    try:
        return await tasks.ended(job, payload.task_id, reason, text)
    except Exception:
        log.exception("recording a task's outcome failed", task_id=payload.task_id)
        return text


__all__ = ["TaskHook", "task_silent", "task_text"]
