from __future__ import annotations

import pytest

from mercury.core.messages import ConversationRef
from mercury.core.spaces import default_space_id, is_safe_space_id


def sid(platform: str, chat_id: str, thread: str | None = None) -> str:
    return default_space_id(ConversationRef(platform, chat_id, thread))


def test_web_session_uses_its_name() -> None:
    assert sid("web", "demo") == "demo"
    assert sid("web", "team.notes_2") == "team.notes_2"


def test_clean_platform_ids_are_readable() -> None:
    assert sid("slack", "C024BE91L") == "slack-C024BE91L"
    assert sid("telegram", "-1001234567") == "telegram--1001234567"


def test_threads_share_the_channel_space() -> None:
    assert sid("slack", "C1", "1700000000.1") == sid("slack", "C1")


@pytest.mark.parametrize(
    ("platform", "chat_id"),
    [
        ("web", "my session"),
        ("web", "-leading-dash"),
        ("web", "x" * 80),
        ("discord", "guild/123#chan"),
        ("slack", "C" * 100),
        ("telegram", "ünïcode"),
        ("web", ""),
    ],
)
def test_always_safe(platform: str, chat_id: str) -> None:
    space = sid(platform, chat_id)
    assert is_safe_space_id(space), space
    assert len(space) <= 64


def test_sanitising_never_merges_conversations() -> None:
    pairs = [
        ("web", "a b"),
        ("web", "a_b"),
        ("web", "a/b"),
        ("discord", "a b"),
        ("discord", "a_b"),
        ("slack", "x" * 70),
        ("slack", "x" * 71),
        ("slack", "x" * 70 + "y"),
    ]
    ids = [sid(p, c) for p, c in pairs]
    assert len(set(ids)) == len(ids), ids


def test_web_names_cannot_take_another_platforms_space() -> None:
    assert sid("web", "slack-C1") != sid("slack", "C1")
    assert sid("web", "web-demo") != "web-demo"
    assert is_safe_space_id(sid("web", "slack-C1"))


def test_sanitised_ids_are_stable() -> None:
    assert sid("discord", "a b") == sid("discord", "a b")
    assert sid("discord", "a b").startswith("discord-a_b-")
