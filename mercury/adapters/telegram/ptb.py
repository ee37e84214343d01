"""python-telegram-bot, hardened for Mercury: a bot whose getUpdates survives a
malformed update, and a log filter that keeps the bot token (part of every Bot API URL)
out of the telegram, httpx and httpcore loggers."""

from __future__ import annotations

import logging
from typing import Any

from telegram import Update
from telegram.ext import ExtBot

from mercury.logging import REDACTED, get_logger

log = get_logger("mercury.adapters.telegram")

_LOGGER_ROOTS = ("telegram", "httpx", "httpcore")


class TokenFilter(logging.Filter):
    """Replace the bot token in log records (it is part of every Bot API URL)."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self._token = token
        self._filtered: list[logging.Logger] = []

    def install(self) -> None:
        """Filter every logger under the telegram, httpx and httpcore roots."""
        names = [
            name
            for name in list(logging.root.manager.loggerDict)
            if name.split(".")[0] in _LOGGER_ROOTS
        ]
        for name in {*names, *_LOGGER_ROOTS}:
            logger = logging.getLogger(name)
            if self not in logger.filters:
                logger.addFilter(self)
                self._filtered.append(logger)

    def remove(self) -> None:
        for logger in self._filtered:
            logger.removeFilter(self)
        self._filtered.clear()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken record is the logging module's problem, not ours
            return True
        # Freeze the message now: PTB logs dicts it later mutates (getFile's result gets
        # the token-bearing download URL after the debug line), so formatting later leaks.
        record.msg = message.replace(self._token, REDACTED)
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            if self._token in text:
                record.exc_text = text.replace(self._token, REDACTED)
        return True


class SafeBot(ExtBot[None]):
    """ExtBot whose getUpdates survives a malformed update.

    PTB parses a whole getUpdates batch at once; one update it cannot parse fails the batch
    without advancing the offset, so the same batch is fetched (and fails) forever. Here
    each raw update is checked first and a broken one is replaced by an empty Update with
    the same id: it is logged, skipped by the handler, and confirmed by the next offset.
    """

    async def _post(self, endpoint: str, data: Any = None, **kwargs: Any) -> Any:
        result = await super()._post(endpoint, data, **kwargs)
        if endpoint != "getUpdates" or not isinstance(result, list):
            return result
        cleaned: list[Any] = []
        for raw in result:
            if parse_update(raw, self) is not None:
                cleaned.append(raw)
            elif isinstance(raw, dict) and isinstance(raw.get("update_id"), int):
                cleaned.append({"update_id": raw["update_id"]})
        return cleaned


def parse_update(raw: Any, bot: ExtBot[Any]) -> Update | None:
    """`raw` as an Update, or None after logging why it is skipped.

    Polling and the webhook both go through here, so a malformed update is logged the same
    way and never stops the other updates.
    """
    try:
        return Update.de_json(raw, bot)
    except Exception as exc:
        log.warning(
            "telegram update malformed, skipped",
            update_id=raw.get("update_id") if isinstance(raw, dict) else None,
            error=f"{type(exc).__name__}: {exc}",
        )
        return None
