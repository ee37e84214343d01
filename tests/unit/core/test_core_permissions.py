from __future__ import annotations

import pytest

from mercury.core.commands import Command, CommandKind
from mercury.core.permissions import (
    ALL_PERMISSIONS,
    Permission,
    allowed,
    command_permission,
    is_custom,
    permissions_of,
    role_name_problem,
    role_of,
    user_key,
)

ADMINS = {"slack:UADMIN"}


def test_role_of() -> None:
    roles = {"slack:U2": "helper", "slack:UADMIN": "member"}
    assert role_of("slack:UADMIN", roles, ADMINS, "member") == "admin"  # cannot be demoted
    assert role_of("slack:U2", roles, ADMINS, "member") == "helper"
    assert role_of("slack:U3", roles, ADMINS, "member") == "member"
    assert role_of("slack:U3", {}, ADMINS, "guest") == "guest"
    # Keys are platform-qualified: the same id elsewhere is someone else.
    assert role_of("discord:UADMIN", {}, ADMINS, "member") == "member"
    assert user_key("slack", "UADMIN") == "slack:UADMIN"


def test_the_operator_is_admin_wherever_they_speak() -> None:
    # An adapter that authenticated the owner of this Mercury (the web chat) says so: no
    # space role, default role or missing config entry makes them less than an admin.
    assert role_of("web:admin", {"web:admin": "member"}, set(), "nobody", operator=True) == "admin"
    assert role_of("web:admin", {}, set(), "member") == "member"  # the key alone is not enough
    # The documented config form works because adapters give bare platform ids.
    assert role_of(user_key("web", "admin"), {}, {"web:admin"}, "nobody") == "admin"


def test_builtin_roles() -> None:
    assert permissions_of("admin") == ALL_PERMISSIONS
    member = permissions_of("member")
    assert member == {"run", "stop", "clear"}
    for p in ("pause", "model", "admin"):
        assert not allowed("member", p)
        assert allowed("admin", p)


def test_custom_roles() -> None:
    custom = {"helper": {"run", "pause", "bogus"}, "member": {"stop"}, "admin": set()}
    assert permissions_of("helper", custom) == {"run", "pause"}
    assert permissions_of("member", custom) == {"stop"}  # may be redefined
    assert permissions_of("admin", custom) == ALL_PERMISSIONS  # may not
    assert permissions_of("stranger", custom) == frozenset()  # fail closed
    assert is_custom("helper") and not is_custom("admin") and not is_custom("member")


def test_custom_roles_keep_extension_permissions() -> None:
    # An extension's own permission is granted through a custom role; a malformed "ext:"
    # name or another unknown word is still dropped.
    custom = {"reader": {"run", "ext:web", "ext:", "ext:Bad Name", "extra"}}
    assert permissions_of("reader", custom) == {"run", "ext:web"}
    assert allowed("reader", "ext:web", custom)
    assert not allowed("member", "ext:web")
    assert "ext:web" not in permissions_of("admin")  # admin holds it by being admin


@pytest.mark.parametrize(
    ("kind", "perm"),
    [
        (CommandKind.STOP, Permission.STOP),
        (CommandKind.PAUSE, Permission.PAUSE),
        (CommandKind.RESUME, Permission.PAUSE),
        (CommandKind.MODEL_SWITCH, Permission.MODEL),
        (CommandKind.CLEAR, Permission.CLEAR),
        (CommandKind.MODEL_LIST, None),
        (CommandKind.HELP, None),
        (CommandKind.STATUS, None),
    ],
)
def test_command_permission(kind: CommandKind, perm: Permission | None) -> None:
    assert command_permission(Command(kind)) == perm
    assert command_permission(kind) == perm


def test_role_names_the_host_api_and_dashboard_accept() -> None:
    for good in ("admin", "helper", "on-call", "tier_2", "a" * 32):
        assert role_name_problem(good) is None, good
    for bad in ("", "Admin", "2nd", "has space", "a" * 33, "x;y", "émile"):
        assert role_name_problem(bad), bad
