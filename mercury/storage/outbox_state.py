"""The send-state steps replies and notices share (pending -> sending -> pending).

Both tables are outboxes read by pipeline/outbox.py: a row is marked `sending` before
the platform call (so a crash mid-call is never sent twice) and goes back to `pending`
only when the platform refused it (so it is known not to be out). Each aggregate's own
module (replies.py, notices.py) keeps its public functions and its final steps; these
two compare-and-set updates are written once here.
"""

from __future__ import annotations

from sqlalchemy import update

from mercury.storage.models import Notice, Reply, ReplyStatus
from mercury.storage.session import Store, rowcount, tx

OutboxTable = type[Reply] | type[Notice]


async def start_sending(store: Store, table: OutboxTable, row_id: int) -> bool:
    """pending -> sending, before the platform call. False if it is not pending any more."""
    async with tx(store) as s:
        result = await s.execute(
            update(table)
            .where(table.id == row_id, table.status == ReplyStatus.PENDING)
            .values(status=ReplyStatus.SENDING, attempts=table.attempts + 1)
        )
        return bool(rowcount(result))


async def refused(store: Store, table: OutboxTable, row_id: int, error: str) -> None:
    """sending -> pending: the platform refused the send, so it is known not to be out."""
    async with tx(store) as s:
        await s.execute(
            update(table)
            .where(table.id == row_id, table.status == ReplyStatus.SENDING)
            .values(status=ReplyStatus.PENDING, error=error)
        )


__all__ = ["OutboxTable", "refused", "start_sending"]
