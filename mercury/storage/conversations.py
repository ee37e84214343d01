"""Conversations, one aggregate: which space answers a platform chat (a chat's link)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select

from mercury.storage.models import Conversation, utcnow
from mercury.storage.session import Store, all_columns, conflict_insert, rowcount, to_record, tx


@dataclass(frozen=True, slots=True)
class ConversationRecord:
    id: int
    space_id: str
    platform: str
    chat_id: str
    thread_id: str | None
    created_at: datetime


async def link_conversation(
    store: Store, platform: str, chat_id: str, space_id: str, *, thread_id: str | None = None
) -> ConversationRecord:
    """Route a platform chat to a space (re-linking it if it pointed elsewhere)."""
    async with tx(store) as s:
        stmt = conflict_insert(s, Conversation).values(
            platform=platform,
            chat_id=chat_id,
            space_id=space_id,
            thread_id=thread_id,
            created_at=utcnow(),
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["platform", "chat_id"],
            set_={"space_id": space_id, "thread_id": thread_id},
        ).returning(*all_columns(Conversation))
        row = (await s.execute(stmt)).one()
        return to_record(ConversationRecord, row)


async def get_conversation(store: Store, platform: str, chat_id: str) -> ConversationRecord | None:
    """The link for this platform chat, or None."""
    async with tx(store) as s:
        conv = await s.scalar(
            select(Conversation).where(
                Conversation.platform == platform, Conversation.chat_id == chat_id
            )
        )
        return None if conv is None else to_record(ConversationRecord, conv)


async def space_for_conversation(store: Store, platform: str, chat_id: str) -> str | None:
    """The id of the space that answers this platform chat, or None if it is not linked."""
    conv = await get_conversation(store, platform, chat_id)
    return None if conv is None else conv.space_id


async def latest_conversation(store: Store, space_id: str) -> ConversationRecord | None:
    """The conversation most recently linked to a space (where its scheduled runs answer)."""
    async with tx(store) as s:
        row = await s.scalar(
            select(Conversation)
            .where(Conversation.space_id == space_id)
            .order_by(Conversation.created_at.desc(), Conversation.id.desc())
            .limit(1)
        )
        return None if row is None else to_record(ConversationRecord, row)


async def get_conversation_by_id(store: Store, conversation_id: int) -> ConversationRecord | None:
    """The conversation with this id, or None (a task remembers where it was set up)."""
    async with tx(store) as s:
        row = await s.get(Conversation, conversation_id)
        return None if row is None else to_record(ConversationRecord, row)


async def unlink_conversation(store: Store, platform: str, chat_id: str) -> bool:
    """Forget a chat's link; True if there was one."""
    async with tx(store) as s:
        result = await s.execute(
            delete(Conversation).where(
                Conversation.platform == platform, Conversation.chat_id == chat_id
            )
        )
        return bool(rowcount(result))


__all__ = [
    "ConversationRecord",
    "get_conversation",
    "get_conversation_by_id",
    "latest_conversation",
    "link_conversation",
    "space_for_conversation",
    "unlink_conversation",
]
