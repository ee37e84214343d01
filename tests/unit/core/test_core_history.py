from __future__ import annotations

from datetime import UTC, datetime, timedelta

from mercury.core.history import HistoryItem, select_history

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def item(i: int, text: str = "", *, ambient: bool = False) -> HistoryItem:
    return HistoryItem(
        id=f"m{i}",
        author_id="u",
        author_name="Ann",
        text=text or f"msg{i}",
        ts=T0 + timedelta(minutes=i),
        ambient=ambient,
    )


def ids(items: list[HistoryItem]) -> list[str]:
    return [m.id for m in items]


def test_last_turns_oldest_first() -> None:
    msgs = [item(i) for i in range(10)]
    assert ids(select_history(msgs, turns=3, max_chars=1000)) == ["m7", "m8", "m9"]
    # Input order does not matter.
    assert ids(select_history(msgs[::-1], turns=3, max_chars=1000)) == ["m7", "m8", "m9"]


def test_char_cap_trims_oldest() -> None:
    msgs = [item(i, "x" * 10) for i in range(5)]
    assert ids(select_history(msgs, turns=5, max_chars=30)) == ["m2", "m3", "m4"]
    assert ids(select_history(msgs, turns=5, max_chars=29)) == ["m3", "m4"]


def test_newest_kept_and_truncated() -> None:
    msgs = [item(0, "short"), item(1, "y" * 100)]
    out = select_history(msgs, turns=5, max_chars=20)
    assert ids(out) == ["m1"]
    assert len(out[0].text) == 20 and out[0].text.startswith("yyy") and out[0].text.endswith("…")


def test_boundary() -> None:
    msgs = [item(i) for i in range(6)]
    boundary = T0 + timedelta(minutes=3)  # /clear at m3's time: m3 is before the boundary
    assert ids(select_history(msgs, turns=10, max_chars=1000, since=boundary)) == ["m4", "m5"]
    assert select_history(msgs, turns=10, max_chars=1000, since=T0 + timedelta(hours=1)) == []


def test_disabled() -> None:
    msgs = [item(0)]
    assert select_history(msgs, turns=0, max_chars=100) == []
    assert select_history(msgs, turns=5, max_chars=0) == []
    assert select_history([], turns=5, max_chars=100) == []


def test_payload_matches_contract() -> None:
    p = item(1).to_payload()
    assert set(p) == {"id", "author_id", "author_name", "text", "ts", "is_bot", "attachments"}
    assert p["ts"] == "2024-05-01T12:01:00+00:00"
