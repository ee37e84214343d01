"""Preferences, one aggregate: a space's string settings by key (e.g. its chosen model)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, select

from mercury.storage.models import Preference, utcnow
from mercury.storage.session import Store, rowcount, tx, upsert


async def get_preferences(store: Store, space_id: str) -> dict[str, str]:
    """All preferences of a space as {key: value}."""
    async with tx(store) as s:
        rows = await s.execute(
            select(Preference.key, Preference.value)
            .where(Preference.space_id == space_id)
            .order_by(Preference.key)
        )
        return {k: v for k, v in rows}


async def preference_values(
    store: Store, key: str, space_ids: Sequence[str] | None = None
) -> dict[str, str]:
    """{space_id: value} of every space (or of `space_ids`) that has preference `key` set:
    one query, however many spaces there are."""
    q = select(Preference.space_id, Preference.value).where(Preference.key == key)
    if space_ids is not None:
        q = q.where(Preference.space_id.in_(list(space_ids)))
    async with tx(store) as s:
        rows = await s.execute(q)
        return {space: value for space, value in rows}


async def set_preference(store: Store, space_id: str, key: str, value: str) -> None:
    """Set one preference of a space."""
    now = utcnow()
    async with tx(store) as s:
        await upsert(
            s,
            Preference,
            {"space_id": space_id, "key": key, "value": value, "updated_at": now},
            ["space_id", "key"],
            {"value": value, "updated_at": now},
        )


async def delete_preference(store: Store, space_id: str, key: str) -> bool:
    """Remove one preference; True if it was set."""
    async with tx(store) as s:
        result = await s.execute(
            delete(Preference).where(Preference.space_id == space_id, Preference.key == key)
        )
        return bool(rowcount(result))


__all__ = ["delete_preference", "get_preferences", "preference_values", "set_preference"]
