"""Tasks, one aggregate: prompts scheduled by cron, interval or a single time.

Storage does not interpret cron expressions: the scheduler computes each next run time and
hands it in (`add_task(next_run_at=...)`, `mark_task_ran`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update

from mercury.storage.models import Task, utcnow
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
    if sum(x is not None for x in (cron, interval_s, run_at)) != 1:
        raise ValueError("a task needs exactly one of cron, interval_s or run_at")
    if interval_s is not None and interval_s <= 0:
        raise ValueError("interval_s must be positive")
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


__all__ = ["TaskRecord", "add_task", "cancel_task", "due_tasks", "list_tasks", "mark_task_ran"]
