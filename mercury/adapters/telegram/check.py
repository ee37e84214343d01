"""Telegram's live credential check for `mercury doctor`: `getMe` with the bot token."""

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
from mercury.config import Config, Secrets, TelegramConfig, TriggerConfig


async def check_credentials(
    config: Config,
    secrets: Secrets,
    *,
    session: aiohttp.ClientSession | None = None,
    timeout: float = PLATFORM_TIMEOUT,
) -> list[CheckResult]:
    """The "telegram credentials accepted" row (a skip row without the bot token)."""
    if secrets.telegram_bot_token is None:
        return [token_missing("telegram", "telegram_bot_token")]
    telegram, trigger = config.adapters.telegram, config.trigger
    return await with_session(
        lambda s: check_telegram(telegram, secrets, s, trigger), session, timeout
    )


async def check_telegram(
    config: TelegramConfig,
    secrets: Secrets,
    session: aiohttp.ClientSession,
    trigger: TriggerConfig | None = None,
) -> CheckResult:
    """`getMe` with the bot token (which is part of the URL, so the URL is never shown).

    Warns when privacy mode is on but `trigger.match` needs every group message.
    """
    name = "telegram credentials accepted"
    assert secrets.telegram_bot_token is not None
    token = secrets.telegram_bot_token.get_secret_value()
    url = config.api_base_url + token + "/getMe"
    try:
        status, body = await request_json(session, "GET", url, {}, token)
    except Unreachable as exc:
        return unreachable(name, "telegram.api_base_url", exc, token)
    if status in (401, 404):
        return CheckResult(
            name,
            Status.FAIL,
            f"getMe: HTTP {status} ({'Unauthorized' if status == 401 else 'Not Found'})",
            "MERCURY_TELEGRAM_BOT_TOKEN was refused: get the token from @BotFather "
            "(/mybots > your bot > API Token; it looks like 123456789:AA…)",
        )
    result = body.get("result") if isinstance(body, dict) else None
    if status != 200 or not isinstance(result, dict) or not result.get("username"):
        return CheckResult(
            name,
            Status.FAIL,
            f"{host(url)} answered HTTP {status}, not like the Telegram Bot API",
            "check adapters.telegram.api_base_url (default https://api.telegram.org/bot)",
        )
    handle = "@" + scrub(str(result["username"]), [token])
    if (
        trigger is not None
        and trigger.match != "mention"
        and result.get("can_read_all_group_messages") is False
    ):
        return CheckResult(
            name,
            Status.WARN,
            f"{handle}; privacy mode is on: in groups it sees only mentions, commands, replies",
            f"trigger.match is {trigger.match}: send /setprivacy to @BotFather, pick "
            f"{handle}, Disable, then remove and re-add the bot to each group",
            required=False,
        )
    return CheckResult(name, Status.OK, handle)
