"""A worker's chat connections, through the database: what it sends, the gateway sends.

A worker (`mercury worker`, docs/scale-out.md) has no platform connections: the gateway
holds them. The run executor, the scheduler's task hook and the recovery notices still
talk to an `Adapter` per platform; on a worker that adapter is a `RelayAdapter`, which
stores each message in the `notices` table (storage/notices.py) for the gateway's
delivery loop (pipeline/delivery.py). A job's own answer never comes here: it is already
in the reply outbox, and the gateway delivers it from there.

What is not relayed, on purpose: the typing indicator and the "still working" status
(refreshed every few seconds, worth nothing once late) and the streamed preview (the
executor turns it off on workers; docs/scale-out.md says so).
"""

from __future__ import annotations

from aiohttp.web import AbstractRouteDef

from mercury.adapters.base import AdapterState, InboundSink
from mercury.core.messages import Attachment, ConversationRef, Reply, SentMessage
from mercury.logging import get_logger
from mercury.pipeline.outbox import reply_payload, until_stored
from mercury.storage import Database
from mercury.storage.notices import add_notice

log = get_logger("mercury.relay")


class RelayAdapter:
    """An `Adapter` whose `send` stores the message for the gateway to send."""

    def __init__(self, platform: str, db: Database) -> None:
        self.platform = platform
        self.db = db

    @property
    def state(self) -> AdapterState:
        return AdapterState(connected=True)

    @property
    def bot_handles(self) -> tuple[str, ...]:
        return ()

    def routes(self) -> list[AbstractRouteDef]:
        return []

    async def start(self, sink: InboundSink) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def send(self, reply: Reply) -> SentMessage:
        """Stored (retried until it is), then the gateway sends it; no files (a notice
        has none: a job's files travel with its reply in the outbox)."""
        if reply.files:
            log.warning("a relayed notice's files are left out", count=len(reply.files))
        payload = reply_payload(reply.conversation, reply.text, [], reply.reply_to)
        await until_stored(lambda: add_notice(self.db, space_id=None, payload=payload), "notice")
        return SentMessage()

    async def send_status(self, conversation: ConversationRef, text: str) -> SentMessage:
        return SentMessage()  # not relayed: stale within seconds

    async def set_typing(self, conversation: ConversationRef) -> None:
        return None  # not relayed: stale within seconds

    async def edit(self, conversation: ConversationRef, message_id: str, text: str) -> None:
        return None  # only a status or preview is edited, and neither is relayed

    async def delete(self, conversation: ConversationRef, message_id: str) -> None:
        return None

    async def download(self, attachment: Attachment, max_bytes: int) -> bytes:
        # Attachments are saved into the space by the gateway when the message arrives.
        raise ValueError("a worker downloads nothing: the gateway saved the attachments")


def relay_adapters(platforms: list[str], db: Database) -> dict[str, RelayAdapter]:
    """A relay per enabled platform (`adapters.registry.enabled_platforms`)."""
    return {name: RelayAdapter(name, db) for name in platforms}


__all__ = ["RelayAdapter", "relay_adapters"]
