"""Roles and permissions per space.

Built-in roles:
- `admin`: every permission. Config admins ("platform:user_id") are admins in every space,
  and so is the operator of this Mercury where an adapter has proved who they are (the
  web chat, behind the dashboard password).
- `member` (the usual default role): `run`, `stop` and `clear` — a member can use the
  agent, stop a run in a space they belong to and start a fresh context. Pausing the
  space, switching its model and managing roles/mutes change the space for everyone, so
  they need `pause`, `model` and `admin` (admins only, unless a custom role grants them).

Custom roles are named sets of permissions (e.g. {"helper": {"run", "stop", "pause"}}).
A custom definition may redefine `member` (e.g. a read-only member without `run`) but not
`admin`. A role that is neither built in nor defined has no permissions: fail closed.
Unknown permission names in a custom role are ignored, except an extension's own permission
("ext:<word>", declared in its extension.yaml): an operator grants that through a custom
role. `admin` holds every extension's permission without listing it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Set
from enum import StrEnum

from mercury.core.commands import Command, CommandKind


class Permission(StrEnum):
    RUN = "run"  # use the agent
    STOP = "stop"
    PAUSE = "pause"
    MODEL = "model"
    CLEAR = "clear"
    ADMIN = "admin"  # manage roles, mutes, the spending caps, others' memory


ADMIN_ROLE = "admin"
MEMBER_ROLE = "member"
_ROLE_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


def role_name_problem(name: str) -> str | None:
    """Why `name` cannot be stored as a role (host API and dashboard alike), or None."""
    if _ROLE_NAME.match(name):
        return None
    return f"bad role name {name!r}: lowercase letters, digits, _ and - (up to 32)"


ALL_PERMISSIONS: frozenset[str] = frozenset(p.value for p in Permission)
# An extension's own permission: "ext:" and a word (core/extension_spec.py re-exports it).
EXT_PERMISSION_PREFIX = "ext:"
_EXT_PERMISSION = re.compile(r"^ext:[a-z0-9_-]{1,32}$")


def is_extension_permission(name: str) -> bool:
    """True for "ext:<word>", the kind of permission an extension may ask for."""
    return bool(_EXT_PERMISSION.match(name))


MEMBER_PERMISSIONS: frozenset[str] = frozenset({Permission.RUN, Permission.STOP, Permission.CLEAR})


def user_key(platform: str, user_id: str) -> str:
    """The "platform:user_id" key used by config admins, roles, mutes and rate limits.

    `user_id` is the platform's own id (adapters never prefix it), so the key is exactly
    what the operator writes in `permissions.admins`, e.g. "web:admin"."""
    return f"{platform}:{user_id}"


def role_of(
    user_key: str,
    space_roles: Mapping[str, str],
    config_admins: Set[str],
    default_role: str = MEMBER_ROLE,
    *,
    operator: bool = False,
) -> str:
    """The user's role in a space: the operator (an author an adapter authenticated as the
    owner of this Mercury) and config admins are admin everywhere (a space role cannot
    demote them), then the space's assignment, then the default role."""
    if operator or user_key in config_admins:
        return ADMIN_ROLE
    return space_roles.get(user_key, default_role)


def permissions_of(role: str, custom: Mapping[str, Set[str]] | None = None) -> frozenset[str]:
    """The permissions a role grants (see the module docstring for the built-ins)."""
    if role == ADMIN_ROLE:
        return ALL_PERMISSIONS
    if custom and role in custom:
        return frozenset(
            p for p in custom[role] if p in ALL_PERMISSIONS or is_extension_permission(p)
        )
    if role == MEMBER_ROLE:
        return MEMBER_PERMISSIONS
    return frozenset()


def is_custom(role: str) -> bool:
    """True for a role whose permissions only a space's definitions give (not built in):
    the pipeline looks those up before asking `permissions_of`."""
    return role not in (ADMIN_ROLE, MEMBER_ROLE)


def allowed(role: str, permission: str, custom: Mapping[str, Set[str]] | None = None) -> bool:
    return permission in permissions_of(role, custom)


# /help, /status and /model list only read: anyone addressed by the bot may use them.
_COMMAND_PERMISSION: dict[CommandKind, Permission | None] = {
    CommandKind.STOP: Permission.STOP,
    CommandKind.PAUSE: Permission.PAUSE,
    CommandKind.RESUME: Permission.PAUSE,
    CommandKind.HELP: None,
    CommandKind.STATUS: None,
    CommandKind.MODEL_LIST: None,
    CommandKind.MODEL_SWITCH: Permission.MODEL,
    CommandKind.CLEAR: Permission.CLEAR,
    # The task list shows prompts and costs: for whoever may use the agent here.
    CommandKind.TASKS: Permission.RUN,
    # Seeing the caps is for whoever may use the agent; changing one is the admins'.
    CommandKind.BUDGET: Permission.RUN,
    CommandKind.BUDGET_SET: Permission.ADMIN,
    # A person's own memory is theirs to see and clear; someone else's, the admins'.
    CommandKind.MEMORY: None,
    CommandKind.FORGET: None,
    CommandKind.FORGET_OTHER: Permission.ADMIN,
}


def command_permission(command: Command | CommandKind) -> Permission | None:
    """The permission a command needs, or None when anyone may use it."""
    kind = command.kind if isinstance(command, Command) else command
    return _COMMAND_PERMISSION[kind]
