"""Discord: the adapter (discord.py, REST API and gateway) and its credential check.
discord.py is imported only by `from_config`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mercury.adapters.discord.check import check_credentials
from mercury.config import Config, Secrets

if TYPE_CHECKING:
    from mercury.adapters.discord.adapter import DiscordAdapter

__all__ = ["check_credentials", "from_config"]


def from_config(config: Config, secrets: Secrets) -> DiscordAdapter:
    """The Discord adapter for `adapters.discord`; ValueError names a missing token."""
    token = secrets.discord_bot_token
    if token is None or not token.get_secret_value().strip():
        raise ValueError("discord: MERCURY_DISCORD_BOT_TOKEN is not set")
    from mercury.adapters.discord.adapter import DiscordAdapter

    return DiscordAdapter(config.adapters.discord, secrets)
