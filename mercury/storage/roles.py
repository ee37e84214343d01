"""Roles, one aggregate: a user's stored role in a space, and what a custom role may do.

Storage keeps only the facts; which role a user ends up with (admins, the default role)
and what a built-in role may do are decided in core/permissions.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, select

from mercury.storage.models import Role, RolePermission, utcnow
from mercury.storage.session import Store, conflict_insert, rowcount, to_record, tx, upsert


@dataclass(frozen=True, slots=True)
class RoleRecord:
    space_id: str
    platform: str
    user_id: str
    role: str


async def set_role(store: Store, space_id: str, platform: str, user_id: str, role: str) -> None:
    """Give a user a role in a space (replacing any previous one)."""
    now = utcnow()
    async with tx(store) as s:
        await upsert(
            s,
            Role,
            {
                "space_id": space_id,
                "platform": platform,
                "user_id": user_id,
                "role": role,
                "updated_at": now,
            },
            ["space_id", "platform", "user_id"],
            {"role": role, "updated_at": now},
        )


async def get_role(store: Store, space_id: str, platform: str, user_id: str) -> str | None:
    """The user's stored role in the space, or None (the caller applies the default)."""
    async with tx(store) as s:
        return await s.scalar(
            select(Role.role).where(
                Role.space_id == space_id, Role.platform == platform, Role.user_id == user_id
            )
        )


async def remove_role(store: Store, space_id: str, platform: str, user_id: str) -> bool:
    """Drop the user's stored role; True if there was one."""
    async with tx(store) as s:
        result = await s.execute(
            delete(Role).where(
                Role.space_id == space_id, Role.platform == platform, Role.user_id == user_id
            )
        )
        return bool(rowcount(result))


async def list_roles(store: Store, space_id: str) -> list[RoleRecord]:
    """Every stored role in a space."""
    async with tx(store) as s:
        rows = await s.scalars(
            select(Role).where(Role.space_id == space_id).order_by(Role.platform, Role.user_id)
        )
        return [to_record(RoleRecord, r) for r in rows]


async def grant_permission(store: Store, space_id: str, role: str, permission: str) -> None:
    """Add a permission to a custom role in a space (idempotent)."""
    async with tx(store) as s:
        stmt = conflict_insert(s, RolePermission).values(
            space_id=space_id, role=role, permission=permission
        )
        await s.execute(stmt.on_conflict_do_nothing())


async def revoke_permission(store: Store, space_id: str, role: str, permission: str) -> bool:
    """Remove a permission from a custom role; True if it had it."""
    async with tx(store) as s:
        result = await s.execute(
            delete(RolePermission).where(
                RolePermission.space_id == space_id,
                RolePermission.role == role,
                RolePermission.permission == permission,
            )
        )
        return bool(rowcount(result))


async def role_permissions(store: Store, space_id: str, role: str) -> set[str]:
    """The permissions of a custom role in a space."""
    async with tx(store) as s:
        rows = await s.scalars(
            select(RolePermission.permission).where(
                RolePermission.space_id == space_id, RolePermission.role == role
            )
        )
        return set(rows)


__all__ = [
    "RoleRecord",
    "get_role",
    "grant_permission",
    "list_roles",
    "remove_role",
    "revoke_permission",
    "role_permissions",
    "set_role",
]
