from __future__ import annotations

import io
import json
import logging

import pytest

from mercury.logging import (
    REDACTED,
    configure_logging,
    get_logger,
    is_secret_key,
    redact_secrets,
    scrub_text,
)


@pytest.fixture
def json_log() -> io.StringIO:
    stream = io.StringIO()
    configure_logging("debug", "json", stream)
    yield stream
    configure_logging("info", "json", io.StringIO())


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


@pytest.mark.parametrize(
    "key",
    [
        "token",
        "bot_token",
        "slack_signing_secret",
        "password",
        "dashboard_password",
        "api_key",
        "apiKey",
        "X-Api-Key",
        "Authorization",
        "authorization",
        "secret",
        "client_secret_value",
        "cookie",
    ],
)
def test_secret_keys(key: str) -> None:
    assert is_secret_key(key)


@pytest.mark.parametrize(
    "key", ["input_tokens", "output_tokens", "space", "monkey", "user", "token_count", "keyboard"]
)
def test_non_secret_keys(key: str) -> None:
    assert not is_secret_key(key)


def test_json_output_redacts_secret_keys(json_log: io.StringIO) -> None:
    get_logger("t").info(
        "connect",
        bot_token="xoxb-1234567890-abcdef",
        password="hunter2",
        input_tokens=42,
        headers={"Authorization": "Bearer abc.def", "Accept": "json"},
        user="U1",
    )
    (rec,) = lines(json_log)
    assert rec["event"] == "connect"
    assert rec["bot_token"] == REDACTED
    assert rec["password"] == REDACTED
    assert rec["input_tokens"] == 42
    assert rec["headers"] == {"Authorization": REDACTED, "Accept": "json"}
    assert rec["user"] == "U1"
    assert "hunter2" not in json_log.getvalue()
    assert "xoxb-1234567890" not in json_log.getvalue()


def test_token_shaped_values_are_scrubbed_anywhere(json_log: io.StringIO) -> None:
    get_logger("t").warning(
        "request failed for xoxb-1234567890-abcdef",
        url="postgresql+asyncpg://mercury:s3cret@db:5432/m",
        detail=["telegram 123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw1"],
    )
    out = json_log.getvalue()
    assert "xoxb-1234567890" not in out
    assert "s3cret" not in out
    assert "AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw1" not in out
    (rec,) = lines(json_log)
    assert rec["url"] == f"postgresql+asyncpg://mercury:{REDACTED}@db:5432/m"


def test_stdlib_logging_of_libraries_goes_through_redaction(json_log: io.StringIO) -> None:
    logging.getLogger("some.library").warning("auth with %s", "sk-ant-abcdefghijklmnopqrstuv")
    (rec,) = lines(json_log)
    assert rec["logger"] == "some.library"
    assert "sk-ant-abcdefghijklmnopqrstuv" not in rec["event"]


def test_console_format_is_human_readable() -> None:
    stream = io.StringIO()
    configure_logging("info", "console", stream)
    get_logger("t").info("hello", space="s1", token="xoxb-zzzzzzzzzzzz")
    text = stream.getvalue()
    assert "hello" in text and "space" in text and "s1" in text
    assert not text.lstrip().startswith("{")
    assert "xoxb-zzzzzzzzzzzz" not in text
    configure_logging("info", "json", io.StringIO())


def test_auto_format_is_json_when_not_a_terminal() -> None:
    stream = io.StringIO()  # isatty() is False
    configure_logging("info", "auto", stream)
    get_logger("t").info("x")
    assert json.loads(stream.getvalue())["event"] == "x"


def test_processor_is_pure_over_the_event_dict() -> None:
    out = redact_secrets(None, "info", {"event": "e", "signing_secret": "abc", "n": 1})
    assert out == {"event": "e", "signing_secret": REDACTED, "n": 1}


def test_scrub_text_leaves_plain_text_alone() -> None:
    assert scrub_text("nothing secret here: 42 tokens") == "nothing secret here: 42 tokens"


def test_level_filters(json_log: io.StringIO) -> None:
    configure_logging("warning", "json", json_log)
    get_logger("t").info("hidden")
    get_logger("t").warning("shown")
    assert [r["event"] for r in lines(json_log)] == ["shown"]
