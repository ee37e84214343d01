"""The bounds a run record puts on what the agent, the user and the container hand it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from mercury.storage.runs import (
    ENTRY_TEXT_CHARS,
    RunCursor,
    bound_entries,
    bound_log_tail,
    summarize_prompt,
)


def test_prompt_summary_is_one_plain_line_cut_to_size() -> None:
    assert summarize_prompt("  hello\n\n  world\t!  ") == "hello world !"
    assert summarize_prompt("bell\x07 and\x00 nul") == "bell and nul"
    assert summarize_prompt("") is None
    assert summarize_prompt(None) is None
    assert summarize_prompt(" \n\t ") is None
    long = summarize_prompt("a" * 1000, limit=10)
    assert long == "a" * 9 + "…"
    assert summarize_prompt("a" * 10, limit=10) == "a" * 10


def test_log_tail_keeps_the_end_from_a_whole_line() -> None:
    assert bound_log_tail(None) is None
    assert bound_log_tail("") is None
    assert bound_log_tail("short\nlog\n", limit=100) == "short\nlog\n"
    log = "first line\nsecond line\nthird line\n"
    assert bound_log_tail(log, limit=20) == "third line\n"
    # One endless line: the last characters, as they are.
    assert bound_log_tail("x" * 50, limit=10) == "x" * 10


def test_entries_keep_listed_scalar_keys_only() -> None:
    entries = [
        {"leg": 0, "model": "m", "error": "e" * 1000, "extra": 1, "status": None},
        "not a mapping",
        {"leg": 1, "model": ["a", "list"], "outcome": {"nested": True}, "ok": True},
        {"leg": 2},
    ]
    kept = bound_entries(entries, ("leg", "model", "error", "status", "outcome"), limit=2)
    assert kept == [
        {"leg": 0, "model": "m", "error": "e" * (ENTRY_TEXT_CHARS - 1) + "…", "status": None},
        {"leg": 1},
    ]
    assert bound_entries("nope", ("leg",), 5) is None
    assert bound_entries(None, ("leg",), 5) is None
    assert bound_entries({"leg": 1}, ("leg",), 5) is None
    assert bound_entries([], ("leg",), 5) == []


def test_cursor_token_round_trips_to_the_microsecond() -> None:
    at = datetime(2026, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
    cursor = RunCursor(at, 42)
    assert RunCursor.parse(cursor.token()) == cursor
    old = RunCursor(datetime(1960, 1, 1, tzinfo=UTC) + timedelta(microseconds=7), 1)
    assert RunCursor.parse(old.token()) == old
    for bad in ("", "42", "abc.1", "1.x", "1.-2", "9" * 30 + ".1", "1.2.3", "1e5.2"):
        assert RunCursor.parse(bad) is None, bad
