"""Tasks, one aggregate: prompts scheduled by cron, interval or a single time.

Storage does not interpret cron expressions: the scheduler computes each next run time and
hands it in (`add_task(next_run_at=...)`, `mark_task_ran`, `update_task`, `set_task_enabled`).

What became of a task's last due run is kept on the task (`last_outcome`, one of
OUTCOMES, with `last_detail` in plain words and `last_outcome_at`), with the failed
attempts of that run (`failures`) and when it is retried (`retry_at`): the scheduler
(pipeline/scheduler.py) writes them, the CLI, chat and dashboard show them.

Several Mercury processes may share one database, each with its scheduler. A due run is
taken by a claim: `start_task_run` / `pass_task_slot` given the task as it was read
(`seen`) update it only if it is still so, and report whether they did; whoever updated
it queues the job (or says the refusal), the others leave it. No lock, no schema: the
slot, retry and enabled columns are the version.

The dashboard's task list (`task_page`) shows each task with its last result: the newest
job whose payload names the task, and that job's newest run. Both are looked up by the
database for the tasks of one page only, so the list stays fast however many jobs exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, delete, func, literal, select, update

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
    silent: bool = False
    catch_up: str = "once"
    failures: int = 0
    retry_at: datetime | None = None
    last_outcome: str | None = None
    last_detail: str | None = None
    last_outcome_at: datetime | None = None


# What a task's last due run came to (TaskRecord.last_outcome).
QUEUED = "queued"  # its job is in the queue or running
OK = "ok"
FAILED = "failed"  # the run failed (a retry may be due: retry_at)
REFUSED = "refused"  # not run: paused space, muted or unauthorised creator, limits, caps
SKIPPED = "skipped"  # not run: missed while Mercury was down, and the task skips those
OUTCOMES = (QUEUED, OK, FAILED, REFUSED, SKIPPED)
CATCH_UPS = ("once", "skip")


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
    silent: bool = False,
    catch_up: str = "once",
) -> TaskRecord:
    """Schedule a prompt by exactly one of cron, interval_s or run_at.

    `next_run_at` defaults to run_at, or now + interval_s; a cron task needs the scheduler
    (which parses cron) to pass it, since storage does not interpret cron expressions.
    `silent`: post only failures; `catch_up`: "once" or "skip" a slot missed while down.
    """
    _one_schedule(cron, interval_s, run_at)
    _catch_up(catch_up)
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
            silent=silent,
            catch_up=catch_up,
            failures=0,
        )
        s.add(task)
        await s.flush()
        return to_record(TaskRecord, task)


async def task_creator(store: Store, user_key: str | None, task_id: int | None) -> str | None:
    """The `created_by` of a task a run creates: the run's sender ("platform:user_id"), or
    for a run of a scheduled task that task's own creator (so a task's tasks act for the
    same person, or the operator). None when neither is known."""
    if task_id is not None:
        parent = await get_task(store, task_id)
        if parent is not None:
            return parent.created_by
    return user_key


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
    """Enabled tasks whose next run is at or before `now`, and tasks whose retry is due,
    soonest first.

    A retry is due whether or not the task is enabled: a one-shot task is disabled once its
    run is queued, and its retries still follow; pausing a task clears its retry
    (`set_task_enabled`).
    """
    now = now or utcnow()
    async with tx(store) as s:
        rows = await s.scalars(
            select(Task)
            .where((Task.enabled.is_(True) & (Task.next_run_at <= now)) | (Task.retry_at <= now))
            .order_by(func.coalesce(Task.next_run_at, Task.retry_at), Task.id)
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


def _catch_up(value: str) -> None:
    if value not in CATCH_UPS:
        raise ValueError(f"catch_up must be 'once' or 'skip', got {value!r}")


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
    Either way a pending retry is dropped: a paused task does not run, a resumed one
    starts afresh. None if there is no such task.
    """
    async with tx(store) as s:
        task = await s.get(Task, task_id, populate_existing=True)
        if task is None:
            return None
        task.enabled = enabled
        task.failures = 0
        task.retry_at = None
        if enabled:
            task.next_run_at = next_run_at
        await s.flush()
        return to_record(TaskRecord, task)


async def note_task_run(store: Store, task_id: int, *, ran_at: datetime) -> None:
    """Record an extra run of a task (run now) without touching its schedule."""
    async with tx(store) as s:
        await s.execute(update(Task).where(Task.id == task_id).values(last_run_at=ran_at))


def _outcome(outcome: str, detail: str | None, at: datetime) -> dict[str, Any]:
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown task outcome {outcome!r}; one of {', '.join(OUTCOMES)}")
    return {"last_outcome": outcome, "last_detail": detail, "last_outcome_at": at}


async def note_task_outcome(
    store: Store,
    task_id: int,
    outcome: str,
    detail: str | None,
    at: datetime,
    *,
    failures: int | None = None,
    retry_at: datetime | None = None,
    disable: bool = False,
) -> None:
    """Record what became of a task's due run (`outcome`: one of OUTCOMES; `detail`: why,
    in plain words). With `failures`, also set the failed attempts and the retry time
    (None: no retry); with `disable`, the task is disabled (a one-shot task that is done)."""
    values = _outcome(outcome, detail, at)
    if failures is not None:
        values |= {"failures": failures, "retry_at": retry_at}
    if disable:
        values["enabled"] = False
    async with tx(store) as s:
        await s.execute(update(Task).where(Task.id == task_id).values(**values))


async def set_task_retry(
    store: Store, task_id: int, *, failures: int, retry_at: datetime | None
) -> None:
    """Set a task's failed attempts of its current run, and when it is retried (None: not)."""
    async with tx(store) as s:
        await s.execute(
            update(Task).where(Task.id == task_id).values(failures=failures, retry_at=retry_at)
        )


def _as_seen(seen: TaskRecord, dialect: str) -> list[ColumnElement[bool]]:
    """The conditions under which a task is still as a scheduler read it: same slot, same
    retry, same enabled flag. Each claim moves at least one of these forward (the slot to
    the next one, the retry to None), so an UPDATE guarded by them succeeds for exactly one
    of several schedulers that read the same due task (a compare-and-set, on SQLite and
    PostgreSQL alike: PostgreSQL re-checks the WHERE on the row another transaction just
    updated, SQLite lets one writer at a time).

    SQLite keeps times as text: they are compared as times (julianday), so a value written
    in another spelling (by hand, without microseconds) still matches what was read from
    it, instead of the task never being claimed again."""

    def same(column: Any, value: datetime | None) -> ColumnElement[bool]:
        if value is None:
            return column.is_(None)
        if dialect == "sqlite":
            return func.julianday(column) == func.julianday(literal(value, column.type))
        return column == value

    return [
        Task.id == seen.id,
        same(Task.next_run_at, seen.next_run_at),
        same(Task.retry_at, seen.retry_at),
        Task.enabled == seen.enabled,
    ]


async def _set_task(
    store: Store, task_id: int, values: dict[str, Any], seen: TaskRecord | None
) -> bool:
    """Update one task, or with `seen` only while it is as `seen` (see `_as_seen`).
    True when the row was updated."""
    if seen is not None and seen.id != task_id:
        raise ValueError(f"seen is task {seen.id}, not task {task_id}")
    async with tx(store) as s:
        dialect = s.get_bind().dialect.name
        where = [Task.id == task_id] if seen is None else _as_seen(seen, dialect)
        q = update(Task).where(*where).values(**values)
        return bool(rowcount(await s.execute(q.execution_options(synchronize_session=False))))


async def start_task_run(
    store: Store,
    task_id: int,
    *,
    ran_at: datetime,
    next_run_at: datetime | None,
    move: bool,
    detail: str | None = None,
    seen: TaskRecord | None = None,
) -> bool:
    """A due run of a task was queued: record it (outcome "queued") and clear its retry.

    With `move` (its regular slot came due) the schedule moves on to `next_run_at`, and a
    one-shot task (next_run_at None) is disabled, as `mark_task_ran` does; without (a
    retry, a run now) the schedule stays where it is. Failed attempts are kept: they count
    until the run succeeds or is reported.

    With `seen` (the task as the scheduler read it when it was due) this is a claim of that
    due run: nothing changes, and False is returned, when the task is no longer as seen
    (another scheduler took the run first, or the operator changed it). Call it first in
    the transaction that queues the job, and queue nothing on False. Without `seen` (run
    now) the run is recorded whatever the task's state; False then means no such task.
    """
    values = _outcome(QUEUED, detail, ran_at) | {"last_run_at": ran_at, "retry_at": None}
    if move:
        values |= {"next_run_at": next_run_at, "enabled": next_run_at is not None}
    return await _set_task(store, task_id, values, seen)


async def pass_task_slot(
    store: Store,
    task_id: int,
    outcome: str,
    detail: str | None,
    at: datetime,
    *,
    next_run_at: datetime | None,
    move: bool,
    seen: TaskRecord | None = None,
) -> bool:
    """A due run of a task did not happen (refused, skipped): record why, drop its retry and
    failed attempts, and with `move` go on to `next_run_at` (None: a one-shot task, which
    is disabled).

    With `seen`, a claim as in `start_task_run`: False (nothing recorded) when another
    scheduler got to this due run first, so only the one that recorded it says so in the
    chat."""
    values = _outcome(outcome, detail, at) | {"failures": 0, "retry_at": None}
    if move:
        values |= {"next_run_at": next_run_at, "enabled": next_run_at is not None}
    return await _set_task(store, task_id, values, seen)


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
    "CATCH_UPS",
    "FAILED",
    "OK",
    "OUTCOMES",
    "QUEUED",
    "REFUSED",
    "SKIPPED",
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
    "note_task_outcome",
    "note_task_run",
    "pass_task_slot",
    "set_task_enabled",
    "set_task_retry",
    "start_task_run",
    "task_creator",
    "task_page",
    "update_task",
]
