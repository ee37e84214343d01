from __future__ import annotations

import pytest

from mercury.core.commands import (
    HELP_TEXT,
    Command,
    CommandKind,
    parse_command,
    parse_duration,
)


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("stop", CommandKind.STOP),
        ("STOP!", CommandKind.STOP),
        ("/stop", CommandKind.STOP),
        ("/stop@mercury_bot", CommandKind.STOP),
        ("clear", CommandKind.CLEAR),
        ("/clear", CommandKind.CLEAR),
        ("/resume", CommandKind.RESUME),
        ("/help", CommandKind.HELP),
        ("/status", CommandKind.STATUS),
        ("/model", CommandKind.MODEL_LIST),
        ("/model list", CommandKind.MODEL_LIST),
        ("  /pause  ", CommandKind.PAUSE),
    ],
)
def test_forms(text: str, kind: CommandKind) -> None:
    cmd = parse_command(text)
    assert cmd is not None and cmd.kind is kind and cmd.error is None


@pytest.mark.parametrize(
    "text", ["", "stop the music", "please clear", "/unknown", "hello", "/ stop", "stopp"]
)
def test_not_commands(text: str) -> None:
    assert parse_command(text) is None


def test_pause_durations() -> None:
    assert parse_command("/pause") == Command(CommandKind.PAUSE, duration_s=None)
    assert parse_command("/pause 30m") == Command(CommandKind.PAUSE, duration_s=1800)
    assert parse_command("/pause 2h").duration_s == 7200  # type: ignore[union-attr]
    assert parse_command("/pause 1d").duration_s == 86400  # type: ignore[union-attr]
    assert parse_command("/pause 1h 30m").duration_s == 5400  # type: ignore[union-attr]
    assert parse_command("/pause 90 min").duration_s == 5400  # type: ignore[union-attr]


@pytest.mark.parametrize("arg", ["soon", "30", "0m", "2x", "m30", "-5m", "9999d"])
def test_bad_pause_duration_gives_user_text(arg: str) -> None:
    cmd = parse_command(f"/pause {arg}")
    assert cmd is not None and cmd.kind is CommandKind.PAUSE
    assert cmd.error and cmd.duration_s is None
    assert "/pause" in cmd.error


def test_parse_duration() -> None:
    assert parse_duration("45s") == 45
    assert parse_duration("1.5h") == 5400
    assert parse_duration("2 weeks") == 2 * 604800
    assert parse_duration("") is None
    assert parse_duration("h") is None


def test_model_switch() -> None:
    assert parse_command("/model switch 2") == Command(CommandKind.MODEL_SWITCH, model="2")
    cmd = parse_command("/model switch claude sonnet")
    assert cmd == Command(CommandKind.MODEL_SWITCH, model="claude sonnet")
    missing = parse_command("/model switch")
    assert missing is not None and missing.error and missing.kind is CommandKind.MODEL_SWITCH
    bad = parse_command("/model frobnicate")
    assert bad is not None and bad.error


def test_help_mentions_every_command() -> None:
    for word in ("stop", "/pause", "/resume", "/status", "/model list", "/model switch", "clear"):
        assert word in HELP_TEXT
