"""Spaces, one aggregate: create and look up a space, its profile, its pause and its /reset.

How a pause is stored is this module's business: a timed pause keeps its end time, and a
pause "until /resume" keeps a far-future marker that survives restarts. Callers use
`pause_until_resumed`, `resume_space`, `SpaceRecord.is_paused` and `SpaceRecord.pause_ends`
and never see the marker.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from mercury.storage.errors import NotFound
from mercury.storage.models import Space, utcnow
from mercury.storage.session import Store, conflict_insert, to_record, tx

# `paused_until` of a space paused until /resume: later than any timed pause can end.
_UNTIL_RESUMED = datetime(9999, 1, 1, tzinfo=UTC)


def _is_until_resumed(paused_until: datetime) -> bool:
    # `>=`, not `==`: any far-future value written before this marker had a name counts too.
    return paused_until >= _UNTIL_RESUMED


@dataclass(frozen=True, slots=True)
class SpaceRecord:
    id: str
    name: str
    profile: str
    created_at: datetime
    paused_until: datetime | None
    context_reset_at: datetime | None

    def is_paused(self, now: datetime) -> bool:
        """True while paused at `now`: until /resume, or a timed pause not yet over."""
        if self.paused_until is None:
            return False
        return _is_until_resumed(self.paused_until) or self.paused_until > now

    @property
    def pause_ends(self) -> datetime | None:
        """When a timed pause ends; None when not paused or paused until /resume.

        A timed pause whose end has passed still reports it: use `is_paused(now)` to know
        whether it is in force.
        """
        if self.paused_until is None or _is_until_resumed(self.paused_until):
            return None
        return self.paused_until


async def get_or_create_space(
    store: Store, space_id: str, *, name: str | None = None, profile: str = "general"
) -> SpaceRecord:
    """The space with this id, created (with `name`, default the id) if it does not exist."""
    async with tx(store) as s:
        stmt = conflict_insert(s, Space).values(
            id=space_id, name=name or space_id, profile=profile, created_at=utcnow()
        )
        await s.execute(stmt.on_conflict_do_nothing(index_elements=["id"]))
        space = await s.get(Space, space_id, populate_existing=True)
        assert space is not None  # inserted or already there, inside this transaction
        return to_record(SpaceRecord, space)


async def get_space(store: Store, space_id: str) -> SpaceRecord | None:
    """The space, or None."""
    async with tx(store) as s:
        space = await s.get(Space, space_id, populate_existing=True)
        return None if space is None else to_record(SpaceRecord, space)


async def list_spaces(store: Store) -> list[SpaceRecord]:
    """Every space, by id."""
    async with tx(store) as s:
        rows = await s.scalars(select(Space).order_by(Space.id))
        return [to_record(SpaceRecord, r) for r in rows]


async def _update_space(store: Store, space_id: str, **values: Any) -> SpaceRecord:
    async with tx(store) as s:
        space = await s.get(Space, space_id, populate_existing=True)
        if space is None:
            raise NotFound(f"space {space_id!r} does not exist")
        for k, v in values.items():
            setattr(space, k, v)
        await s.flush()
        return to_record(SpaceRecord, space)


async def set_space_profile(store: Store, space_id: str, profile: str) -> SpaceRecord:
    """Switch the agent profile a space runs with."""
    return await _update_space(store, space_id, profile=profile)


async def pause_space(store: Store, space_id: str, until: datetime) -> SpaceRecord:
    """Pause a space until `until` (a timed pause); see also `pause_until_resumed` and
    `resume_space`."""
    return await _update_space(store, space_id, paused_until=until)


async def pause_until_resumed(store: Store, space_id: str) -> SpaceRecord:
    """Pause a space with no end: it stays paused, across restarts, until /resume."""
    return await _update_space(store, space_id, paused_until=_UNTIL_RESUMED)


async def resume_space(store: Store, space_id: str) -> SpaceRecord:
    """End any pause of a space, timed or not."""
    return await _update_space(store, space_id, paused_until=None)


async def reset_context(store: Store, space_id: str, at: datetime | None = None) -> SpaceRecord:
    """Hide the history before `at` (default now) from the agent (/reset)."""
    return await _update_space(store, space_id, context_reset_at=at or utcnow())


__all__ = [
    "SpaceRecord",
    "get_or_create_space",
    "get_space",
    "list_spaces",
    "pause_space",
    "pause_until_resumed",
    "reset_context",
    "resume_space",
    "set_space_profile",
]
