"""Discord's live credential check for `mercury doctor`: `GET /users/@me` with the token."""

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
from mercury.config import Config, DiscordConfig, Secrets


async def check_credentials(
    config: Config,
    secrets: Secrets,
    *,
    session: aiohttp.ClientSession | None = None,
    timeout: float = PLATFORM_TIMEOUT,
) -> list[CheckResult]:
    """The "discord credentials accepted" row (a skip row without the bot token)."""
    if secrets.discord_bot_token is None:
        return [token_missing("discord", "discord_bot_token")]
    discord = config.adapters.discord
    return await with_session(lambda s: check_discord(discord, secrets, s), session, timeout)


async def check_discord(
    config: DiscordConfig, secrets: Secrets, session: aiohttp.ClientSession
) -> CheckResult:
    """`GET /users/@me` with the bot token."""
    name = "discord credentials accepted"
    assert secrets.discord_bot_token is not None
    token = secrets.discord_bot_token.get_secret_value()
    url = config.api_base_url.rstrip("/") + "/users/@me"
    try:
        status, body = await request_json(
            session, "GET", url, {"Authorization": f"Bot {token}"}, token
        )
    except Unreachable as exc:
        return unreachable(name, "discord.api_base_url", exc, token)
    if status == 401:
        return CheckResult(
            name,
            Status.FAIL,
            "users/@me: 401 Unauthorized",
            "MERCURY_DISCORD_BOT_TOKEN was refused: in the Discord Developer Portal open your "
            "application's Bot page, Reset Token, and copy the new token into .env "
            "(the bare token, without a 'Bot ' prefix)",
        )
    if status != 200 or not isinstance(body, dict) or "id" not in body:
        return CheckResult(
            name,
            Status.FAIL,
            f"{host(url)} answered HTTP {status}, not like the Discord API",
            "check adapters.discord.api_base_url (default https://discord.com/api/v10)",
        )
    who = f"{scrub(str(body.get('username', '?')), [token])}#{scrub(str(body['id']), [token])}"
    if not body.get("bot"):
        return CheckResult(
            name,
            Status.FAIL,
            f"{who} is not a bot account",
            "use the token from your application's Bot page, not a user token",
        )
    return CheckResult(name, Status.OK, f"bot {who}")
