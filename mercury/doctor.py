"""`mercury doctor`: each check an operator needs before `mercury run`, with a fix hint."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

import aiohttp

from mercury.config import (
    SECRET_ENV,
    Config,
    ConfigError,
    DiscordConfig,
    LoadedConfig,
    Secrets,
    SlackConfig,
    TelegramConfig,
    TriggerConfig,
)
from mercury.logging import first_line

# How long one platform credential check may take (connect + answer).
PLATFORM_TIMEOUT = 10.0
_SETUP_DOCS = {
    "slack": "docs/setup-slack.md",
    "discord": "docs/setup-discord.md",
    "telegram": "docs/setup-telegram.md",
    "web": "docs/web-chat.md",
}


class Status(StrEnum):
    OK = "ok"
    FAIL = "fail"
    WARN = "warn"
    SKIP = "skip"


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: Status
    detail: str
    hint: str = ""
    required: bool = True

    @property
    def failed(self) -> bool:
        return self.required and self.status is Status.FAIL


def _env(secret: str) -> str:
    return SECRET_ENV[secret]


def check_config(loaded: LoadedConfig | None, error: ConfigError | None) -> CheckResult:
    if error is not None:
        return CheckResult(
            "config valid",
            Status.FAIL,
            "; ".join(error.problems),
            "fix the keys named above (mercury.example.yaml lists every key and its default)",
        )
    assert loaded is not None
    where = str(loaded.path) if loaded.path else "no mercury.yaml found: built-in defaults"
    status = Status.OK if loaded.path else Status.WARN
    return CheckResult(
        "config valid", status, where, "" if loaded.path else "run `mercury init` to create one"
    )


def check_docker() -> tuple[CheckResult, object | None]:
    from mercury.sandbox.engine import ENGINE_HINT, EngineUnavailable, connect_engine

    try:
        client, info = connect_engine(timeout=5)
    except EngineUnavailable as exc:
        return CheckResult("Docker engine reachable", Status.FAIL, str(exc), ENGINE_HINT), None
    detail = f"Docker {info.version} (API {info.api_version}) at {info.endpoint}"
    return CheckResult("Docker engine reachable", Status.OK, detail), client


def check_image(config: Config, client: object | None) -> CheckResult:
    name = "agent image present"
    if client is None:
        return CheckResult(name, Status.SKIP, "needs the Docker engine", "fix the Docker check")
    from docker.errors import DockerException, ImageNotFound

    try:
        image = client.images.get(config.container.image)  # type: ignore[attr-defined]
    except ImageNotFound:
        return CheckResult(
            name,
            Status.FAIL,
            f"{config.container.image} not found on the engine",
            "build it: mercury image build",
        )
    except DockerException as exc:
        return CheckResult(name, Status.FAIL, str(exc).splitlines()[0], "check the Docker engine")
    return CheckResult(name, Status.OK, f"{config.container.image} ({image.short_id})")


async def check_database(config: Config) -> CheckResult:
    from mercury.storage import safe_url
    from mercury.storage.migrate import current_revision, head_revision

    name = "database reachable and migrated"
    url = config.resolved_database_url()
    shown = safe_url(url)
    try:
        current = await asyncio.wait_for(current_revision(url), timeout=10)
    except Exception as exc:  # any driver error means "not reachable"
        return CheckResult(
            name,
            Status.FAIL,
            f"{shown}: {first_line(exc)}",
            "check database_url and that the server is running",
        )
    head = head_revision()
    if current != head:
        return CheckResult(
            name,
            Status.FAIL,
            f"{shown}: schema at {current or 'empty'}, code expects {head}",
            "run `mercury db upgrade` (mercury run also migrates on start)",
        )
    return CheckResult(name, Status.OK, f"{shown} at revision {head}")


def check_data_dir(config: Config) -> CheckResult:
    path = config.data_dir
    name = "data dir writable"
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".doctor-"):
            pass
    except OSError as exc:
        return CheckResult(
            name, Status.FAIL, f"{path}: {exc.strerror}", "fix its permissions or set data_dir"
        )
    return CheckResult(name, Status.OK, str(path))


def check_host_side(config: Config) -> list[CheckResult]:
    """Who agents run as, whether the data dir is private, and the disk they may fill."""
    import stat

    from mercury.sandbox.identity import IdentityError, container_identity, host_owner_of
    from mercury.sandbox.spaces import free_bytes, image_support

    results: list[CheckResult] = []
    name = "container user"
    try:
        ident = container_identity(config.container)
    except IdentityError as exc:
        results.append(CheckResult(name, Status.FAIL, str(exc), "set container.user to auto"))
    else:
        owner = host_owner_of(ident)
        if owner:
            results.append(
                CheckResult(
                    name,
                    Status.WARN,
                    f"{ident.user}: {owner}, who could read and change every space",
                    "set container.user to an unused uid:gid (docs/security.md)",
                    required=False,
                )
            )
        else:
            results.append(CheckResult(name, Status.OK, f"{ident.user} (no host account)"))
    path = config.data_dir
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        mode = 0o700  # made private by mercury run
    if mode & 0o077:
        results.append(
            CheckResult(
                "data dir private",
                Status.WARN,
                f"{path} is {mode:04o}: other host users can look inside",
                "mercury run makes it 0700 at start; or chmod 700 it now",
                required=False,
            )
        )
    else:
        results.append(CheckResult("data dir private", Status.OK, f"{path} is {mode:04o}"))
    disk = config.disk
    try:
        free = free_bytes(path if path.exists() else path.parent)
    except OSError as exc:
        results.append(CheckResult("free disk", Status.FAIL, f"{path}: {exc.strerror}"))
        return results
    no_images = image_support()
    size = f"{(disk.space_size or 0) / 1024**3:g} GiB"
    if disk.space_size is None:
        limit = "spaces have no size limit (disk.space_size: null)"
    elif disk.space_limit == "image" and no_images:
        results.append(
            CheckResult("free disk", Status.FAIL, f"disk.space_limit is image, but {no_images}")
        )
        return results
    elif disk.space_limit == "watch" or no_images:
        limit = f"spaces are watched at {size}" + (
            f" (no images: {no_images})" if no_images else ""
        )
    else:
        limit = f"spaces are filesystem images of {size}"
    gib = free / 1024**3
    if free < disk.min_free:
        results.append(
            CheckResult(
                "free disk",
                Status.FAIL,
                f"{gib:.1f} GiB free, under disk.min_free: no run starts until there is more",
                "free disk space in data_dir's filesystem or lower disk.min_free",
            )
        )
    else:
        results.append(CheckResult("free disk", Status.OK, f"{gib:.1f} GiB free; {limit}"))
    return results


def check_adapters(config: Config, secrets: Secrets) -> list[CheckResult]:
    present = secrets.present()
    results: list[CheckResult] = []

    def need(adapter: str, names: list[str], extra: str = "") -> None:
        missing = [_env(n) for n in names if n not in present]
        label = f"{adapter} adapter has its token"
        if missing:
            results.append(
                CheckResult(
                    label,
                    Status.FAIL,
                    f"missing {', '.join(missing)}{extra}",
                    f"set it in the environment or .env ({_SETUP_DOCS[adapter]})",
                )
            )
        else:
            results.append(
                CheckResult(label, Status.OK, ", ".join(_env(n) for n in names) + " set")
            )

    a = config.adapters
    if a.slack.enabled:
        second = "slack_app_token" if a.slack.mode == "socket" else "slack_signing_secret"
        need("slack", ["slack_bot_token", second], f" (mode {a.slack.mode})")
    if a.discord.enabled:
        need("discord", ["discord_bot_token"])
    if a.telegram.enabled:
        names = ["telegram_bot_token"]
        if a.telegram.mode == "webhook":
            names.append("telegram_webhook_secret")
        need("telegram", names)
    if a.web.enabled or config.dashboard.enabled:
        need("web", ["dashboard_password"], " (dashboard and web chat login)")
    if not results:
        results.append(
            CheckResult("adapters", Status.WARN, "no adapter enabled", "enable one in mercury.yaml")
        )
    return results


# --------------------------------------------------------------------------- platforms


class _Unreachable(Exception):
    """The platform API could not be reached or did not speak its protocol."""


def _host(url: str) -> str:
    """`host[:port]` of a URL: never its path (a Telegram URL path holds the token)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "an invalid URL"
    if not host:
        return "an invalid URL"
    return f"{host}:{port}" if port else host


def _scrub(text: str, secrets: list[str]) -> str:
    """`text` without any of `secrets` or anything shaped like a credential."""
    from mercury.logging import REDACTED, scrub_text

    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return scrub_text(text)


def _network_reason(exc: BaseException, timeout: float | None) -> str:
    """A short, token-free reason for a failed request."""
    if isinstance(exc, TimeoutError):
        return f"no answer in {timeout or PLATFORM_TIMEOUT:g} s"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return exc.os_error.strerror or type(exc.os_error).__name__
    if isinstance(exc, aiohttp.InvalidURL):
        return "invalid URL"
    return type(exc).__name__


async def _request_json(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    headers: dict[str, str],
    secret: str,
) -> tuple[int, object]:
    """(HTTP status, decoded JSON body); _Unreachable with a token-free reason otherwise."""
    host = _host(url)
    if host == "an invalid URL":
        raise _Unreachable("the API base URL is not a valid URL")
    try:
        async with session.request(method, url, headers=headers, allow_redirects=False) as resp:
            status = resp.status
            try:
                body = await resp.json(content_type=None)
            except ValueError:
                raise _Unreachable(f"{host} answered HTTP {status} without JSON") from None
    except _Unreachable:
        raise
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise _Unreachable(
            f"cannot reach {host}: {_scrub(_network_reason(exc, session.timeout.total), [secret])}"
        ) from None
    return status, body


def _unreachable(name: str, setting: str, exc: _Unreachable, secret: str) -> CheckResult:
    return CheckResult(
        name,
        Status.FAIL,
        _scrub(str(exc), [secret]),
        f"check adapters.{setting} and this machine's connection to it (DNS, proxy, firewall)",
    )


async def check_slack_credentials(
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
        status, body = await _request_json(
            session, "POST", base + "auth.test", {"Authorization": f"Bearer {token}"}, token
        )
    except _Unreachable as exc:
        return _unreachable(name, "slack.api_base_url", exc, token)
    if not isinstance(body, dict) or "ok" not in body:
        return CheckResult(
            name,
            Status.FAIL,
            f"{_host(base)} answered HTTP {status}, not like the Slack Web API",
            "check adapters.slack.api_base_url (default https://slack.com/api/)",
        )
    if not body.get("ok"):
        error = _scrub(str(body.get("error") or f"HTTP {status}"), [token])
        return CheckResult(
            name,
            Status.FAIL,
            f"auth.test: {error}",
            f"MERCURY_SLACK_BOT_TOKEN was refused ({error}): copy the Bot User OAuth Token "
            "(xoxb-…) from your app's OAuth & Permissions page (reinstall the app to the "
            "workspace if it was removed)",
        )
    user = _scrub(str(body.get("user") or body.get("user_id") or "?"), [token])
    team = _scrub(str(body.get("team") or "?"), [token])
    team_id = _scrub(str(body.get("team_id") or "?"), [token])
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


async def check_discord_credentials(
    config: DiscordConfig, secrets: Secrets, session: aiohttp.ClientSession
) -> CheckResult:
    """`GET /users/@me` with the bot token."""
    name = "discord credentials accepted"
    assert secrets.discord_bot_token is not None
    token = secrets.discord_bot_token.get_secret_value()
    url = config.api_base_url.rstrip("/") + "/users/@me"
    try:
        status, body = await _request_json(
            session, "GET", url, {"Authorization": f"Bot {token}"}, token
        )
    except _Unreachable as exc:
        return _unreachable(name, "discord.api_base_url", exc, token)
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
            f"{_host(url)} answered HTTP {status}, not like the Discord API",
            "check adapters.discord.api_base_url (default https://discord.com/api/v10)",
        )
    who = f"{_scrub(str(body.get('username', '?')), [token])}#{_scrub(str(body['id']), [token])}"
    if not body.get("bot"):
        return CheckResult(
            name,
            Status.FAIL,
            f"{who} is not a bot account",
            "use the token from your application's Bot page, not a user token",
        )
    return CheckResult(name, Status.OK, f"bot {who}")


async def check_telegram_credentials(
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
        status, body = await _request_json(session, "GET", url, {}, token)
    except _Unreachable as exc:
        return _unreachable(name, "telegram.api_base_url", exc, token)
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
            f"{_host(url)} answered HTTP {status}, not like the Telegram Bot API",
            "check adapters.telegram.api_base_url (default https://api.telegram.org/bot)",
        )
    handle = "@" + _scrub(str(result["username"]), [token])
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


async def check_platform_credentials(
    config: Config, secrets: Secrets, *, timeout: float = PLATFORM_TIMEOUT
) -> list[CheckResult]:
    """One live credential check per enabled Slack/Discord/Telegram adapter, concurrently.

    An enabled adapter without its token gets a skip row (the token row already fails);
    with no platform adapter enabled nothing touches the network.
    """
    a = config.adapters
    rows: list[CheckResult | None] = []
    pending: list[str] = []
    plan = (
        ("slack", a.slack.enabled, secrets.slack_bot_token, "slack_bot_token"),
        ("discord", a.discord.enabled, secrets.discord_bot_token, "discord_bot_token"),
        ("telegram", a.telegram.enabled, secrets.telegram_bot_token, "telegram_bot_token"),
    )
    for platform, enabled, token, secret in plan:
        if not enabled:
            continue
        if token is None:
            rows.append(
                CheckResult(
                    f"{platform} credentials accepted",
                    Status.SKIP,
                    f"needs {_env(secret)}",
                    "fix the token check above",
                )
            )
        else:
            rows.append(None)
            pending.append(platform)
    if not pending:
        return [r for r in rows if r is not None]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        calls = {
            "slack": lambda: check_slack_credentials(a.slack, secrets, session),
            "discord": lambda: check_discord_credentials(a.discord, secrets, session),
            "telegram": lambda: check_telegram_credentials(
                a.telegram, secrets, session, config.trigger
            ),
        }
        done = iter(await asyncio.gather(*(calls[p]() for p in pending)))
    return [r if r is not None else next(done) for r in rows]


def check_model(config: Config, secrets: Secrets) -> CheckResult:
    present = secrets.present()
    usable, problems = [], []
    for i, leg in enumerate(config.model.chain):
        key = f"{leg.provider}_api_key"
        if key in present or leg.base_url:
            usable.append(f"{leg.provider}/{leg.model}")
        else:
            problems.append(f"model.chain[{i}] {leg.provider}: no {_env(key)} and no base_url")
    name = "model provider key or base URL"
    if not usable:
        return CheckResult(
            name,
            Status.FAIL,
            "; ".join(problems),
            "set ANTHROPIC_API_KEY / OPENAI_API_KEY in .env, or a base_url for a local server",
        )
    if problems:
        return CheckResult(name, Status.WARN, "; ".join(problems), "that leg will be skipped")
    return CheckResult(name, Status.OK, ", ".join(usable))


async def run_checks(
    load: Callable[[], LoadedConfig],
) -> list[CheckResult]:
    """Every check, in the order `mercury doctor` prints them."""
    try:
        loaded: LoadedConfig | None = load()
        error = None
    except ConfigError as exc:
        loaded, error = None, exc
    results = [check_config(loaded, error)]
    docker_result, client = await asyncio.to_thread(check_docker)
    results.append(docker_result)
    if loaded is None:
        skipped = [
            "agent image present",
            "database reachable and migrated",
            "data dir writable",
            "container user",
            "data dir private",
            "free disk",
            "adapter tokens",
            "platform credentials",
            "model provider key or base URL",
        ]
        results += [CheckResult(n, Status.SKIP, "needs a valid config") for n in skipped]
        return results
    config = loaded.config
    results.append(await asyncio.to_thread(check_image, config, client))
    results.append(check_data_dir(config))
    results += check_host_side(config)
    results.append(await check_database(config))
    results += check_adapters(config, loaded.secrets)
    results += await check_platform_credentials(config, loaded.secrets)
    results.append(check_model(config, loaded.secrets))
    if client is not None:
        client.close()  # type: ignore[attr-defined]
    return results
