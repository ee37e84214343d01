"""Messages, one aggregate: a space's history, stored once per platform message id."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from mercury.storage.errors import DuplicateMessage
from mercury.storage.models import Message, MessageRole, Space, utcnow
from mercury.storage.session import Store, all_columns, conflict_insert, to_record, tx


@dataclass(frozen=True, slots=True)
class MessageRecord:
    id: int
    space_id: str
    conversation_id: int | None
    platform: str
    platform_message_id: str | None
    role: MessageRole
    author_id: str | None
    author_name: str | None
    text: str
    attachments: list[Any]
    is_bot: bool
    created_at: datetime


async def add_message(
    store: Store,
    *,
    space_id: str,
    platform: str,
    role: MessageRole,
    text: str,
    platform_message_id: str | None = None,
    conversation_id: int | None = None,
    author_id: str | None = None,
    author_name: str | None = None,
    attachments: list[Any] | None = None,
    is_bot: bool = False,
    created_at: datetime | None = None,
) -> MessageRecord:
    """Store a message. Raises DuplicateMessage if this platform message id is already stored."""
    values = {
        "space_id": space_id,
        "platform": platform,
        "platform_message_id": platform_message_id,
        "conversation_id": conversation_id,
        "role": MessageRole(role),
        "author_id": author_id,
        "author_name": author_name,
        "text": text,
        "attachments": attachments or [],
        "is_bot": is_bot,
        "created_at": created_at or utcnow(),
    }
    async with tx(store) as s:
        stmt = conflict_insert(s, Message).values(**values)
        if platform_message_id is not None:
            # Must name the partial unique index exactly, WHERE clause included.
            stmt = stmt.on_conflict_do_nothing(
                index_elements=["platform", "platform_message_id"],
                index_where=Message.platform_message_id.is_not(None),
            )
        row = (await s.execute(stmt.returning(*all_columns(Message)))).one_or_none()
        if row is None:
            assert platform_message_id is not None
            raise DuplicateMessage(platform, platform_message_id)
        return to_record(MessageRecord, row)


async def has_message(store: Store, platform: str, platform_message_id: str) -> bool:
    """True if this platform message id is already stored."""
    async with tx(store) as s:
        found = await s.scalar(
            select(Message.id).where(
                Message.platform == platform, Message.platform_message_id == platform_message_id
            )
        )
        return found is not None


async def recent_messages(
    store: Store,
    space_id: str,
    limit: int = 50,
    since: datetime | None = None,
    *,
    include_before_reset: bool = False,
    roles: Collection[MessageRole] | None = None,
    answering: int | None = None,
) -> list[MessageRecord]:
    """The last `limit` messages of a space, oldest first, newer than `since`.

    Messages from before the space's last /reset are left out unless include_before_reset.
    `roles`: only messages with one of these roles (a run's history names the roles it
    takes, so a refused message, or any role added later, stays out unless asked for).
    `answering`: the history of the run that answers message id `answering` ends there:
    any later message is left out, except the bot's own replies. Ids grow in arrival
    order, and a space's jobs run one at a time in FIFO order, so every reply that exists
    when the run starts answers an earlier message; anything else newer is the future.
    The filters are in the query, not applied afterwards, so that `limit` counts only
    messages that are kept (a flood of refused messages cannot push the real ones out).
    """
    async with tx(store) as s:
        cutoff = since
        if not include_before_reset:
            reset_at = await s.scalar(select(Space.context_reset_at).where(Space.id == space_id))
            if reset_at is not None and (cutoff is None or reset_at > cutoff):
                cutoff = reset_at
        q = select(Message).where(Message.space_id == space_id)
        if roles is not None:
            q = q.where(Message.role.in_(list(roles)))
        if answering is not None:
            q = q.where((Message.id <= answering) | (Message.role == MessageRole.ASSISTANT))
        if cutoff is not None:
            q = q.where(Message.created_at >= cutoff)
        q = q.order_by(Message.created_at.desc(), Message.id.desc()).limit(limit)
        rows = list(await s.scalars(q))
        return [to_record(MessageRecord, m) for m in reversed(rows)]


__all__ = ["MessageRecord", "add_message", "has_message", "recent_messages"]
