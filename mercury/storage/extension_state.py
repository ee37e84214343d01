"""Extension state, one aggregate: JSON values an extension keeps by key, across restarts.

Its own module rather than part of preferences: it belongs to an extension, not a space,
and holds any JSON value, not a string setting.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete

from mercury.storage.models import ExtensionState, utcnow
from mercury.storage.session import Store, rowcount, tx, upsert


async def get_extension_state(store: Store, extension: str, key: str, default: Any = None) -> Any:
    """The JSON value an extension stored under `key`, or `default`."""
    async with tx(store) as s:
        row = await s.get(ExtensionState, (extension, key), populate_existing=True)
        return default if row is None else row.value


async def set_extension_state(store: Store, extension: str, key: str, value: Any) -> None:
    """Store a JSON-serialisable value for an extension under `key`."""
    now = utcnow()
    async with tx(store) as s:
        await upsert(
            s,
            ExtensionState,
            {"extension": extension, "key": key, "value": value, "updated_at": now},
            ["extension", "key"],
            {"value": value, "updated_at": now},
        )


async def delete_extension_state(store: Store, extension: str, key: str) -> bool:
    """Remove a stored extension value; True if it existed."""
    async with tx(store) as s:
        result = await s.execute(
            delete(ExtensionState).where(
                ExtensionState.extension == extension, ExtensionState.key == key
            )
        )
        return bool(rowcount(result))


__all__ = ["delete_extension_state", "get_extension_state", "set_extension_state"]
