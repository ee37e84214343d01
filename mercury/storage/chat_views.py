"""Read-only view of one platform's chats for the dashboard's Chat page: a bounded list.

Why its own module: the Chat page lists the web chat's conversations (platform "web":
one chat id per conversation the operator opened at /chat or /dashboard/chat), newest
activity first, with the space each one talks to. The web chat keeps its message log in
memory only, so the database's `conversations` rows (made on a chat's first message) are
the list that survives a restart. One query, correlated subqueries answered from the
index on messages.conversation_id, and a LIMIT: fast with 10,000 runs and 100 spaces.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import case, func, select

from mercury.storage.models import Conversation, Message
from mercury.storage.session import Store, aggregate_time, tx

MAX_CHATS = 200  # rows one call returns at most, whatever the caller asks

__all__ = ["MAX_CHATS", "ChatSummary", "platform_chats"]


@dataclass(frozen=True, slots=True)
class ChatSummary:
    """A row of the Chat page's list: the chat, its space, its messages, its last word."""

    chat_id: str
    space_id: str
    messages: int
    last_activity: datetime | None


async def platform_chats(store: Store, platform: str, *, limit: int = 100) -> list[ChatSummary]:
    """Up to `limit` chats of `platform`, newest message first (chats without one last,
    by chat id). Counts only the messages recorded against the chat itself (the users'),
    not what linked chats of the same space said."""
    limit = max(1, min(limit, MAX_CHATS))
    latest = (
        select(func.max(Message.created_at))
        .where(Message.conversation_id == Conversation.id)
        .correlate(Conversation)
        .scalar_subquery()
        .label("latest")
    )
    count = (
        select(func.count())
        .where(Message.conversation_id == Conversation.id)
        .correlate(Conversation)
        .scalar_subquery()
        .label("n_messages")
    )
    q = (
        select(Conversation.chat_id, Conversation.space_id, latest, count)
        .where(Conversation.platform == platform)
        .order_by(case((latest.is_(None), 1), else_=0), latest.desc(), Conversation.chat_id)
        .limit(limit)
    )
    async with tx(store) as s:
        rows = (await s.execute(q)).all()
    return [
        ChatSummary(
            chat_id=row.chat_id,
            space_id=row.space_id,
            messages=int(row.n_messages or 0),
            last_activity=aggregate_time(row.latest),
        )
        for row in rows
    ]
