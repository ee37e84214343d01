"""Running jobs seen and steered from another process: stop requests and the live list.

With a gateway and workers (docs/scale-out.md) the process that hears /stop (or the
dashboard's stop button) is not the one running the job, and the dashboard's "running
now" is every worker's. The gateway marks the space's running job
(`request_abort`); the worker holding it finds the mark (`abort_requests`, polled) and
stops its container. A claim clears the mark (storage/jobs.py), so a job requeued after
a stop request starts clean.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update

from mercury.storage.models import Job, JobStatus, utcnow
from mercury.storage.session import Store, rowcount, tx


@dataclass(frozen=True, slots=True)
class RunningJob:
    """A job some process runs now: which, where, by whom, since when."""

    id: int
    space_id: str
    owner: str | None
    started_at: datetime | None
    abort_requested: bool


async def request_abort(store: Store, space_id: str) -> bool:
    """Ask whoever runs the space's job to stop it; False when none runs."""
    async with tx(store) as s:
        result = await s.execute(
            update(Job)
            .where(Job.space_id == space_id, Job.status == JobStatus.RUNNING)
            .values(abort_requested_at=utcnow())
        )
        return bool(rowcount(result))


async def abort_requests(store: Store, owner: str) -> list[tuple[int, str]]:
    """(job id, space id) of `owner`'s running jobs someone asked to stop."""
    async with tx(store) as s:
        rows = await s.execute(
            select(Job.id, Job.space_id).where(
                Job.owner == owner,
                Job.status == JobStatus.RUNNING,
                Job.abort_requested_at.is_not(None),
            )
        )
        return [(int(r.id), str(r.space_id)) for r in rows]


async def running_jobs(store: Store, limit: int = 500) -> list[RunningJob]:
    """Every running job, whichever process runs it, oldest first."""
    async with tx(store) as s:
        rows = await s.execute(
            select(Job.id, Job.space_id, Job.owner, Job.started_at, Job.abort_requested_at)
            .where(Job.status == JobStatus.RUNNING)
            .order_by(Job.started_at, Job.id)
            .limit(limit)
        )
        return [
            RunningJob(
                id=int(r.id),
                space_id=str(r.space_id),
                owner=r.owner,
                started_at=r.started_at,
                abort_requested=r.abort_requested_at is not None,
            )
            for r in rows
        ]


__all__ = ["RunningJob", "abort_requests", "request_abort", "running_jobs"]
