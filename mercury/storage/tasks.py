"""Tasks, one aggregate: prompts scheduled by cron, interval or a single time.

Storage does not interpret cron expressions: the scheduler computes each next run time and
hands it in (`add_task(next_run_at=...)`, `mark_task_ran`, `update_task`, `set_task_enabled`).

The dashboard's task list (`task_page`) shows each task with its last result: the newest
job whose payload names the task, and that job's newest run. Both are looked up by the
database for the tasks of one page only, so the list stays fast however many jobs exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, update

from mercury.storage.models import Job, JobStatus, Run, RunReason, Task, utcnow
from mercury.storage.session import Store, rowcount, to_record, tx


@dataclass(frozen=True, slots=True)
class TaskRecord:
    id: int
    space_id: str
    conversation_id: int | None
    prompt: str
    cron: str | None
    interval_s: int | None
    run_at: datetime | None
    created_by: str | None
    enabled: bool
    next_run_at: datetime | None
    last_run_at: datetime | None
    created_at: datetime


async def add_task(
    store: Store,
    space_id: str,
    prompt: str,
    *,
    cron: str | None = None,
    interval_s: int | None = None,
    run_at: datetime | None = None,
    next_run_at: datetime | None = None,
    created_by: str | None = None,
    conversation_id: int | None = None,
) -> TaskRecord:
    """Schedule a prompt by exactly one of cron, interval_s or run_at.

    `next_run_at` defaults to run_at, or now + interval_s; a cron task needs the scheduler
    (which parses cron) to pass it, since storage does not interpret cron expressions.
    """
    _one_schedule(cron, interval_s, run_at)
    now = utcnow()
    if next_run_at is None:
        if run_at is not None:
            next_run_at = run_at
        elif interval_s is not None:
            next_run_at = now + timedelta(seconds=interval_s)
    async with tx(store) as s:
        task = Task(
            space_id=space_id,
            conversation_id=conversation_id,
            prompt=prompt,
            cron=cron,
            interval_s=interval_s,
            run_at=run_at,
            created_by=created_by,
            enabled=True,
            next_run_at=next_run_at,
            last_run_at=None,
            created_at=now,
        )
        s.add(task)
        await s.flush()
        return to_record(TaskRecord, task)


async def list_tasks(
    store: Store, space_id: str | None = None, *, enabled_only: bool = False
) -> list[TaskRecord]:
    """Tasks by id, of one space or all."""
    q = select(Task)
    if space_id is not None:
        q = q.where(Task.space_id == space_id)
    if enabled_only:
        q = q.where(Task.enabled.is_(True))
    async with tx(store) as s:
        rows = await s.scalars(q.order_by(Task.id))
        return [to_record(TaskRecord, t) for t in rows]


async def cancel_task(store: Store, task_id: int, *, space_id: str | None = None) -> bool:
    """Delete a task; with `space_id`, only if it belongs to that space. True if deleted."""
    q = delete(Task).where(Task.id == task_id)
    if space_id is not None:
        q = q.where(Task.space_id == space_id)
    async with tx(store) as s:
        result = await s.execute(q)
        return bool(rowcount(result))


async def due_tasks(store: Store, now: datetime | None = None) -> list[TaskRecord]:
    """Enabled tasks whose next run is at or before `now`, soonest first."""
    async with tx(store) as s:
        rows = await s.scalars(
            select(Task)
            .where(Task.enabled.is_(True), Task.next_run_at <= (now or utcnow()))
            .order_by(Task.next_run_at, Task.id)
        )
        return [to_record(TaskRecord, t) for t in rows]


async def mark_task_ran(
    store: Store, task_id: int, *, ran_at: datetime, next_run_at: datetime | None
) -> None:
    """Record a run of a task; next_run_at None (a one-shot that ran) disables it."""
    async with tx(store) as s:
        await s.execute(
            update(Task)
            .where(Task.id == task_id)
            .values(last_run_at=ran_at, next_run_at=next_run_at, enabled=next_run_at is not None)
        )


def _one_schedule(cron: str | None, interval_s: int | None, run_at: datetime | None) -> None:
    if sum(x is not None for x in (cron, interval_s, run_at)) != 1:
        raise ValueError("a task needs exactly one of cron, interval_s or run_at")
    if interval_s is not None and interval_s <= 0:
        raise ValueError("interval_s must be positive")


async def get_task(store: Store, task_id: int) -> TaskRecord | None:
    """The task, or None."""
    async with tx(store) as s:
        task = await s.get(Task, task_id, populate_existing=True)
        return None if task is None else to_record(TaskRecord, task)


async def count_tasks(store: Store, space_id: str | None = None) -> int:
    """How many tasks there are, of one space or all (counted by the database)."""
    q = select(func.count()).select_from(Task)
    if space_id is not None:
        q = q.where(Task.space_id == space_id)
    async with tx(store) as s:
        return int(await s.scalar(q) or 0)


async def update_task(
    store: Store,
    task_id: int,
    *,
    prompt: str,
    cron: str | None = None,
    interval_s: int | None = None,
    run_at: datetime | None = None,
    next_run_at: datetime | None,
) -> TaskRecord | None:
    """Replace a task's prompt and schedule (exactly one of cron, interval_s, run_at).

    Whether it is enabled does not change: a paused task stays paused until resumed.
    None if there is no such task.
    """
    _one_schedule(cron, interval_s, run_at)
    async with tx(store) as s:
        task = await s.get(Task, task_id, populate_existing=True)
        if task is None:
            return None
        task.prompt = prompt
        task.cron = cron
        task.interval_s = interval_s
        task.run_at = run_at
        task.next_run_at = next_run_at
        await s.flush()
        return to_record(TaskRecord, task)


async def set_task_enabled(
    store: Store, task_id: int, enabled: bool, *, next_run_at: datetime | None = None
) -> TaskRecord | None:
    """Pause (enabled False) or resume a task; resuming sets its next run to `next_run_at`.

    Pausing keeps the next run time, so the list still shows where the schedule stood.
    None if there is no such task.
    """
    async with tx(store) as s:
        task = await s.get(Task, task_id, populate_existing=True)
        if task is None:
            return None
        task.enabled = enabled
        if enabled:
            task.next_run_at = next_run_at
        await s.flush()
        return to_record(TaskRecord, task)


async def note_task_run(store: Store, task_id: int, *, ran_at: datetime) -> None:
    """Record an extra run of a task (run now) without touching its schedule."""
    async with tx(store) as s:
        await s.execute(update(Task).where(Task.id == task_id).values(last_run_at=ran_at))


@dataclass(frozen=True, slots=True)
class TaskResult:
    """The last job a task queued, and that job's last run (None while it waits)."""

    job_id: int
    job_status: JobStatus
    job_error: str | None
    enqueued_at: datetime
    run_id: int | None
    reason: RunReason | None
    run_error: str | None
    started_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class TaskRow:
    """One line of the task list: the task and its last result, if it ever ran."""

    task: TaskRecord
    last: TaskResult | None


async def last_task_results(store: Store, task_ids: list[int]) -> dict[int, TaskResult]:
    """For each of `task_ids`, its newest job (by payload task_id) and that job's newest run.

    The task id is read out of the JSON payload in SQL (as user_jobs_since reads the user),
    on SQLite and PostgreSQL alike. Grouping happens on a subquery's column, not on the
    JSON expression itself, which PostgreSQL would see as a different expression per bind.
    """
    if not task_ids:
        return {}
    task_key = Job.payload["task_id"].as_integer()
    tagged = (
        select(task_key.label("task_id"), Job.id.label("job_id"))
        # A task's job has no message (scheduler.enqueue_task): the message_id index narrows
        # the JSON scan to task jobs (about 5x faster with 10,000 jobs; bench/dashboard_pages).
        .where(Job.message_id.is_(None), task_key.in_(task_ids))
        .subquery()
    )
    newest_job = (
        select(tagged.c.task_id, func.max(tagged.c.job_id).label("job_id"))
        .group_by(tagged.c.task_id)
        .subquery()
    )
    newest_run = (
        select(Run.job_id, func.max(Run.id).label("run_id"))
        .where(Run.job_id.in_(select(newest_job.c.job_id)))
        .group_by(Run.job_id)
        .subquery()
    )
    q = (
        select(
            newest_job.c.task_id,
            Job.id,
            Job.status,
            Job.error,
            Job.enqueued_at,
            Run.id,
            Run.reason,
            Run.error,
            Run.started_at,
            Run.finished_at,
        )
        .join(Job, Job.id == newest_job.c.job_id)
        .outerjoin(newest_run, newest_run.c.job_id == Job.id)
        .outerjoin(Run, Run.id == newest_run.c.run_id)
    )
    async with tx(store) as s:
        rows = (await s.execute(q)).all()
    return {
        int(task_id): TaskResult(
            job_id=job_id,
            job_status=JobStatus(status),
            job_error=job_error,
            enqueued_at=enqueued_at,
            run_id=run_id,
            reason=None if reason is None else RunReason(reason),
            run_error=run_error,
            started_at=started_at,
            finished_at=finished_at,
        )
        for (
            task_id,
            job_id,
            status,
            job_error,
            enqueued_at,
            run_id,
            reason,
            run_error,
            started_at,
            finished_at,
        ) in rows
    }


async def task_page(
    store: Store, *, limit: int = 50, offset: int = 0, space_id: str | None = None
) -> list[TaskRow]:
    """One page of tasks (by id), of one space or all, each with its last result."""
    q = select(Task)
    if space_id is not None:
        q = q.where(Task.space_id == space_id)
    async with tx(store) as s:
        rows = await s.scalars(q.order_by(Task.id).limit(limit).offset(offset))
        tasks = [to_record(TaskRecord, t) for t in rows]
    last = await last_task_results(store, [t.id for t in tasks])
    return [TaskRow(task=t, last=last.get(t.id)) for t in tasks]


__all__ = [
    "TaskRecord",
    "TaskResult",
    "TaskRow",
    "add_task",
    "cancel_task",
    "count_tasks",
    "due_tasks",
    "get_task",
    "last_task_results",
    "list_tasks",
    "mark_task_ran",
    "note_task_run",
    "set_task_enabled",
    "task_page",
    "update_task",
]
