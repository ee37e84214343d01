"""/memory and /forget as parsed (core/commands.py) and permitted (core/permissions.py):
pure functions over the typed text. What they do is tests/unit/pipeline/test_memory_command.py."""

from __future__ import annotations

import pytest

from mercury.core.commands import HELP_TEXT, Command, CommandKind, parse_command
from mercury.core.permissions import (
    ADMIN_ROLE,
    MEMBER_ROLE,
    Permission,
    allowed,
    command_permission,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/memory", Command(CommandKind.MEMORY)),
        ("/memory@mercury_bot", Command(CommandKind.MEMORY)),
        ("  /MEMORY ", Command(CommandKind.MEMORY)),
        ("/forget", Command(CommandKind.FORGET)),
        ("/forget@mercury_bot", Command(CommandKind.FORGET)),
        ("/forget slack:U0123", Command(CommandKind.FORGET_OTHER, user="slack:U0123")),
        ("/forget telegram:501", Command(CommandKind.FORGET_OTHER, user="telegram:501")),
        ("/forget web:ops-admin", Command(CommandKind.FORGET_OTHER, user="web:ops-admin")),
        ("/forget discord:1234:5", Command(CommandKind.FORGET_OTHER, user="discord:1234:5")),
    ],
)
def test_forms(text: str, expected: Command) -> None:
    assert parse_command(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("/memory clear", "Usage: /memory"),
        ("/forget @bob", "I can't tell who '@bob' is: name them as platform:user_id"),
        ("/forget bob", "platform:user_id"),
        ("/forget Slack:U1", "platform:user_id"),  # platforms are lowercase, as user keys
        ("/forget slack:", "platform:user_id"),
        ("/forget :U1", "platform:user_id"),
        ("/forget slack:U1 slack:U2", "Usage: /forget"),
    ],
)
def test_unusable_arguments_get_a_one_line_answer(text: str, fragment: str) -> None:
    cmd = parse_command(text)
    assert cmd is not None and cmd.error is not None and cmd.user is None
    assert fragment in cmd.error and "\n" not in cmd.error


def test_a_long_name_is_not_echoed_whole() -> None:
    cmd = parse_command("/forget @" + "x" * 5000)
    assert cmd is not None and cmd.error is not None and len(cmd.error) < 250


@pytest.mark.parametrize("text", ["memory", "forget", "forget me", "/remember", "/forgetting"])
def test_bare_words_and_other_commands_go_to_the_agent(text: str) -> None:
    assert parse_command(text) is None


def test_own_memory_is_anyones_and_someone_elses_is_the_admins() -> None:
    assert command_permission(CommandKind.MEMORY) is None
    assert command_permission(CommandKind.FORGET) is None
    assert command_permission(CommandKind.FORGET_OTHER) is Permission.ADMIN
    assert allowed(ADMIN_ROLE, Permission.ADMIN) and not allowed(MEMBER_ROLE, Permission.ADMIN)
    # Someone else's note stays the admins' even when the arguments are unusable: the
    # router asks for the permission before it shows the usage.
    bad = parse_command("/forget @bob")
    assert bad is not None and command_permission(bad) is Permission.ADMIN


def test_help_lists_both() -> None:
    lines = HELP_TEXT.splitlines()
    assert any(line.strip().startswith("/memory —") for line in lines)
    assert any(line.strip().startswith("/forget —") for line in lines)
    assert any(line.strip().startswith("/forget <platform:user_id> —") for line in lines)
