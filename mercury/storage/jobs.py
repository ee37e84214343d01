"""Jobs, one aggregate: the persistent queue, claimed FIFO per space, one running per space.

A job is queued, claimed (running, with its owner process), then finished (done, failed
or aborted). A process that dies leaves `running` jobs behind; the next start requeues or
fails them (`requeue_or_fail_stale_running`). A job whose answer is in the reply outbox
(storage/replies.py) is never run again.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import ColumnElement, func, select, update

from mercury.storage.models import FINAL_JOB_STATUSES, Job, JobStatus, Reply, utcnow
from mercury.storage.session import Store, all_columns, rowcount, to_record, tx

# A job whose process died this many times is failed instead of requeued: a message that
# crashes the host must not crash it forever.
DEFAULT_MAX_ATTEMPTS = 2


@dataclass(frozen=True, slots=True)
class JobRecord:
    id: int
    space_id: str
    message_id: int | None
    status: JobStatus
    attempts: int
    priority: int
    enqueued_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    owner: str | None
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class StaleJobs:
    """What start-up recovery did with the running jobs of a dead process."""

    requeued: list[JobRecord] = field(default_factory=list)
    failed: list[JobRecord] = field(default_factory=list)


class UserJob(NamedTuple):
    """Who asked for a job, where and when: what the rate-limit ledger counts."""

    space_id: str
    user_key: str
    enqueued_at: datetime


async def enqueue_job(
    store: Store,
    space_id: str,
    *,
    payload: dict[str, Any] | None = None,
    message_id: int | None = None,
    priority: int = 0,
) -> JobRecord:
    """Append a job to the space's queue."""
    async with tx(store) as s:
        job = Job(
            space_id=space_id,
            message_id=message_id,
            status=JobStatus.QUEUED,
            attempts=0,
            priority=priority,
            enqueued_at=utcnow(),
            payload=payload or {},
        )
        s.add(job)
        await s.flush()
        return to_record(JobRecord, job)


async def get_job(store: Store, job_id: int) -> JobRecord | None:
    """The job, or None."""
    async with tx(store) as s:
        job = await s.get(Job, job_id, populate_existing=True)
        return None if job is None else to_record(JobRecord, job)


async def list_jobs(
    store: Store,
    *,
    status: JobStatus | Iterable[JobStatus] | None = None,
    space_id: str | None = None,
    limit: int = 100,
) -> list[JobRecord]:
    """Jobs in id (FIFO) order, optionally by status(es) and space."""
    q = select(Job)
    if status is not None:
        statuses = [status] if isinstance(status, JobStatus) else list(status)
        q = q.where(Job.status.in_(statuses))
    if space_id is not None:
        q = q.where(Job.space_id == space_id)
    async with tx(store) as s:
        rows = await s.scalars(q.order_by(Job.id).limit(limit))
        return [to_record(JobRecord, j) for j in rows]


async def count_jobs(store: Store, *, status: JobStatus, space_id: str) -> int:
    """How many of a space's jobs are in `status`, counted by the database (no limit)."""
    q = select(func.count()).select_from(Job).where(Job.status == status, Job.space_id == space_id)
    async with tx(store) as s:
        return int(await s.scalar(q) or 0)


async def user_jobs_since(store: Store, since: datetime) -> list[UserJob]:
    """Every job enqueued at or after `since` that names its user, oldest first, any status.

    The filtering is done by the database (the user key is read out of the JSON payload
    in SQL), so seeding the rate limits at start-up reads only today's rows, not the queue.
    """
    user_key = Job.payload["user_key"].as_string()
    q = (
        select(Job.space_id, user_key, Job.enqueued_at)
        .where(Job.enqueued_at >= since, user_key.is_not(None), user_key != "")
        .order_by(Job.enqueued_at, Job.id)
    )
    async with tx(store) as s:
        rows = await s.execute(q)
        return [UserJob(space, str(key), at) for space, key, at in rows]


async def claim_next_jobs(
    store: Store,
    *,
    owner: str,
    max_total: int,
    busy_spaces: Collection[str] = (),
    now: datetime | None = None,
) -> list[JobRecord]:
    """Mark up to `max_total` queued jobs running for `owner` and return them.

    Per space only the oldest queued job is eligible (FIFO), and only if the space has no
    running job and is not in `busy_spaces`: one job at a time per space. Across spaces,
    higher priority first, then the oldest. A unique partial index backs the one-running
    rule, so this assumes one dispatcher per database (which is how Mercury runs).
    """
    if max_total <= 0:
        return []
    now = now or utcnow()
    running_spaces = select(Job.space_id).where(Job.status == JobStatus.RUNNING)
    heads = select(Job.space_id, func.min(Job.id).label("head_id")).where(
        Job.status == JobStatus.QUEUED, Job.space_id.not_in(running_spaces)
    )
    if busy_spaces:
        heads = heads.where(Job.space_id.not_in(list(busy_spaces)))
    head_ids = heads.group_by(Job.space_id).subquery()
    pick = (
        select(Job.id)
        .join(head_ids, Job.id == head_ids.c.head_id)
        .order_by(Job.priority.desc(), Job.id)
        .limit(max_total)
    )
    claimed: list[JobRecord] = []
    async with tx(store) as s:
        for job_id in list(await s.scalars(pick)):
            stmt = (
                update(Job)
                .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
                .values(
                    status=JobStatus.RUNNING,
                    owner=owner,
                    started_at=now,
                    finished_at=None,
                    attempts=Job.attempts + 1,
                )
                .returning(*all_columns(Job))
            )
            row = (await s.execute(stmt)).one_or_none()
            if row is not None:
                claimed.append(to_record(JobRecord, row))
    return claimed


async def finish_job(
    store: Store, job_id: int, status: JobStatus, error: str | None = None
) -> bool:
    """Move a queued or running job to done/failed/aborted. False if it was already final."""
    status = JobStatus(status)
    if status not in FINAL_JOB_STATUSES:
        raise ValueError(f"finish_job needs a final status, not {status.value!r}")
    async with tx(store) as s:
        result = await s.execute(
            update(Job)
            .where(Job.id == job_id, Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))
            .values(status=status, error=error, finished_at=utcnow())
        )
        return bool(rowcount(result))


async def requeue_job(store: Store, job_id: int, *, not_started: bool = False) -> bool:
    """Put a running job back in the queue at its place (shutdown cut its run short).

    `not_started`: the job was claimed but never run (held back, e.g. low disk), so its
    claim does not count as an attempt.
    """
    values: dict[str, Any] = {
        "status": JobStatus.QUEUED,
        "owner": None,
        "started_at": None,
        "finished_at": None,
    }
    if not_started:
        values["attempts"] = Job.attempts - 1
    async with tx(store) as s:
        result = await s.execute(
            update(Job)
            .where(
                Job.id == job_id,
                Job.status.in_([JobStatus.RUNNING, JobStatus.ABORTED]),
                # Its answer is in the outbox: it is delivered, never run again.
                Job.id.not_in(select(Reply.job_id)),
            )
            .values(**values)
        )
        return bool(rowcount(result))


async def abort_queued_jobs(store: Store, space_id: str, error: str = "aborted") -> int:
    """Abort every job still waiting in a space's queue (/stop); returns how many."""
    async with tx(store) as s:
        result = await s.execute(
            update(Job)
            .where(Job.space_id == space_id, Job.status == JobStatus.QUEUED)
            .values(status=JobStatus.ABORTED, error=error, finished_at=utcnow())
        )
        return rowcount(result)


async def requeue_or_fail_stale_running(
    store: Store, owner: str, *, max_attempts: int = DEFAULT_MAX_ATTEMPTS
) -> StaleJobs:
    """Recover the `running` jobs not owned by `owner` (this process): their process died.

    A job started fewer than `max_attempts` times goes back to the queue, keeping its place;
    otherwise it is failed. Callers tell the chat about both, so nothing is silently lost.
    """
    now = utcnow()
    stale_filter: ColumnElement[bool] = (
        (Job.status == JobStatus.RUNNING)
        & (Job.owner.is_(None) | (Job.owner != owner))
        # A job whose answer is in the outbox is never run again: the outbox delivers it.
        & Job.id.not_in(select(Reply.job_id))
    )
    async with tx(store) as s:
        requeued = (
            await s.execute(
                update(Job)
                .where(stale_filter, Job.attempts < max_attempts)
                .values(status=JobStatus.QUEUED, owner=None, started_at=None)
                .returning(*all_columns(Job))
            )
        ).all()
        failed = (
            await s.execute(
                update(Job)
                .where(stale_filter, Job.attempts >= max_attempts)
                .values(
                    status=JobStatus.FAILED,
                    finished_at=now,
                    error=(
                        "the Mercury process running this job stopped "
                        f"{max_attempts} times; giving up"
                    ),
                )
                .returning(*all_columns(Job))
            )
        ).all()
    return StaleJobs(
        requeued=sorted((to_record(JobRecord, r) for r in requeued), key=lambda j: j.id),
        failed=sorted((to_record(JobRecord, r) for r in failed), key=lambda j: j.id),
    )


__all__ = [
    "DEFAULT_MAX_ATTEMPTS",
    "JobRecord",
    "StaleJobs",
    "UserJob",
    "abort_queued_jobs",
    "claim_next_jobs",
    "enqueue_job",
    "finish_job",
    "get_job",
    "list_jobs",
    "requeue_job",
    "requeue_or_fail_stale_running",
    "user_jobs_since",
]
