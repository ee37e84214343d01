"""What every platform's live credential check (`mercury doctor`) shares: one JSON
request with a token-free failure reason, the rows for "unreachable" and "no token".

A platform's token may sit in the URL (Telegram) or in an error text, so nothing here
ever shows a URL's path, and every text that reaches a row is scrubbed of the token.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import aiohttp

from mercury.checks import CheckResult, Status
from mercury.config import SECRET_ENV

# How long one platform credential check may take (connect + answer).
PLATFORM_TIMEOUT = 10.0


class Unreachable(Exception):
    """The platform API could not be reached or did not speak its protocol."""


def host(url: str) -> str:
    """`host[:port]` of a URL: never its path (a Telegram URL path holds the token)."""
    try:
        parts = urlsplit(url)
        hostname = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "an invalid URL"
    if not hostname:
        return "an invalid URL"
    return f"{hostname}:{port}" if port else hostname


def scrub(text: str, secrets: list[str]) -> str:
    """`text` without any of `secrets` or anything shaped like a credential."""
    from mercury.logging import REDACTED, scrub_text

    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return scrub_text(text)


def network_reason(exc: BaseException, timeout: float | None) -> str:
    """A short, token-free reason for a failed request."""
    if isinstance(exc, TimeoutError):
        return f"no answer in {timeout or PLATFORM_TIMEOUT:g} s"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return exc.os_error.strerror or type(exc.os_error).__name__
    if isinstance(exc, aiohttp.InvalidURL):
        return "invalid URL"
    return type(exc).__name__


async def request_json(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    headers: dict[str, str],
    secret: str,
) -> tuple[int, object]:
    """(HTTP status, decoded JSON body); Unreachable with a token-free reason otherwise."""
    where = host(url)
    if where == "an invalid URL":
        raise Unreachable("the API base URL is not a valid URL")
    try:
        async with session.request(method, url, headers=headers, allow_redirects=False) as resp:
            status = resp.status
            try:
                body = await resp.json(content_type=None)
            except ValueError:
                raise Unreachable(f"{where} answered HTTP {status} without JSON") from None
    except Unreachable:
        raise
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        reason = scrub(network_reason(exc, session.timeout.total), [secret])
        raise Unreachable(f"cannot reach {where}: {reason}") from None
    return status, body


def unreachable(name: str, setting: str, exc: Unreachable, secret: str) -> CheckResult:
    """The failed row for an API that could not be reached (`setting` under adapters.)."""
    return CheckResult(
        name,
        Status.FAIL,
        scrub(str(exc), [secret]),
        f"check adapters.{setting} and this machine's connection to it (DNS, proxy, firewall)",
    )


def token_missing(platform: str, secret: str) -> CheckResult:
    """The skip row of an enabled platform without its token (the token row fails)."""
    return CheckResult(
        f"{platform} credentials accepted",
        Status.SKIP,
        f"needs {SECRET_ENV[secret]}",
        "fix the token check above",
    )


async def with_session(
    check: Callable[[aiohttp.ClientSession], Awaitable[CheckResult]],
    session: aiohttp.ClientSession | None,
    timeout: float,
) -> list[CheckResult]:
    """`check` run with `session`, or with a session of its own bounded by `timeout`."""
    if session is not None:
        return [await check(session)]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as own:
        return [await check(own)]
