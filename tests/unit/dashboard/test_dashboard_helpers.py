"""The dashboard's pure rules: where a login may redirect, and how values are shown."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mercury.dashboard.filters import ago, duration, number, usd, when
from mercury.dashboard.render import safe_next


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/runs", "/runs"),
        ("/spaces/web%3Amain?tab=files", "/spaces/web%3Amain?tab=files"),
        (None, "/overview"),
        ("", "/overview"),
        ("runs", "/overview"),
        ("//evil.example/", "/overview"),
        ("/\\evil.example", "/overview"),
        ("https://evil.example/", "/overview"),
        ("javascript:alert(1)", "/overview"),
        ("/ok\r\nSet-Cookie: x=1", "/overview"),
    ],
)
def test_safe_next_allows_only_local_paths(target: str | None, expected: str) -> None:
    assert safe_next(target) == expected


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "—"),
        (0.25, "250 ms"),
        (42, "42 s"),
        (60, "1 min"),
        (185, "3 min 5 s"),
        (7800, "2 h 10 min"),
        (3600, "1 h"),
        (3 * 86400 + 4 * 3600 + 59, "3 d 4 h"),
    ],
)
def test_duration(seconds: float | None, text: str) -> None:
    assert duration(seconds) == text


def test_ago_when_number_usd() -> None:
    now = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
    assert ago(now - timedelta(seconds=3), now) == "just now"
    assert ago(now - timedelta(minutes=3, seconds=5), now) == "3 min ago"
    assert ago(now - timedelta(hours=2, minutes=10), now) == "2 h ago"
    assert ago(now + timedelta(minutes=5), now) == "in 5 min"
    assert ago(None) == "—"
    assert when(now) == "2026-03-10 12:00 UTC" and when(None) == "—"
    assert number(12345) == "12,345" and number(1234.5) == "1,234.5" and number(None) == "—"
    assert usd(0.01234) == "$0.0123" and usd(12.345) == "$12.35" and usd(None) == "—"
