"""Read-only views of spaces for the dashboard's Spaces pages: bounded, paged queries.

Why its own module: the Spaces list needs, per space, facts that live in other tables
(its latest message, how many messages and linked chats it has), and a space's page reads
its conversation backwards a page at a time. Each query here asks the database for one
page (LIMIT/OFFSET over at most a few hundred spaces, or a keyset `id < before` over a
space's messages, which the (space_id, created_at) index serves), so a page answers fast
with 10,000 runs and 100 spaces; nothing loads a whole table.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any

from sqlalchemy import case, func, select

from mercury.storage.conversations import ConversationRecord
from mercury.storage.messages import MessageRecord
from mercury.storage.models import Conversation, Message, Space
from mercury.storage.session import Store, aggregate_time, to_record, tx
from mercury.storage.spaces import SpaceRecord

MAX_PAGE = 200  # rows one call returns at most, whatever the caller asks


@dataclass(frozen=True, slots=True)
class SpaceSummary:
    """A row of the Spaces list: the space, its linked chats and messages, its last word."""

    space: SpaceRecord
    conversations: int
    messages: int
    last_activity: datetime | None


@dataclass(frozen=True, slots=True)
class SpacesPage:
    """One page of spaces, most recently active first, and how many spaces there are."""

    items: list[SpaceSummary]
    total: int
    offset: int
    limit: int

    @property
    def has_next(self) -> bool:
        return self.offset + len(self.items) < self.total


@dataclass(frozen=True, slots=True)
class ConversationPage:
    """Messages of a space, oldest first; `older` is the `before` cursor of the page
    before this one (None: this page starts at the space's first message)."""

    messages: list[MessageRecord]
    older: int | None


def attachment_names(attachments: list[Any]) -> list[str]:
    """The file names to show for a message's stored attachments.

    The pipeline stores paths under /space (`inbox/00-report.pdf`) or plain names; older
    rows may hold objects with a `name`. Only the last path component is shown.
    """
    names: list[str] = []
    for item in attachments or []:
        raw = item.get("name") if isinstance(item, dict) else item
        if isinstance(raw, str) and raw.strip():
            names.append(PurePosixPath(raw.replace("\\", "/")).name or raw)
    return names


def _clamp(limit: int) -> int:
    return max(1, min(limit, MAX_PAGE))


async def space_summaries(store: Store, *, offset: int = 0, limit: int = 50) -> SpacesPage:
    """A page of spaces, newest activity first (spaces without messages last, by id).

    The three per-space facts are correlated subqueries, each answered from an index
    (messages by space and time, conversations by space), for only the spaces sorted.
    """
    limit = _clamp(limit)
    offset = max(0, offset)
    latest = (
        select(func.max(Message.created_at))
        .where(Message.space_id == Space.id)
        .correlate(Space)
        .scalar_subquery()
        .label("latest")
    )
    n_messages = (
        select(func.count())
        .where(Message.space_id == Space.id)
        .correlate(Space)
        .scalar_subquery()
        .label("n_messages")
    )
    n_convs = (
        select(func.count(Conversation.id))
        .where(Conversation.space_id == Space.id)
        .correlate(Space)
        .scalar_subquery()
        .label("n_convs")
    )
    q = (
        select(Space, latest, n_messages, n_convs)
        .order_by(case((latest.is_(None), 1), else_=0), latest.desc(), Space.id)
        .offset(offset)
        .limit(limit)
    )
    async with tx(store) as s:
        total = int(await s.scalar(select(func.count()).select_from(Space)) or 0)
        rows = (await s.execute(q)).all()
    items = [
        SpaceSummary(
            space=to_record(SpaceRecord, row[0]),
            conversations=int(row.n_convs or 0),
            messages=int(row.n_messages or 0),
            last_activity=aggregate_time(row.latest),
        )
        for row in rows
    ]
    return SpacesPage(items=items, total=total, offset=offset, limit=limit)


async def conversation_page(
    store: Store, space_id: str, *, before: int | None = None, limit: int = 50
) -> ConversationPage:
    """Up to `limit` messages of a space with ids below `before` (all: the newest ones),
    oldest first, every role included (refused and overheard messages too: the operator
    sees what arrived). Messages from before a /reset are shown as well."""
    limit = _clamp(limit)
    q = select(Message).where(Message.space_id == space_id)
    if before is not None:
        q = q.where(Message.id < before)
    q = q.order_by(Message.id.desc()).limit(limit + 1)
    async with tx(store) as s:
        rows = list(await s.scalars(q))
    more = len(rows) > limit
    rows = rows[:limit]
    messages = [to_record(MessageRecord, m) for m in reversed(rows)]
    return ConversationPage(messages=messages, older=messages[0].id if more else None)


async def linked_conversations(
    store: Store, space_id: str, *, limit: int = MAX_PAGE
) -> list[ConversationRecord]:
    """The platform chats linked to a space, by platform and chat id (at most `limit`)."""
    q = (
        select(Conversation)
        .where(Conversation.space_id == space_id)
        .order_by(Conversation.platform, Conversation.chat_id)
        .limit(_clamp(limit))
    )
    async with tx(store) as s:
        return [to_record(ConversationRecord, c) for c in await s.scalars(q)]


__all__ = [
    "MAX_PAGE",
    "ConversationPage",
    "SpaceSummary",
    "SpacesPage",
    "attachment_names",
    "conversation_page",
    "linked_conversations",
    "space_summaries",
]
