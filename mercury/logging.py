"""structlog set-up: a readable console in a terminal, JSON lines otherwise, secrets redacted.

Every log line passes `redact_secrets`, so a token handed to a log call by mistake is
replaced before it reaches any output.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import structlog

REDACTED = "[REDACTED]"

# Key names whose values are secret. Matched on word parts, so `bot_token`, `apiKey`,
# `X-Api-Key` and `Authorization` match but `token_count` and `monkey` do not.
_SECRET_PARTS = ("token", "secret", "password", "passwd", "key", "authorization", "cookie")
_SAFE_KEYS = {"input_tokens", "output_tokens", "max_tokens", "tokens", "key_path", "keys"}
_SPLIT = re.compile(r"[_\-.\s]+|(?<=[a-z0-9])(?=[A-Z])")
# Values that look like credentials wherever they appear (in messages, URLs, errors).
_SECRET_VALUE_PATTERNS = [
    re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{6,}"),  # Slack tokens
    re.compile(r"\bxapp-[A-Za-z0-9-]{6,}"),  # Slack app tokens
    re.compile(r"\bsk-[A-Za-z0-9_-]{12,}"),  # OpenAI / Anthropic style keys
    re.compile(r"\b\d{6,12}:[A-Za-z0-9_-]{30,}"),  # Telegram bot tokens
    re.compile(r"(?i)\b(bearer|bot)\s+[A-Za-z0-9._~+/=-]{16,}"),  # auth headers
    re.compile(r"(?<=://)([^:/@\s]+):([^@\s/]+)@"),  # passwords in URLs
]


def is_secret_key(key: str) -> bool:
    if key.lower() in _SAFE_KEYS:
        return False
    parts = [p.lower() for p in _SPLIT.split(key) if p]
    if not parts:
        return False
    # The secret word must be the last part (`bot_token`, `api_key`), or the whole key
    # (`authorization`); `token_count` is a number, not a token.
    return parts[-1] in _SECRET_PARTS or any(
        p in ("password", "passwd", "authorization", "secret", "cookie") for p in parts
    )


def scrub_text(text: str) -> str:
    """Replace credential-shaped substrings of free text."""
    for pattern in _SECRET_VALUE_PATTERNS:
        if pattern.pattern.startswith("(?<=://)"):
            text = pattern.sub(lambda m: f"{m.group(1)}:{REDACTED}@", text)
        else:
            text = pattern.sub(REDACTED, text)
    return text


def first_line(exc: BaseException, limit: int = 200) -> str:
    """An exception as one scrubbed line, for messages an operator reads."""
    lines = str(exc).strip().splitlines()
    return scrub_text(lines[0][:limit]) if lines else type(exc).__name__


def _redact(value: Any, depth: int = 0) -> Any:
    if depth > 6:
        return value
    if isinstance(value, Mapping):
        return {
            k: (
                REDACTED if isinstance(k, str) and is_secret_key(k) and v else _redact(v, depth + 1)
            )
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(_redact(v, depth + 1) for v in value)
    if isinstance(value, str):
        return scrub_text(value)
    return value


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: blank the values of secret-looking keys, scrub token shapes."""
    for key in list(event_dict):
        value = event_dict[key]
        if is_secret_key(key) and value:
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _redact(value)
    return event_dict


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Route structlog and stdlib logging (libraries) through one renderer."""
    stream = stream or sys.stderr
    use_console = fmt == "console" or (fmt == "auto" and stream.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=stream.isatty())
        if use_console
        else structlog.processors.JSONRenderer()
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.stdlib.PositionalArgumentsFormatter(),
        structlog.processors.format_exc_info if not use_console else _noop,
        redact_secrets,
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Chatty libraries stay at warning unless we debug.
    for name in (
        "docker",
        "urllib3",
        "aiosqlite",
        "asyncio",
        "slack_bolt",
        "discord",
        "httpx",
        "httpcore",
        "telegram",
        "alembic",
    ):
        logging.getLogger(name).setLevel("DEBUG" if level == "debug" else "WARNING")


def _noop(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
    return event_dict


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    return structlog.stdlib.get_logger(name)
