"""Jobs, one aggregate: the persistent queue, claimed FIFO per space, one running per space.

A job is queued, claimed (running, with its owner process and a lease), then finished
(done, failed or aborted). A job whose answer is in the reply outbox (storage/replies.py)
is never run again.

Several processes may claim from one PostgreSQL (issue 18). `claim_next_jobs` takes each
candidate space under a transaction-scoped advisory lock (`pg_try_advisory_xact_lock`,
never waited on: a space another claimer holds is skipped), re-reads inside that lock
that the space has no running job and which job is its head, then locks the head row
with `FOR UPDATE SKIP LOCKED`. So two claimers never wait on or take the same job, and the
unique partial index on running jobs per space is never hit as an error. SQLite serves
one process (mercury/app.py refuses a second), so there the locks are not needed.

Leases, not owners: a claim sets `lease_until = now + lease`; the running process renews
it (`renew_leases`). A job whose lease ran out (its process was killed, its machine went
away) is requeued once, then failed, by any live process (`requeue_or_fail_expired`),
which at start also recovers at once the jobs of owners that are not live processes
(`live_owners`, decided in core/peers.py: a restart must not wait a lease). A job claimed
before leases existed (NULL) counts as expired.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import ColumnElement, func, select, true, update
from sqlalchemy.ext.asyncio import AsyncSession

from mercury.storage.models import FINAL_JOB_STATUSES, Job, JobStatus, Reply, utcnow
from mercury.storage.session import Store, all_columns, rowcount, to_record, tx

# A job whose process died this many times is failed instead of requeued: a message that
# crashes the host must not crash it forever.
DEFAULT_MAX_ATTEMPTS = 2
# How long a claim holds a running job unless renewed (the dispatcher renews every third).
DEFAULT_LEASE = timedelta(seconds=60)
# The first key of pg_try_advisory_xact_lock(int, int) for "claiming in this space" (the
# second is hashtext(space_id)); the two-key space never meets single-key advisory locks.
CLAIM_LOCK_CLASS = 0x4D4A  # "MJ"
# Candidates read beyond max_total on PostgreSQL: some are skipped (held by another claimer).
CLAIM_SLACK = 8


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
    lease_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class StaleJobs:
    """What recovery did with running jobs of a dead process or with an expired lease."""

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


def _heads(busy_spaces: Collection[str], limit: int) -> Any:
    """(space_id, head id) of each space with queued jobs and nothing running, best first:
    per space only the oldest queued job, across spaces higher priority, then the oldest."""
    running_spaces = select(Job.space_id).where(Job.status == JobStatus.RUNNING)
    heads = select(Job.space_id, func.min(Job.id).label("head_id")).where(
        Job.status == JobStatus.QUEUED, Job.space_id.not_in(running_spaces)
    )
    if busy_spaces:
        heads = heads.where(Job.space_id.not_in(list(busy_spaces)))
    head_ids = heads.group_by(Job.space_id).subquery()
    return (
        select(Job.space_id, Job.id)
        .join(head_ids, Job.id == head_ids.c.head_id)
        .order_by(Job.priority.desc(), Job.id)
        .limit(limit)
    )


async def _take_space_head(s: AsyncSession, space_id: str) -> int | None:
    """PostgreSQL: the space's head job, locked for this transaction, or None to skip it.

    Skipped (never waited on) when another claimer holds the space's advisory lock, when
    the space has a running job after all (read now, inside the lock, so a claim committed
    since the candidates were read is seen), or when the head row is locked (e.g. a /stop
    aborting it): taking the job behind it would break FIFO order."""
    got = await s.scalar(
        select(func.pg_try_advisory_xact_lock(CLAIM_LOCK_CLASS, func.hashtext(space_id)))
    )
    if not got:
        return None
    running = await s.scalar(
        select(Job.id).where(Job.space_id == space_id, Job.status == JobStatus.RUNNING).limit(1)
    )
    if running is not None:
        return None
    head = await s.scalar(
        select(func.min(Job.id)).where(Job.space_id == space_id, Job.status == JobStatus.QUEUED)
    )
    if head is None:
        return None
    locked: int | None = await s.scalar(
        select(Job.id)
        .where(Job.id == head, Job.status == JobStatus.QUEUED)
        .with_for_update(skip_locked=True)
    )
    return locked


async def claim_next_jobs(
    store: Store,
    *,
    owner: str,
    max_total: int,
    busy_spaces: Collection[str] = (),
    now: datetime | None = None,
    lease: timedelta = DEFAULT_LEASE,
) -> list[JobRecord]:
    """Mark up to `max_total` queued jobs running for `owner` and return them.

    Per space only the oldest queued job is eligible (FIFO), and only if the space has no
    running job and is not in `busy_spaces`: one job at a time per space, across every
    process. Across spaces, higher priority first, then the oldest. Each claim counts an
    attempt and holds the job until `now + lease` (`renew_leases` extends it). Safe with
    any number of concurrent claimers on PostgreSQL (see the module docstring).
    """
    if max_total <= 0:
        return []
    now = now or utcnow()
    claimed: list[JobRecord] = []
    async with tx(store) as s:
        concurrent = s.get_bind().dialect.name == "postgresql"
        limit = max_total + CLAIM_SLACK if concurrent else max_total
        candidates = list(await s.execute(_heads(busy_spaces, limit)))
        for space_id, head_id in candidates:
            if len(claimed) >= max_total:
                break
            job_id = await _take_space_head(s, space_id) if concurrent else head_id
            if job_id is None:
                continue
            stmt = (
                update(Job)
                .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
                .values(
                    status=JobStatus.RUNNING,
                    owner=owner,
                    started_at=now,
                    finished_at=None,
                    attempts=Job.attempts + 1,
                    lease_until=now + lease,
                    abort_requested_at=None,
                )
                .returning(*all_columns(Job))
            )
            row = (await s.execute(stmt)).one_or_none()
            if row is not None:
                claimed.append(to_record(JobRecord, row))
    return claimed


async def renew_leases(
    store: Store, owner: str, job_ids: Collection[int], until: datetime
) -> set[int]:
    """Extend `owner`'s lease on its running jobs to `until`; the ids it still holds.

    A job missing from the answer is no longer `owner`'s: finished (e.g. by the outbox
    with its reply), or requeued by another process after the lease ran out and maybe
    running there now. Its run here must not finish or requeue it (`owner=` on those)."""
    if not job_ids:
        return set()
    async with tx(store) as s:
        rows = await s.scalars(
            update(Job)
            .where(
                Job.id.in_(list(job_ids)),
                Job.owner == owner,
                Job.status == JobStatus.RUNNING,
            )
            .values(lease_until=until)
            .returning(Job.id)
        )
        return set(rows)


async def finish_job(
    store: Store,
    job_id: int,
    status: JobStatus,
    error: str | None = None,
    *,
    owner: str | None = None,
) -> bool:
    """Move a queued or running job to done/failed/aborted. False if it was already final.

    `owner`: only while the job runs for that process; False once it was taken away
    (requeued after its lease ran out), so a late run never ends another process's run."""
    status = JobStatus(status)
    if status not in FINAL_JOB_STATUSES:
        raise ValueError(f"finish_job needs a final status, not {status.value!r}")
    mine: ColumnElement[bool] = (
        Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING])
        if owner is None
        else (Job.status == JobStatus.RUNNING) & (Job.owner == owner)
    )
    async with tx(store) as s:
        result = await s.execute(
            update(Job)
            .where(Job.id == job_id, mine)
            .values(status=status, error=error, finished_at=utcnow(), lease_until=None)
        )
        return bool(rowcount(result))


async def requeue_job(
    store: Store, job_id: int, *, not_started: bool = False, owner: str | None = None
) -> bool:
    """Put a running job back in the queue at its place (shutdown cut its run short).

    `not_started`: the job was claimed but never run (held back, e.g. low disk), so its
    claim does not count as an attempt. `owner`: only if that process still holds it.
    """
    values: dict[str, Any] = {
        "status": JobStatus.QUEUED,
        "owner": None,
        "started_at": None,
        "finished_at": None,
        "lease_until": None,
    }
    if not_started:
        values["attempts"] = Job.attempts - 1
    held = true() if owner is None else (Job.owner == owner)
    async with tx(store) as s:
        result = await s.execute(
            update(Job)
            .where(
                Job.id == job_id,
                Job.status.in_([JobStatus.RUNNING, JobStatus.ABORTED]),
                held,
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


async def _requeue_or_fail(
    store: Store, which: ColumnElement[bool], now: datetime, max_attempts: int
) -> StaleJobs:
    """Requeue (fewer than `max_attempts` starts, keeping its place) or fail each running
    job matching `which`; never one whose answer is in the outbox (the outbox delivers it).

    On PostgreSQL two processes recovering at once take each job once: the UPDATE re-reads
    a row another transaction changed (READ COMMITTED) and skips it if no longer running."""
    stale_filter: ColumnElement[bool] = (
        (Job.status == JobStatus.RUNNING) & which & Job.id.not_in(select(Reply.job_id))
    )
    async with tx(store) as s:
        requeued = (
            await s.execute(
                update(Job)
                .where(stale_filter, Job.attempts < max_attempts)
                .values(status=JobStatus.QUEUED, owner=None, started_at=None, lease_until=None)
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
                    lease_until=None,
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


async def requeue_or_fail_expired(
    store: Store,
    now: datetime,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    *,
    live_owners: Collection[str] | None = None,
    exclude_owner: str | None = None,
) -> StaleJobs:
    """Recover running jobs whose lease has expired (or that have none), whoever owns them.

    `live_owners` (start-up): also recover at once, lease or not, every running job whose
    owner is not among these live processes. `exclude_owner`: never this process's own
    jobs (its runs are still going; if it could not renew, another process recovers them).
    Callers tell the chat about the failed ones, so nothing is silently lost.
    """
    which: ColumnElement[bool] = Job.lease_until.is_(None) | (Job.lease_until <= now)
    if live_owners is not None:
        which = which | Job.owner.is_(None) | Job.owner.not_in(list(live_owners))
    if exclude_owner is not None:
        which = which & (Job.owner.is_(None) | (Job.owner != exclude_owner))
    return await _requeue_or_fail(store, which, now, max_attempts)


async def requeue_or_fail_stale_running(
    store: Store, owner: str, *, max_attempts: int = DEFAULT_MAX_ATTEMPTS
) -> StaleJobs:
    """Recover every `running` job not owned by `owner` (this process): one process per
    database, so any other owner is dead. (Several processes use `requeue_or_fail_expired`.)

    A job started fewer than `max_attempts` times goes back to the queue, keeping its place;
    otherwise it is failed. Callers tell the chat about both, so nothing is silently lost.
    """
    which: ColumnElement[bool] = Job.owner.is_(None) | (Job.owner != owner)
    return await _requeue_or_fail(store, which, utcnow(), max_attempts)


__all__ = [
    "CLAIM_LOCK_CLASS",
    "DEFAULT_LEASE",
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
    "renew_leases",
    "requeue_job",
    "requeue_or_fail_expired",
    "requeue_or_fail_stale_running",
    "user_jobs_since",
]
