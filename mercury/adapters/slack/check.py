"""Slack's live credential check for `mercury doctor`: `auth.test` with the bot token."""

from __future__ import annotations

import aiohttp

from mercury.adapters.checkhttp import (
    PLATFORM_TIMEOUT,
    Unreachable,
    host,
    request_json,
    scrub,
    token_missing,
    unreachable,
    with_session,
)
from mercury.checks import CheckResult, Status
from mercury.config import Config, Secrets, SlackConfig


async def check_credentials(
    config: Config,
    secrets: Secrets,
    *,
    session: aiohttp.ClientSession | None = None,
    timeout: float = PLATFORM_TIMEOUT,
) -> list[CheckResult]:
    """The "slack credentials accepted" row (a skip row without the bot token)."""
    if secrets.slack_bot_token is None:
        return [token_missing("slack", "slack_bot_token")]
    slack = config.adapters.slack
    return await with_session(lambda s: check_slack(slack, secrets, s), session, timeout)


async def check_slack(
    config: SlackConfig, secrets: Secrets, session: aiohttp.ClientSession
) -> CheckResult:
    """`auth.test` with the bot token; in Socket Mode also the app token's `xapp-` shape.

    `apps.connections.open` is not called: it would open a Socket Mode session.
    """
    name = "slack credentials accepted"
    assert secrets.slack_bot_token is not None
    token = secrets.slack_bot_token.get_secret_value()
    base = config.api_base_url if config.api_base_url.endswith("/") else config.api_base_url + "/"
    try:
        status, body = await request_json(
            session, "POST", base + "auth.test", {"Authorization": f"Bearer {token}"}, token
        )
    except Unreachable as exc:
        return unreachable(name, "slack.api_base_url", exc, token)
    if not isinstance(body, dict) or "ok" not in body:
        return CheckResult(
            name,
            Status.FAIL,
            f"{host(base)} answered HTTP {status}, not like the Slack Web API",
            "check adapters.slack.api_base_url (default https://slack.com/api/)",
        )
    if not body.get("ok"):
        error = scrub(str(body.get("error") or f"HTTP {status}"), [token])
        return CheckResult(
            name,
            Status.FAIL,
            f"auth.test: {error}",
            f"MERCURY_SLACK_BOT_TOKEN was refused ({error}): copy the Bot User OAuth Token "
            "(xoxb-…) from your app's OAuth & Permissions page (reinstall the app to the "
            "workspace if it was removed)",
        )
    user = scrub(str(body.get("user") or body.get("user_id") or "?"), [token])
    team = scrub(str(body.get("team") or "?"), [token])
    team_id = scrub(str(body.get("team_id") or "?"), [token])
    if not body.get("bot_id"):
        return CheckResult(
            name,
            Status.FAIL,
            f"@{user} in team {team} ({team_id}) is a user, not a bot",
            "MERCURY_SLACK_BOT_TOKEN must be the Bot User OAuth Token (xoxb-…), "
            "not a user token (xoxp-…)",
        )
    detail = f"bot @{user} in team {team} ({team_id})"
    if config.mode == "socket" and secrets.slack_app_token is not None:
        if not secrets.slack_app_token.get_secret_value().startswith("xapp-"):
            return CheckResult(
                name,
                Status.FAIL,
                detail + "; MERCURY_SLACK_APP_TOKEN is not an app-level token",
                "Socket Mode needs an app-level token (xapp-…) with connections:write: "
                "Basic Information > App-Level Tokens in your app's settings",
            )
        detail += "; app token is xapp-… (mercury run opens the Socket Mode session)"
    return CheckResult(name, Status.OK, detail)
