"""Mutes, one aggregate: users a space ignores, forever or until a time.

An expired mute is left in place and simply stops counting (`until` is compared in the
query), so nothing has to run to lift it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, delete, select

from mercury.storage.models import Mute, utcnow
from mercury.storage.session import Store, rowcount, to_record, tx, upsert


@dataclass(frozen=True, slots=True)
class MuteRecord:
    space_id: str
    platform: str
    user_id: str
    until: datetime | None
    reason: str | None
    created_at: datetime


async def mute(
    store: Store,
    space_id: str,
    platform: str,
    user_id: str,
    *,
    until: datetime | None = None,
    reason: str | None = None,
) -> None:
    """Ignore a user in a space until `until` (None: until unmuted)."""
    async with tx(store) as s:
        await upsert(
            s,
            Mute,
            {
                "space_id": space_id,
                "platform": platform,
                "user_id": user_id,
                "until": until,
                "reason": reason,
                "created_at": utcnow(),
            },
            ["space_id", "platform", "user_id"],
            {"until": until, "reason": reason},
        )


async def unmute(store: Store, space_id: str, platform: str, user_id: str) -> bool:
    """Lift a mute; True if there was one."""
    async with tx(store) as s:
        result = await s.execute(
            delete(Mute).where(
                Mute.space_id == space_id, Mute.platform == platform, Mute.user_id == user_id
            )
        )
        return bool(rowcount(result))


def _active_mute(now: datetime) -> ColumnElement[bool]:
    return Mute.until.is_(None) | (Mute.until > now)


async def is_muted(
    store: Store, space_id: str, platform: str, user_id: str, *, now: datetime | None = None
) -> bool:
    """True if the user is muted in the space at `now` (an expired mute does not count)."""
    async with tx(store) as s:
        found = await s.scalar(
            select(Mute.user_id).where(
                Mute.space_id == space_id,
                Mute.platform == platform,
                Mute.user_id == user_id,
                _active_mute(now or utcnow()),
            )
        )
        return found is not None


async def list_mutes(
    store: Store, space_id: str, *, now: datetime | None = None
) -> list[MuteRecord]:
    """The mutes in force in a space."""
    async with tx(store) as s:
        rows = await s.scalars(
            select(Mute)
            .where(Mute.space_id == space_id, _active_mute(now or utcnow()))
            .order_by(Mute.platform, Mute.user_id)
        )
        return [to_record(MuteRecord, m) for m in rows]


__all__ = ["MuteRecord", "is_muted", "list_mutes", "mute", "unmute"]
