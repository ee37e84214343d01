"""The gateway's delivery loop: the answers and notices workers stored, sent once, in order.

With a gateway and workers (docs/scale-out.md) a worker stores a job's answer in the
reply outbox (storage/replies.py) in the transaction that records its run, and anything
else it would say in `notices` (pipeline/relay.py). The gateway, which holds the chat
connections, polls both every `workers.poll` and sends each through the same
`ReplyOutbox.deliver` a single process uses: `pending -> sending` is a compare-and-set
before the platform call and `sent` is written after it, so a reply goes out once even
when the gateway restarts between a run's end and the send (a `pending` reply is sent by
the next gateway; one left `sending` is settled as probably out, never sent twice).

Order: per conversation, items are sent one after another in the order they were
stored; a worker finishes a space's job only after its reply is stored and the next job
of the space starts only then, so a space's replies reach its chat in message order.
Conversations are served side by side (`parallel` at once).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

from mercury.logging import get_logger
from mercury.pipeline.background import BackgroundTask, every
from mercury.pipeline.outbox import Outgoing, ReplyOutbox, until_stored
from mercury.storage import Database, ReplyStatus, notices, replies
from mercury.storage.notices import NoticeRecord

log = get_logger("mercury.delivery")

# Conversations sent to at once; each sends its items one after another.
PARALLEL = 32
# How long a stopping gateway lets the sends under way finish.
STOP_GRACE_S = 10.0
UNCONFIRMED = "unconfirmed: the gateway stopped during the send"


def _conversation(item: Outgoing) -> tuple[str, str, str]:
    p = item.payload
    return (str(p.get("platform")), str(p.get("chat_id")), str(p.get("thread_id") or ""))


def _key(item: Outgoing) -> tuple[str, int]:
    return ("notice" if isinstance(item, NoticeRecord) else "reply", item.id)


class GatewayDelivery:
    """Polls the reply outbox and the notices; sends each item through the outbox."""

    def __init__(
        self, db: Database, outbox: ReplyOutbox, *, poll: float, parallel: int = PARALLEL
    ) -> None:
        self.db = db
        self.outbox = outbox
        self.poll = poll
        self._slots = asyncio.Semaphore(parallel)
        self._queues: dict[tuple[str, str, str], deque[Outgoing]] = {}
        self._senders: dict[tuple[str, str, str], asyncio.Task[None]] = {}
        self._taken: set[tuple[str, int]] = set()  # queued or being sent
        self._task = BackgroundTask()
        self._stopping = False

    def start(self) -> None:
        self._task.start(self._loop(), name="delivery")

    async def stop(self, grace: float = STOP_GRACE_S) -> None:
        """Look no more; let each conversation finish the item it is sending (up to
        `grace`), so a clean restart leaves nothing `sending`: what was not started stays
        `pending` and the next gateway sends it once. Only a send still going after
        `grace` is cut (and then settled, not resent, at the next start)."""
        await self._task.stop()
        self._stopping = True
        senders = list(self._senders.values())
        if senders:
            await asyncio.wait(senders, timeout=grace)
        for task in senders:
            task.cancel()
        for task in senders:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._senders.clear()

    async def _loop(self) -> None:
        await self._settle_unconfirmed()
        await every(self.poll, self.round, what="delivery reading the outbox")

    async def _settle_unconfirmed(self) -> None:
        """At start: what a dead gateway was sending may be out; it is not sent again."""
        left: list[Outgoing] = [
            *await until_stored(lambda: replies.unfinished_replies(self.db), "outbox read"),
            *await until_stored(lambda: notices.unfinished_notices(self.db), "notices read"),
        ]
        for item in left:
            if item.status is ReplyStatus.SENDING:
                log.warning(
                    "a reply was being sent when the gateway stopped; not sending it again",
                    job_id=item.job_id,
                    platform=item.payload.get("platform"),
                )
                await self.outbox.settle(item, UNCONFIRMED)

    async def round(self) -> int:
        """One look at the outbox: queue what is new; how many items were queued."""
        skip_r = [i for kind, i in self._taken if kind == "reply"]
        skip_n = [i for kind, i in self._taken if kind == "notice"]
        found: list[Outgoing] = [
            *await replies.pending_replies(self.db, skip=skip_r),
            *await notices.pending_notices(self.db, skip=skip_n),
        ]
        found.sort(key=lambda item: (item.created_at, _key(item)))
        for item in found:
            self._taken.add(_key(item))
            conv = _conversation(item)
            self._queues.setdefault(conv, deque()).append(item)
            if conv not in self._senders:
                self._senders[conv] = asyncio.get_running_loop().create_task(self._send(conv))
        return len(found)

    async def _send(self, conv: tuple[str, str, str]) -> None:
        queue = self._queues[conv]
        try:
            while queue and not self._stopping:
                item = queue[0]
                async with self._slots:
                    try:
                        await self.outbox.deliver(item)
                    except asyncio.CancelledError:
                        raise
                    except Exception:
                        # Left pending (or sending) in the database: a later round or the
                        # next start settles it.
                        log.exception("delivering a stored reply failed", job_id=item.job_id)
                queue.popleft()
                self._taken.discard(_key(item))
        finally:
            if not queue:
                self._queues.pop(conv, None)
            self._senders.pop(conv, None)


__all__ = ["GatewayDelivery"]
