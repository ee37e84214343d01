"""Discord: the adapter (discord.py, REST API and gateway) and its credential check.
discord.py is imported only by `from_config`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mercury.adapters.base import require_secrets
from mercury.adapters.discord.check import check_credentials
from mercury.config import Config, DiscordConfig, Secrets

if TYPE_CHECKING:
    from mercury.adapters.discord.adapter import DiscordAdapter

__all__ = ["SETUP_DOC", "check_credentials", "from_config", "required_secrets"]

SETUP_DOC = "docs/setup-discord.md"


def required_secrets(section: DiscordConfig) -> tuple[str, ...]:
    """The bot token."""
    return ("discord_bot_token",)


def from_config(config: Config, secrets: Secrets) -> DiscordAdapter:
    """The Discord adapter for `adapters.discord`; ValueError names a missing token."""
    require_secrets("discord", required_secrets(config.adapters.discord), secrets)
    from mercury.adapters.discord.adapter import DiscordAdapter

    return DiscordAdapter(config.adapters.discord, secrets)
