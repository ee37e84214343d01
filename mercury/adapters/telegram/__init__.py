"""Telegram: the adapter (python-telegram-bot, long polling or a webhook), its
Markdown-to-HTML formatting and its credential check. python-telegram-bot is imported
only by `from_config`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mercury.adapters.telegram.check import check_credentials
from mercury.config import Config, Secrets, TelegramConfig

if TYPE_CHECKING:
    from mercury.adapters.telegram.adapter import TelegramAdapter

__all__ = ["SETUP_DOC", "check_credentials", "from_config", "required_secrets"]

SETUP_DOC = "docs/setup-telegram.md"


def required_secrets(section: TelegramConfig) -> tuple[str, ...]:
    """The bot token, and in webhook mode the secret Telegram sends with every update."""
    if section.mode == "webhook":
        return ("telegram_bot_token", "telegram_webhook_secret")
    return ("telegram_bot_token",)


def from_config(config: Config, secrets: Secrets) -> TelegramAdapter:
    """The Telegram adapter for `adapters.telegram`; ValueError names a missing token or
    setting (webhook mode needs its secret and `server.public_url`)."""
    from mercury.adapters.telegram.adapter import TelegramAdapter

    return TelegramAdapter(config.adapters.telegram, secrets, public_url=config.server.public_url)
