"""Slack: the adapter (slack-bolt, Socket Mode or the HTTP Events API), its mrkdwn
formatting and its credential check. slack_sdk is imported only by `from_config`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mercury.adapters.slack.check import check_credentials
from mercury.config import Config, Secrets, SlackConfig

if TYPE_CHECKING:
    from mercury.adapters.slack.adapter import SlackAdapter

__all__ = ["SETUP_DOC", "check_credentials", "from_config", "required_secrets"]

SETUP_DOC = "docs/setup-slack.md"


def required_secrets(section: SlackConfig) -> tuple[str, ...]:
    """The bot token, and the app token (Socket Mode) or the signing secret (HTTP mode)."""
    second = "slack_app_token" if section.mode == "socket" else "slack_signing_secret"
    return ("slack_bot_token", second)


def from_config(config: Config, secrets: Secrets) -> SlackAdapter:
    """The Slack adapter for `adapters.slack`; ValueError names a missing token."""
    from mercury.adapters.slack.adapter import SlackAdapter

    return SlackAdapter(config.adapters.slack, secrets)
