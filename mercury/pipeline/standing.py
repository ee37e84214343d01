"""A user's role and permissions in a space, looked up as every request needs them.

One lookup for the inbound handler (a message's author) and the scheduler (a task's
creator), so that a scheduled task is held to exactly the rules its creator's messages
are: the space's roles table, the config's admins and default role, custom roles' sets.
The decisions are core.permissions' (`role_of`, `permissions_of`).
"""

from __future__ import annotations

from collections.abc import Set
from dataclasses import dataclass

from mercury.core.permissions import is_custom, permissions_of, role_of, user_key
from mercury.storage import Store, repo


@dataclass(frozen=True, slots=True)
class Standing:
    """A user's role in a space and what it lets them do."""

    role: str
    permissions: frozenset[str]


async def standing_in(
    store: Store,
    space_id: str,
    key: str | None,
    admins: Set[str],
    default_role: str,
    *,
    operator: bool = False,
) -> Standing:
    """The role and permissions of the user `key` ("platform:user_id") in the space.

    `key` None (someone with no user key, e.g. a task of unknown creator) gets the default
    role; `operator` (the owner of this Mercury) is admin everywhere. Reads through
    `store`, so a caller's transaction can include it."""
    roles = {
        user_key(r.platform, r.user_id): r.role for r in await repo.list_roles(store, space_id)
    }
    role = role_of(key or "", roles, admins, default_role, operator=operator)
    return Standing(role, await role_permissions_in(store, space_id, role))


async def role_permissions_in(store: Store, space_id: str, role: str) -> frozenset[str]:
    """What `role` may do in the space: a custom role's permissions are the space's own."""
    custom: dict[str, set[str]] = {}
    if is_custom(role):
        custom[role] = await repo.role_permissions(store, space_id, role)
    return permissions_of(role, custom)


__all__ = ["Standing", "role_permissions_in", "standing_in"]
