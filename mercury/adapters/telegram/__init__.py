"""Telegram: the adapter (python-telegram-bot, long polling or a webhook), its
Markdown-to-HTML formatting and its credential check. python-telegram-bot is imported
only by `from_config`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mercury.adapters.telegram.check import check_credentials
from mercury.config import Config, Secrets

if TYPE_CHECKING:
    from mercury.adapters.telegram.adapter import TelegramAdapter

__all__ = ["check_credentials", "from_config"]


def from_config(config: Config, secrets: Secrets) -> TelegramAdapter:
    """The Telegram adapter for `adapters.telegram`; ValueError names a missing token or
    setting (webhook mode needs its secret and `server.public_url`)."""
    from mercury.adapters.telegram.adapter import TelegramAdapter

    return TelegramAdapter(config.adapters.telegram, secrets, public_url=config.server.public_url)
