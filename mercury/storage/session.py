"""The plumbing every aggregate module of `mercury.storage` shares; nothing outside it uses this.

Every storage function takes a `Store` first: either a `Database`, and then it runs in its
own transaction, or an `AsyncSession` the caller opened with `db.transaction()`, so that
several calls commit together (e.g. store a message and enqueue its job atomically)::

    async with db.transaction() as s:
        msg = await messages.add_message(s, ...)
        await jobs.enqueue_job(s, msg.space_id, message_id=msg.id, payload=...)

Results are small frozen dataclasses (`to_record`), safe to hand to code that never saw a
session. Writes that may race (redelivered events, counters) use INSERT ... ON CONFLICT,
which SQLite (3.35+) and PostgreSQL both speak, rather than catching IntegrityError: hence
`conflict_insert` and `upsert`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from mercury.storage.db import Database
from mercury.storage.models import Base

Store = Database | AsyncSession
R = TypeVar("R")


@asynccontextmanager
async def tx(store: Store) -> AsyncIterator[AsyncSession]:
    """A session inside a transaction: the caller's own, or a new one committed on exit."""
    if isinstance(store, AsyncSession):
        # The caller owns the transaction and commits it.
        yield store
    else:
        async with store.transaction() as session:
            yield session


def conflict_insert(session: AsyncSession, model: type[Base]) -> Any:
    """A dialect-specific INSERT, the kind that has on_conflict_do_nothing/do_update."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(model)
    return sqlite.insert(model)


async def upsert(
    session: AsyncSession,
    model: type[Base],
    values: dict[str, Any],
    key: list[str],
    set_: dict[str, Any],
) -> None:
    """Insert `values`, or on a clash on the `key` columns set `set_` on the existing row."""
    stmt = conflict_insert(session, model).values(**values)
    stmt = stmt.on_conflict_do_update(index_elements=key, set_=set_)
    await session.execute(stmt)


def all_columns(model: type[Base]) -> list[Any]:
    """Every column of a table, for RETURNING and column selects that build a record."""
    return list(model.__table__.columns)  # type: ignore[attr-defined]


def to_record(cls: type[R], obj: Any) -> R:
    """Build a record from an ORM object or a result Row (both have attribute access)."""
    return cls(**{f.name: getattr(obj, f.name) for f in fields(cls)})  # type: ignore[arg-type]


def rowcount(result: Any) -> int:
    """How many rows an UPDATE or DELETE touched (typed loosely by SQLAlchemy)."""
    return int(result.rowcount)


def aggregate_time(value: datetime | str | None) -> datetime | None:
    """A MAX()/MIN() over a timestamp column as an aware UTC time: SQLite returns the
    aggregate as untyped text, PostgreSQL as a datetime."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
