"""structlog set-up: a readable console in a terminal, JSON lines otherwise, secrets redacted.

Redaction works in three layers, because a secret can reach a log in ways no key name
predicts (python-telegram-bot logs the webhook secret inside a dict of parameters at
debug level; httpx logs URLs that hold the bot token; a traceback can quote anything):

1. `redact_secrets` blanks the values of secret-looking keys and token-shaped strings;
2. every configured secret's *value* (`register_secret_values`, done from the loaded
   Secrets by `configure_logging_for`) is replaced wherever it appears, also URL- and
   JSON-escaped, in the event and in library messages;
3. the same replacement runs once more on the final rendered line of every record, ours
   and libraries' alike, tracebacks included, so nothing escapes by being formatted late.

A `RepeatFilter` on the one handler keeps a flood of identical warnings or errors (an
attacker can cause many) from burying everything else: a few per window, then a summary.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import quote, quote_plus, unquote, urlsplit

import structlog
from pydantic import BaseModel, SecretStr

if TYPE_CHECKING:
    from mercury.config import LoadedConfig

REDACTED = "[REDACTED]"
# Shorter values are not registered: redacting every "abc" would shred the logs and such
# a secret is guessable anyway.
MIN_SECRET_LENGTH = 4

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


# --------------------------------------------------------------- configured secret values

_values_lock = threading.Lock()
_secret_values: set[str] = set()
_values_re: re.Pattern[str] | None = None


def secret_forms(value: str) -> set[str]:
    """`value` as it may appear in a log line: raw, URL-encoded, JSON- or repr-escaped.

    The escaped forms matter because the final line is JSON (quotes and backslashes
    escaped, non-ASCII as \\uXXXX) and libraries log URLs (percent-encoded) and reprs.
    """
    forms = {value}
    for encoded in (quote(value, safe=""), quote(value), quote_plus(value)):
        forms.add(encoded)
        forms.add(re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), encoded))
    for escaped in (
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
        repr(value)[1:-1],
        repr(value.encode())[2:-1],  # bytes logged with %s or %r
    ):
        forms.add(escaped)
        forms.add(json.dumps(escaped)[1:-1])  # a repr or JSON string inside a JSON line
    return {f for f in forms if len(f) >= MIN_SECRET_LENGTH}


def _plain(value: Any) -> str | None:
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    return value if isinstance(value, str) and value else None


def register_secret_values(values: BaseModel | Iterable[Any] | None) -> None:
    """Redact these values (str or SecretStr; None skipped) from every log line from now on.

    Takes a Secrets model too: each of its fields is registered. Values only accumulate
    for the life of the process: a secret once seen stays redacted.
    """
    if values is None:
        return
    if isinstance(values, BaseModel):
        values = [getattr(values, name) for name in type(values).model_fields]
    new = {p for v in values if (p := _plain(v)) is not None and len(p) >= MIN_SECRET_LENGTH}
    global _values_re
    with _values_lock:
        for value in new:
            _secret_values.update(secret_forms(value))
        # Longest first, so a value is not half-replaced through a shorter form of it.
        ordered = sorted(_secret_values, key=len, reverse=True)
        _values_re = re.compile("|".join(map(re.escape, ordered))) if ordered else None


def clear_secret_values() -> None:
    """Forget every registered value (for tests that must not affect each other)."""
    global _values_re
    with _values_lock:
        _secret_values.clear()
        _values_re = None


def redact_values(text: str) -> str:
    """Replace every registered secret value (in any of its forms) in `text`."""
    pattern = _values_re
    if pattern is None or not text:
        return text
    return pattern.sub(REDACTED, text)


def secret_values_of(loaded: LoadedConfig) -> list[str]:
    """Every secret a loaded config holds: the Secrets, and a password in database_url."""
    values: list[str] = []
    for name in type(loaded.secrets).model_fields:
        plain = _plain(getattr(loaded.secrets, name))
        if plain:
            values.append(plain)
    url = loaded.config.database_url
    if url:
        try:
            password = urlsplit(url).password
        except ValueError:
            password = None
        if password:
            values += [password, unquote(password)]
    return values


def scrub_text(text: str) -> str:
    """Replace credential-shaped substrings and registered secret values of free text."""
    for pattern in _SECRET_VALUE_PATTERNS:
        if pattern.pattern.startswith("(?<=://)"):
            text = pattern.sub(lambda m: f"{m.group(1)}:{REDACTED}@", text)
        else:
            text = pattern.sub(REDACTED, text)
    return redact_values(text)


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


class _RedactingFormatter(structlog.stdlib.ProcessorFormatter):
    """The last line of defence: registered secret values out of the rendered line."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_values(super().format(record))


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The one stream handler; on close it writes any pending "suppressed" summaries."""

    def close(self) -> None:
        for filt in self.filters:
            if isinstance(filt, RepeatFilter):
                filt.flush()
        super().close()


def configure_logging(
    level: str = "info",
    fmt: str = "auto",
    stream: TextIO | None = None,
    *,
    secrets: BaseModel | Iterable[Any] | None = None,
    repeat_limit: int = 10,
    repeat_window: float = 60.0,
) -> None:
    """Route structlog and stdlib logging (libraries) through one renderer.

    `secrets`: values to redact everywhere (a Secrets model or strings); see
    `register_secret_values`. `repeat_limit`/`repeat_window`: see `RepeatFilter`.
    """
    register_secret_values(secrets)
    stream = stream or sys.stderr
    use_console = fmt == "console" or (fmt == "auto" and stream.isatty())
    renderer: Any = (
        # Plain tracebacks: rich's would show local variables (secrets among them) cut
        # to 80 characters and wrapped, where no redaction could recognise them.
        structlog.dev.ConsoleRenderer(
            colors=stream.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
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
    formatter = _RedactingFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = _Handler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(RepeatFilter(repeat_limit, repeat_window, emit=handler.handle))
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


def configure_logging_for(
    loaded: LoadedConfig, level: str | None = None, stream: TextIO | None = None
) -> None:
    """`configure_logging` from a loaded config: its level (unless `level` is given),
    format and repeat limit, with every configured secret registered for redaction."""
    log_cfg = loaded.config.log
    configure_logging(
        level or log_cfg.level,
        log_cfg.format,
        stream,
        secrets=secret_values_of(loaded),
        repeat_limit=log_cfg.repeat_limit,
        repeat_window=log_cfg.repeat_window,
    )


# ----------------------------------------------------------------------- repeated lines

_DIGITS = re.compile(r"\d+")


class RepeatFilter(logging.Filter):
    """Let `limit` identical lines per `window` seconds through, then suppress the rest.

    Identical = same logger, level and message template (the structlog event, or the
    stdlib format string before its arguments; digits count as equal, so "update 41" and
    "update 42" are one kind). Only WARNING and above are limited: those are what an
    attacker provokes (refused logins, bad requests), while debug and info detail stays
    whole. When a kind's window has ended and lines were suppressed, one line says how
    many, at their level: written before the next line of any kind, or at close.
    At most `max_kinds` kinds are tracked; beyond that lines pass unlimited.
    """

    def __init__(
        self,
        limit: int = 10,
        window: float = 60.0,
        *,
        emit: Callable[[logging.LogRecord], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
        min_level: int = logging.WARNING,
        max_kinds: int = 1000,
    ) -> None:
        super().__init__()
        self.limit = limit
        self.window = window
        self.emit = emit
        self.clock = clock
        self.min_level = min_level
        self.max_kinds = max_kinds
        # kind -> [window start, lines seen in the window, template]
        self._kinds: dict[tuple[str, int, str], list[Any]] = {}
        self._next_sweep = float("-inf")
        self._lock = threading.Lock()

    @staticmethod
    def template(record: logging.LogRecord) -> str:
        msg = record.msg
        if isinstance(msg, Mapping):  # a structlog event on its way to the formatter
            msg = msg.get("event", "")
        return str(msg)

    def filter(self, record: logging.LogRecord) -> bool:
        if self.limit <= 0 or getattr(record, "mercury_summary", False):
            return True
        allowed = True
        with self._lock:
            now = self.clock()
            due: list[logging.LogRecord] = []
            if now >= self._next_sweep:  # any record may close other kinds' windows
                self._next_sweep = now + min(1.0, self.window)
                due = self._sweep(now)
            if record.levelno >= self.min_level:
                template = self.template(record)
                kind = (record.name, record.levelno, _DIGITS.sub("#", template)[:300])
                state = self._kinds.get(kind)
                if state is not None and now - state[0] >= self.window:
                    due += self._close(kind)
                    state = None
                if state is None:
                    if len(self._kinds) < self.max_kinds:
                        self._kinds[kind] = [now, 1, template]
                else:
                    state[1] += 1
                    allowed = state[1] <= self.limit
        for summary in due:  # outside the lock: writing runs the filter again
            self._write(summary)
        return allowed

    def flush(self) -> None:
        """Write the summaries of every kind with suppressed lines, window over or not."""
        with self._lock:
            due = self._sweep(None)
        for summary in due:
            self._write(summary)

    def _sweep(self, now: float | None) -> list[logging.LogRecord]:
        """Close the windows that ended (all of them when `now` is None)."""
        due: list[logging.LogRecord] = []
        for kind, (start, _count, _template) in list(self._kinds.items()):
            if now is None or now - start >= self.window:
                due += self._close(kind)
        return due

    def _close(self, kind: tuple[str, int, str]) -> list[logging.LogRecord]:
        _start, count, template = self._kinds.pop(kind)
        if count <= self.limit:
            return []
        return [self._summary(kind, count - self.limit, template)]

    def _summary(self, kind: tuple[str, int, str], count: int, template: str) -> logging.LogRecord:
        name, level, _ = kind
        record = logging.LogRecord(
            name,
            level,
            __file__,
            0,
            "suppressed %d similar log lines in %s (at most %d per window): %s",
            (count, _seconds(self.window), self.limit, template[:200]),
            None,
        )
        record.mercury_summary = True
        return record

    def _write(self, record: logging.LogRecord) -> None:
        if self.emit is not None:
            self.emit(record)
        else:
            logging.getLogger(record.name).handle(record)


def _seconds(window: float) -> str:
    return f"{window:g}s"


def _noop(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
    return event_dict


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    return structlog.stdlib.get_logger(name)
