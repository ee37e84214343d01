"""Slack: the adapter (slack-bolt, Socket Mode or the HTTP Events API), its mrkdwn
formatting and its credential check. slack_sdk is imported only by `from_config`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mercury.adapters.slack.check import check_credentials
from mercury.config import Config, Secrets

if TYPE_CHECKING:
    from mercury.adapters.slack.adapter import SlackAdapter

__all__ = ["check_credentials", "from_config"]


def from_config(config: Config, secrets: Secrets) -> SlackAdapter:
    """The Slack adapter for `adapters.slack`; ValueError names a missing token."""
    from mercury.adapters.slack.adapter import SlackAdapter

    return SlackAdapter(config.adapters.slack, secrets)
