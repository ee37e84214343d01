"""The reply outbox, one aggregate: a job's answer is stored, then sent, then marked sent.

The life of a reply and why each step is its own write::

    add_reply        (with the run record and the history message, in one transaction)
    mark_sending     committed before the platform call
    mark_sent        committed after it, in the same transaction that finishes the job

A process that dies before `mark_sending` leaves a `pending` reply: it is delivered at the
next start. One that dies after it leaves `sending`: the platform may have it already, so
it is not sent again (unless the adapter can repeat a send harmlessly). Either way the job
is never run again: `jobs.requeue_or_fail_stale_running` skips jobs that have a reply.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update

from mercury.storage.models import Job, JobStatus, Reply, ReplyStatus, utcnow
from mercury.storage.outbox_state import refused, start_sending
from mercury.storage.session import Store, all_columns, to_record, tx

# The outcome a reply stands for: the job ends with this status once the reply is out.
FINISHABLE = (JobStatus.QUEUED, JobStatus.RUNNING)


@dataclass(frozen=True, slots=True)
class ReplyRecord:
    id: int
    job_id: int
    space_id: str
    status: ReplyStatus
    job_status: JobStatus
    attempts: int
    payload: dict[str, Any]
    created_at: datetime
    sent_at: datetime | None
    error: str | None


async def add_reply(
    store: Store,
    *,
    job_id: int,
    space_id: str,
    job_status: JobStatus,
    payload: dict[str, Any],
) -> ReplyRecord:
    """Store a job's answer, unsent. A job has at most one reply (unique job_id)."""
    async with tx(store) as s:
        row = Reply(
            job_id=job_id,
            space_id=space_id,
            status=ReplyStatus.PENDING,
            job_status=JobStatus(job_status),
            attempts=0,
            payload=payload,
            created_at=utcnow(),
        )
        s.add(row)
        await s.flush()
        return to_record(ReplyRecord, row)


async def reply_for_job(store: Store, job_id: int) -> ReplyRecord | None:
    """The job's reply, or None: a job with one is delivered from the outbox, not run."""
    async with tx(store) as s:
        row = (
            await s.execute(select(*all_columns(Reply)).where(Reply.job_id == job_id))
        ).one_or_none()
        return None if row is None else to_record(ReplyRecord, row)


async def mark_sending(store: Store, reply_id: int) -> bool:
    """pending -> sending, before the platform call. False if it is not pending any more."""
    return await start_sending(store, Reply, reply_id)


async def back_to_pending(store: Store, reply_id: int, error: str) -> None:
    """sending -> pending: the platform refused the send, so it is known not to be out."""
    await refused(store, Reply, reply_id, error)


async def mark_sent(store: Store, reply_id: int, *, note: str | None = None) -> None:
    """The reply is out: mark it sent and finish its job, in one transaction."""
    await _settle(store, reply_id, ReplyStatus.SENT, note, failed=False)


async def mark_failed(store: Store, reply_id: int, error: str) -> None:
    """The reply could not be delivered: it and its job end failed, with the reason."""
    await _settle(store, reply_id, ReplyStatus.FAILED, error, failed=True)


async def _settle(
    store: Store, reply_id: int, status: ReplyStatus, error: str | None, *, failed: bool
) -> None:
    """Give the reply its final status and end its job with it, in one transaction."""
    async with tx(store) as s:
        reply = await s.get(Reply, reply_id, populate_existing=True)
        if reply is None:
            return
        now = utcnow()
        reply.status = status
        reply.error = error
        job: dict[str, Any] = {"status": reply.job_status, "finished_at": now}
        if failed:
            job.update(
                status=JobStatus.FAILED,
                error=f"the reply could not be delivered: {error}"[:2000],
            )
        else:
            reply.sent_at = now
        await s.execute(
            update(Job).where(Job.id == reply.job_id, Job.status.in_(FINISHABLE)).values(**job)
        )


async def pending_replies(
    store: Store, *, skip: Collection[int] = (), limit: int = 500
) -> list[ReplyRecord]:
    """Pending replies, oldest first, without those in `skip` (being sent already): what
    the gateway's delivery loop picks up (pipeline/delivery.py)."""
    async with tx(store) as s:
        query = select(*all_columns(Reply)).where(Reply.status == ReplyStatus.PENDING)
        if skip:
            query = query.where(Reply.id.not_in(list(skip)))
        rows = await s.execute(query.order_by(Reply.id).limit(limit))
        return [to_record(ReplyRecord, r) for r in rows]


async def unfinished_replies(store: Store) -> list[ReplyRecord]:
    """Replies not yet known to be out (pending or sending), oldest first."""
    async with tx(store) as s:
        rows = await s.execute(
            select(*all_columns(Reply))
            .where(Reply.status.in_([ReplyStatus.PENDING, ReplyStatus.SENDING]))
            .order_by(Reply.id)
        )
        return [to_record(ReplyRecord, r) for r in rows]


__all__ = [
    "ReplyRecord",
    "ReplyStatus",
    "add_reply",
    "back_to_pending",
    "mark_failed",
    "mark_sending",
    "mark_sent",
    "pending_replies",
    "reply_for_job",
    "unfinished_replies",
]
