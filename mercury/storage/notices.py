"""Notices, one aggregate: what a worker would have sent itself, for the gateway to send.

With a gateway and workers (docs/scale-out.md) a worker has no chat connections. A job's
answer already waits in the reply outbox (storage/replies.py); everything else a run sends
(an interim message through the host API, the "disk is full" notice, a budget heads-up, a
task's report, the notice that a job was given up) is stored here and delivered by the
gateway with the replies' life: `pending -> sending -> sent | failed`. `mark_sending` is
a compare-and-set, so two gateways never both send one notice; one left `sending` by a
dead gateway is not sent again (the platform may have it).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update

from mercury.storage.models import Notice, ReplyStatus, utcnow
from mercury.storage.outbox_state import refused, start_sending
from mercury.storage.session import Store, all_columns, to_record, tx


@dataclass(frozen=True, slots=True)
class NoticeRecord:
    id: int
    space_id: str | None
    status: ReplyStatus
    attempts: int
    payload: dict[str, Any]
    created_at: datetime
    sent_at: datetime | None
    error: str | None

    @property
    def job_id(self) -> None:
        """A notice belongs to no job (the outbox's files folder is per job)."""
        return None


async def add_notice(
    store: Store, *, space_id: str | None, payload: dict[str, Any]
) -> NoticeRecord:
    """Store a message for the gateway to send (the reply outbox's payload format)."""
    async with tx(store) as s:
        row = Notice(
            space_id=space_id,
            status=ReplyStatus.PENDING,
            attempts=0,
            payload=payload,
            created_at=utcnow(),
        )
        s.add(row)
        await s.flush()
        return to_record(NoticeRecord, row)


async def pending_notices(
    store: Store, *, skip: Collection[int] = (), limit: int = 500
) -> list[NoticeRecord]:
    """Pending notices, oldest first, without those in `skip` (being sent already)."""
    async with tx(store) as s:
        query = select(*all_columns(Notice)).where(Notice.status == ReplyStatus.PENDING)
        if skip:
            query = query.where(Notice.id.not_in(list(skip)))
        rows = await s.execute(query.order_by(Notice.id).limit(limit))
        return [to_record(NoticeRecord, r) for r in rows]


async def unfinished_notices(store: Store) -> list[NoticeRecord]:
    """Notices not yet known to be out (pending or sending), oldest first."""
    async with tx(store) as s:
        rows = await s.execute(
            select(*all_columns(Notice))
            .where(Notice.status.in_([ReplyStatus.PENDING, ReplyStatus.SENDING]))
            .order_by(Notice.id)
        )
        return [to_record(NoticeRecord, r) for r in rows]


async def mark_sending(store: Store, notice_id: int) -> bool:
    """pending -> sending, before the platform call. False if it is not pending any more."""
    return await start_sending(store, Notice, notice_id)


async def back_to_pending(store: Store, notice_id: int, error: str) -> None:
    """sending -> pending: the platform refused the send, so it is known not to be out."""
    await refused(store, Notice, notice_id, error)


async def mark_sent(store: Store, notice_id: int, *, note: str | None = None) -> None:
    async with tx(store) as s:
        await s.execute(
            update(Notice)
            .where(Notice.id == notice_id)
            .values(status=ReplyStatus.SENT, error=note, sent_at=utcnow())
        )


async def mark_failed(store: Store, notice_id: int, error: str) -> None:
    async with tx(store) as s:
        await s.execute(
            update(Notice)
            .where(Notice.id == notice_id)
            .values(status=ReplyStatus.FAILED, error=error[:2000])
        )


__all__ = [
    "NoticeRecord",
    "add_notice",
    "back_to_pending",
    "mark_failed",
    "mark_sending",
    "mark_sent",
    "pending_notices",
    "unfinished_notices",
]
