from __future__ import annotations

import io
import json
import logging
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from pydantic import SecretStr

from mercury.config import SECRET_ENV, load_config
from mercury.logging import (
    REDACTED,
    RepeatFilter,
    clear_secret_values,
    configure_logging,
    configure_logging_for,
    get_logger,
    is_secret_key,
    redact_secrets,
    redact_values,
    register_secret_values,
    scrub_text,
    secret_values_of,
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


# ------------------------------------------------------------ configured secret values


@pytest.fixture
def registry() -> Iterator[None]:
    """Registered secret values are process-wide: start and end each test without any."""
    clear_secret_values()
    yield
    clear_secret_values()
    configure_logging("info", "json", io.StringIO())


# Characters that URL-encoding, JSON and repr each escape differently.
_AWKWARD = ["", "/+=", '"q"', "\\b\\", " é ", "%41&x=1"]


def _random_secrets() -> dict[str, str]:
    """Every secret Mercury knows (environment variable -> value), each random and distinct."""
    return {
        var: f"{secrets.token_urlsafe(12)}{_AWKWARD[i % len(_AWKWARD)]}{i}"
        for i, var in enumerate(SECRET_ENV.values())
    }


def _forms(value: str) -> list[str]:
    """How a value would show if it leaked: raw, URL-encoded, JSON-escaped."""
    return [value, quote(value, safe=""), quote_plus(value), json.dumps(value)[1:-1]]


def _log_everywhere(values: list[str]) -> None:
    """Log every value through each path a secret has been seen to take."""
    ours = get_logger("mercury.test")
    for v in values:
        # our structlog events: in the message, under innocent keys, nested
        ours.debug(f"connecting with {v}", detail=v, nested={"list": [v]}, raw=v.encode())
        ours.info("request", url=f"https://api.example.org/bot{v}/getMe?key={quote(v, safe='')}")
        # libraries' stdlib loggers at debug, the way PTB logs its parameters
        logging.getLogger("telegram.ext.ExtBot").debug(
            "Calling Bot API endpoint `%s` with parameters `%s`",
            "setWebhook",
            {"url": "https://bot.example.org/telegram/webhook", "secret_token": v},
        )
        logging.getLogger("httpx").info("HTTP Request: POST https://x.test/bot%s/getMe", v)
        logging.getLogger("discord.gateway").debug("IDENTIFY %r", {"token": v})
        logging.getLogger("slack_bolt.App").debug("%s", v.encode())
        logging.getLogger("aiohttp.access").info('GET /?password=%s "%s"', quote_plus(v), v)
        # exceptions, ours and a library's, with the value in the message and in a cause
        try:
            try:
                raise KeyError(v)
            except KeyError as inner:
                raise RuntimeError(f"auth failed for {v!r}") from inner
        except RuntimeError:
            ours.exception("login failed")
            logging.getLogger("aiohttp.server").exception("Error handling request %s", v)


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_every_configured_secret_is_redacted_from_every_line(
    registry: None, fmt: str, tmp_path: Path
) -> None:
    # Set up as `mercury run` does: secrets from the environment, logging from the config.
    env = _random_secrets()
    (tmp_path / "mercury.yaml").write_text(f"log:\n  format: {fmt}\n  repeat_limit: 0\n")
    loaded = load_config(tmp_path / "mercury.yaml", env=env)
    assert loaded.secrets.present() == set(SECRET_ENV)
    values = list(env.values())
    stream = io.StringIO()
    configure_logging_for(loaded, "debug", stream)
    _log_everywhere(values)
    out = stream.getvalue()
    # The lines are all there ...
    assert out.count("connecting with") == len(values)
    assert out.count("Calling Bot API endpoint") == len(values)
    assert out.count("RuntimeError") >= 2 * len(values) and out.count("KeyError") >= len(values)
    assert out.count(REDACTED) >= 10 * len(values)
    # ... and no secret, in any form.
    for v in values:
        for form in _forms(v):
            assert form not in out, (fmt, form)


def test_an_unregistered_value_would_show(registry: None) -> None:
    """The check above can fail: the same paths do print a value nobody registered."""
    value = secrets.token_urlsafe(12) + '"q"'
    stream = io.StringIO()
    configure_logging("debug", "json", stream, repeat_limit=0)
    _log_everywhere([value])
    assert json.dumps(value)[1:-1] in stream.getvalue()
    assert quote(value, safe="") in stream.getvalue()


def test_secret_values_of_a_loaded_config_include_the_database_password(
    registry: None, tmp_path: Path
) -> None:
    env = {
        "MERCURY_TELEGRAM_WEBHOOK_SECRET": "hook-secret-value",
        "MERCURY_DASHBOARD_PASSWORD": "dash-password-value",
        "MERCURY_DATABASE_URL": "postgresql+asyncpg://mercury:p%40ss-word@db:5432/m",
    }
    (tmp_path / "mercury.yaml").write_text("log:\n  format: json\n")
    loaded = load_config(tmp_path / "mercury.yaml", env=env)
    assert set(secret_values_of(loaded)) == {
        "hook-secret-value",
        "dash-password-value",
        "p%40ss-word",
        "p@ss-word",
    }
    stream = io.StringIO()
    configure_logging_for(loaded, "debug", stream)
    logging.getLogger("asyncpg").warning("connect failed: password p@ss-word rejected")
    assert "p@ss-word" not in stream.getvalue() and REDACTED in stream.getvalue()


def test_short_values_are_not_registered(registry: None) -> None:
    register_secret_values(["abc", None, "", SecretStr("wxyz")])
    assert redact_values("abc wxyz") == f"abc {REDACTED}"


def test_scrub_text_also_replaces_registered_values(registry: None) -> None:
    register_secret_values(["plain-looking-secret"])
    assert scrub_text("error: plain-looking-secret refused") == f"error: {REDACTED} refused"


# ------------------------------------------------------------------- repeated lines


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _record(msg: object, level: int = logging.ERROR, name: str = "lib", *args: object) -> Any:
    return logging.LogRecord(name, level, __file__, 1, msg, args or None, None)


def test_repeat_filter_lets_a_burst_through_then_summarises() -> None:
    clock, written = Clock(), []
    filt = RepeatFilter(3, 60.0, emit=written.append, clock=clock)
    passed = [filt.filter(_record("db down: %s", logging.ERROR, "lib", i)) for i in range(10)]
    assert passed == [True] * 3 + [False] * 7
    assert written == []  # the window has not ended
    clock.now = 59.9
    assert not filt.filter(_record("db down: %s"))
    clock.now = 60.0
    assert filt.filter(_record("db down: %s"))  # a fresh window ...
    [summary] = written  # ... after one line saying how many were left out
    assert summary.getMessage() == (
        "suppressed 8 similar log lines in 60s (at most 3 per window): db down: %s"
    )
    assert summary.levelno == logging.ERROR and summary.name == "lib"
    assert filt.filter(summary)  # the summary itself is never suppressed


def test_repeat_filter_kinds_are_logger_level_and_template() -> None:
    filt = RepeatFilter(1, 60.0, emit=lambda r: None, clock=Clock())
    assert filt.filter(_record("a"))
    assert not filt.filter(_record("a"))
    assert filt.filter(_record("b"))  # another message
    assert filt.filter(_record("a", logging.WARNING))  # another level
    assert filt.filter(_record("a", logging.ERROR, "other"))  # another logger
    # digits do not make a line different; a structlog event is keyed by its event
    assert filt.filter(_record("update 41 failed"))
    assert not filt.filter(_record("update 42 failed"))
    assert filt.filter(_record({"event": "refused", "remote": "1.2.3.4"}))
    assert not filt.filter(_record({"event": "refused", "remote": "5.6.7.8"}))


def test_repeat_filter_leaves_info_and_debug_alone_and_can_be_off() -> None:
    filt = RepeatFilter(1, 60.0, emit=lambda r: None, clock=Clock())
    assert all(filt.filter(_record("x", logging.INFO)) for _ in range(50))
    off = RepeatFilter(0, 60.0, emit=lambda r: None, clock=Clock())
    assert all(off.filter(_record("x")) for _ in range(50))


def test_repeat_filter_summarises_other_kinds_when_any_line_comes() -> None:
    clock, written = Clock(), []
    filt = RepeatFilter(2, 10.0, emit=written.append, clock=clock)
    for _ in range(5):
        filt.filter(_record("flood"))
    clock.now = 11.0
    assert filt.filter(_record("something else", logging.INFO))
    assert [r.getMessage() for r in written] == [
        "suppressed 3 similar log lines in 10s (at most 2 per window): flood"
    ]


def test_repeat_filter_bounds_the_kinds_it_tracks() -> None:
    filt = RepeatFilter(1, 60.0, emit=lambda r: None, clock=Clock(), max_kinds=2)
    filt.filter(_record("a"))
    filt.filter(_record("b"))
    assert all(filt.filter(_record("c")) for _ in range(5))  # untracked: never suppressed
    assert len(filt._kinds) == 2


def test_a_log_flood_is_cut_in_the_rendered_output(registry: None) -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream, repeat_limit=5, repeat_window=60)
    [handler] = logging.getLogger().handlers
    [filt] = [f for f in handler.filters if isinstance(f, RepeatFilter)]
    clock = Clock()
    filt.clock = clock
    for i in range(500):  # what a stream of bad requests causes
        get_logger("mercury.adapters.web").warning("web chat login refused", remote=f"10.0.0.{i}")
        logging.getLogger("aiohttp.server").error("Error handling request from %s", i)
    clock.now = 61.0
    get_logger("mercury.app").info("still alive")
    events = [r["event"] for r in lines(stream)]
    assert events.count("web chat login refused") == 5
    assert events.count("Error handling request from %s".replace("%s", "0")) == 1
    assert sum(e.startswith("Error handling request from") for e in events) == 5
    assert (
        "suppressed 495 similar log lines in 60s (at most 5 per window): web chat login refused"
        in events
    )
    assert events[-1] == "still alive"
    assert len(events) == 5 + 5 + 2 + 1


def test_pending_summaries_are_written_at_close(registry: None) -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream, repeat_limit=1)
    for _ in range(4):
        get_logger("t").error("boom")
    logging.getLogger().handlers[0].close()
    assert [r["event"] for r in lines(stream)] == [
        "boom",
        "suppressed 3 similar log lines in 60s (at most 1 per window): boom",
    ]
