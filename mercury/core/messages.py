"""The platform-neutral message types every adapter speaks (plain, immutable data)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path


@dataclass(frozen=True)
class ConversationRef:
    """Where a message came from and where its reply goes."""

    platform: str  # slack | discord | telegram | web
    chat_id: str  # channel, DM, group or web session
    thread_id: str | None = None  # platform thread, when the platform has threads


@dataclass(frozen=True)
class Attachment:
    """A file a user sent. Adapters fill what the platform tells; the pipeline downloads."""

    name: str
    size: int | None = None
    content_type: str | None = None
    # Platform-specific handle the adapter's download() understands (URL, file id, ...).
    ref: str | None = None


@dataclass(frozen=True)
class InboundMessage:
    """One message as an adapter delivers it. `author_id` is the platform's own user id,
    without a platform prefix: "platform:author_id" is the key of roles and limits."""

    platform: str
    platform_message_id: str
    conversation: ConversationRef
    author_id: str
    author_name: str
    text: str
    ts: datetime
    mentions_bot: bool = False
    is_dm: bool = False
    reply_to_bot: bool = False
    # A message from a bot (including ours): stored as context, never triggers a run.
    from_bot: bool = False
    attachments: tuple[Attachment, ...] = ()
    # The author proved to be the operator of this Mercury (the web chat: the dashboard
    # password). Set only by an adapter that checked it; the pipeline makes them an admin.
    from_operator: bool = False


@dataclass(frozen=True)
class OutboundFile:
    path: Path  # on the host (the space's outbox)
    name: str


@dataclass(frozen=True)
class Reply:
    conversation: ConversationRef
    text: str
    files: tuple[OutboundFile, ...] = ()
    # The platform message this answers (Slack/Discord/Telegram reply or thread anchor).
    reply_to: str | None = None
    # A streamed answer's preview (pipeline/preview.py): edited as the model writes and
    # deleted once the reply is out. Chat platforms show it as a plain message; the web
    # chat marks it, so its pages and API clients can tell it from a reply.
    preview: bool = False


@dataclass(frozen=True)
class SentMessage:
    """What an adapter reports after sending: ids it may need to edit or delete later."""

    platform_message_ids: tuple[str, ...] = field(default_factory=tuple)
