"""`mercury doctor` checks each enabled chat platform's credentials against the platform.

Each check runs against the loopback fake of its platform (tests/fakes/): the fakes refuse
a wrong token the way the platform does (Slack: HTTP 200 `ok: false, invalid_auth`;
Discord: 401; Telegram: 401), so a good token gives an ok row naming the bot, a wrong one
a failed row with the fix, and a closed port a failed row naming the host. No row, and
no CLI output, ever contains a token.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from mercury.checks import CheckResult, Status
from mercury.config import load_config
from mercury.doctor import run_checks
from tests.fakes.discord_server import BOT_ID, FakeDiscord
from tests.fakes.discord_server import TOKEN as DISCORD_TOKEN
from tests.fakes.slack_server import FakeSlack
from tests.fakes.telegram_server import BOT_USERNAME, FakeTelegram

# Not shaped like any token scrub_text knows, so only the doctor's own care keeps it out.
TELEGRAM_TOKEN = "fake-telegram-token-0123456789"
WRONG = {
    "slack": "xoxb-wrong-token-000000000000",
    "discord": "wrong-discord-token.abc.def",
    "telegram": "wrong-telegram-token-987654321",
}
ALL_TOKENS = [
    FakeSlack.BOT_TOKEN,
    FakeSlack.APP_TOKEN,
    FakeSlack.SIGNING_SECRET,
    DISCORD_TOKEN,
    TELEGRAM_TOKEN,
    *WRONG.values(),
]


# --------------------------------------------------------------------------- helpers


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    fake = FakeSlack()
    await fake.start()
    yield fake
    await fake.close()


@pytest.fixture
async def discord() -> AsyncIterator[FakeDiscord]:
    fake = FakeDiscord()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def telegram() -> AsyncIterator[FakeTelegram]:
    fake = FakeTelegram(TELEGRAM_TOKEN)
    await fake.start()
    yield fake
    await fake.close()


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(tmp_path: Path, adapters: dict[str, Any], **extra: Any) -> Path:
    data = {"data_dir": str(tmp_path / "data"), "adapters": adapters, **extra}
    path = tmp_path / "mercury.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


async def doctor_rows(
    tmp_path: Path, adapters: dict[str, Any], env: dict[str, str], **extra: Any
) -> list[CheckResult]:
    """run_checks on a mercury.yaml in tmp_path with `env` as the whole environment."""
    path = write_config(tmp_path, adapters, **extra)
    results = await run_checks(lambda: load_config(path, env=env))
    assert_no_token(results)
    return results


def row(results: list[CheckResult], name: str) -> CheckResult:
    found = [r for r in results if r.name == name]
    assert len(found) == 1, f"{name!r} not exactly once in {[r.name for r in results]}"
    return found[0]


def assert_no_token(results: list[CheckResult]) -> None:
    text = "\n".join(f"{r.name} {r.detail} {r.hint}" for r in results)
    for token in ALL_TOKENS:
        assert token not in text


# --------------------------------------------------------------------------- Slack


async def test_slack_socket_mode_good_token_names_the_bot(tmp_path: Path, slack: FakeSlack) -> None:
    env = {
        "MERCURY_SLACK_BOT_TOKEN": FakeSlack.BOT_TOKEN,
        "MERCURY_SLACK_APP_TOKEN": FakeSlack.APP_TOKEN,
    }
    results = await doctor_rows(
        tmp_path, {"slack": {"enabled": True, "api_base_url": slack.api_url}}, env
    )
    r = row(results, "slack credentials accepted")
    assert r.status is Status.OK, r
    assert "bot @mercury in team Fake Team (T0001)" in r.detail
    assert row(results, "slack adapter has its token").status is Status.OK
    [call] = slack.calls_to("auth.test")
    assert call.token == FakeSlack.BOT_TOKEN
    # Opening a Socket Mode URL would start a session: the doctor must not do it.
    assert slack.calls_to("apps.connections.open") == []


async def test_slack_wrong_token_fails_with_the_hint(tmp_path: Path, slack: FakeSlack) -> None:
    env = {
        "MERCURY_SLACK_BOT_TOKEN": WRONG["slack"],
        "MERCURY_SLACK_APP_TOKEN": FakeSlack.APP_TOKEN,
    }
    results = await doctor_rows(
        tmp_path, {"slack": {"enabled": True, "api_base_url": slack.api_url}}, env
    )
    r = row(results, "slack credentials accepted")
    assert r.status is Status.FAIL and r.failed
    assert r.detail == "auth.test: invalid_auth"
    assert r.hint.startswith(
        "MERCURY_SLACK_BOT_TOKEN was refused (invalid_auth): copy the Bot User OAuth Token "
        "(xoxb-…) from your app's OAuth & Permissions page"
    )
    assert slack.calls_to("auth.test")[0].token == WRONG["slack"]


async def test_slack_app_token_without_xapp_prefix_fails(tmp_path: Path, slack: FakeSlack) -> None:
    env = {
        "MERCURY_SLACK_BOT_TOKEN": FakeSlack.BOT_TOKEN,
        "MERCURY_SLACK_APP_TOKEN": WRONG["slack"],  # a bot token pasted in the wrong place
    }
    results = await doctor_rows(
        tmp_path, {"slack": {"enabled": True, "api_base_url": slack.api_url}}, env
    )
    r = row(results, "slack credentials accepted")
    assert r.status is Status.FAIL
    assert "xapp-" in r.hint and "connections:write" in r.hint
    assert slack.calls_to("apps.connections.open") == []


async def test_slack_http_mode_good_token(tmp_path: Path, slack: FakeSlack) -> None:
    env = {
        "MERCURY_SLACK_BOT_TOKEN": FakeSlack.BOT_TOKEN,
        "MERCURY_SLACK_SIGNING_SECRET": FakeSlack.SIGNING_SECRET,
    }
    adapters = {"slack": {"enabled": True, "mode": "http", "api_base_url": slack.api_url}}
    results = await doctor_rows(tmp_path, adapters, env)
    r = row(results, "slack credentials accepted")
    assert r.status is Status.OK and "@mercury" in r.detail
    assert row(results, "slack adapter has its token").status is Status.OK


# --------------------------------------------------------------------------- Discord


async def test_discord_good_token_names_the_bot(tmp_path: Path, discord: FakeDiscord) -> None:
    env = {"MERCURY_DISCORD_BOT_TOKEN": DISCORD_TOKEN}
    adapters = {"discord": {"enabled": True, "api_base_url": discord.api_base_url}}
    results = await doctor_rows(tmp_path, adapters, env)
    r = row(results, "discord credentials accepted")
    assert r.status is Status.OK, r
    assert r.detail == f"bot mercury#{BOT_ID}"
    [call] = [c for c in discord.calls if c.path.endswith("/users/@me")]
    assert call.headers["Authorization"] == f"Bot {DISCORD_TOKEN}"


async def test_discord_wrong_token_fails_with_the_hint(
    tmp_path: Path, discord: FakeDiscord
) -> None:
    env = {"MERCURY_DISCORD_BOT_TOKEN": WRONG["discord"]}
    adapters = {"discord": {"enabled": True, "api_base_url": discord.api_base_url}}
    results = await doctor_rows(tmp_path, adapters, env)
    r = row(results, "discord credentials accepted")
    assert r.status is Status.FAIL and r.failed
    assert "401" in r.detail
    assert "MERCURY_DISCORD_BOT_TOKEN was refused" in r.hint
    assert "Developer Portal" in r.hint and "Bot page" in r.hint and "Reset Token" in r.hint


# --------------------------------------------------------------------------- Telegram


async def test_telegram_good_token_names_the_bot(tmp_path: Path, telegram: FakeTelegram) -> None:
    env = {"MERCURY_TELEGRAM_BOT_TOKEN": TELEGRAM_TOKEN}
    adapters = {
        "telegram": {
            "enabled": True,
            "api_base_url": telegram.base_url,
            "file_base_url": telegram.file_url,
        }
    }
    results = await doctor_rows(tmp_path, adapters, env)
    r = row(results, "telegram credentials accepted")
    assert r.status is Status.OK, r
    assert r.detail == f"@{BOT_USERNAME}"
    assert [c.method for c in telegram.calls] == ["getMe"]


async def test_telegram_privacy_mode_warns_when_every_message_should_trigger(
    tmp_path: Path, telegram: FakeTelegram
) -> None:
    env = {"MERCURY_TELEGRAM_BOT_TOKEN": TELEGRAM_TOKEN}
    adapters = {"telegram": {"enabled": True, "api_base_url": telegram.base_url}}
    results = await doctor_rows(tmp_path, adapters, env, trigger={"match": "always"})
    r = row(results, "telegram credentials accepted")
    assert r.status is Status.WARN and not r.failed
    assert f"@{BOT_USERNAME}" in r.detail and "privacy mode is on" in r.detail
    assert "/setprivacy" in r.hint and "@BotFather" in r.hint


async def test_telegram_wrong_token_fails_with_the_hint(
    tmp_path: Path, telegram: FakeTelegram
) -> None:
    env = {"MERCURY_TELEGRAM_BOT_TOKEN": WRONG["telegram"]}
    adapters = {"telegram": {"enabled": True, "api_base_url": telegram.base_url}}
    results = await doctor_rows(tmp_path, adapters, env)
    r = row(results, "telegram credentials accepted")
    assert r.status is Status.FAIL and r.failed
    assert r.detail == "getMe: HTTP 401 (Unauthorized)"
    assert "MERCURY_TELEGRAM_BOT_TOKEN was refused" in r.hint and "@BotFather" in r.hint


# --------------------------------------------------------------------------- all three


async def test_all_three_good_at_once(
    tmp_path: Path, slack: FakeSlack, discord: FakeDiscord, telegram: FakeTelegram
) -> None:
    env = {
        "MERCURY_SLACK_BOT_TOKEN": FakeSlack.BOT_TOKEN,
        "MERCURY_SLACK_APP_TOKEN": FakeSlack.APP_TOKEN,
        "MERCURY_DISCORD_BOT_TOKEN": DISCORD_TOKEN,
        "MERCURY_TELEGRAM_BOT_TOKEN": TELEGRAM_TOKEN,
    }
    adapters = {
        "slack": {"enabled": True, "api_base_url": slack.api_url},
        "discord": {"enabled": True, "api_base_url": discord.api_base_url},
        "telegram": {"enabled": True, "api_base_url": telegram.base_url},
    }
    results = await doctor_rows(tmp_path, adapters, env)
    names = [r.name for r in results if r.name.endswith("credentials accepted")]
    assert names == [
        "slack credentials accepted",
        "discord credentials accepted",
        "telegram credentials accepted",
    ]
    assert all(row(results, n).status is Status.OK for n in names)


@pytest.mark.parametrize("platform", ["slack", "discord", "telegram"])
async def test_unreachable_api_fails_with_the_host_and_no_token(
    tmp_path: Path, platform: str
) -> None:
    port = closed_port()
    base = {
        "slack": f"http://127.0.0.1:{port}/api/",
        "discord": f"http://127.0.0.1:{port}/api/v10",
        "telegram": f"http://127.0.0.1:{port}/bot",
    }[platform]
    env = {
        "slack": {
            "MERCURY_SLACK_BOT_TOKEN": FakeSlack.BOT_TOKEN,
            "MERCURY_SLACK_APP_TOKEN": FakeSlack.APP_TOKEN,
        },
        "discord": {"MERCURY_DISCORD_BOT_TOKEN": DISCORD_TOKEN},
        "telegram": {"MERCURY_TELEGRAM_BOT_TOKEN": TELEGRAM_TOKEN},
    }[platform]
    results = await doctor_rows(tmp_path, {platform: {"enabled": True, "api_base_url": base}}, env)
    r = row(results, f"{platform} credentials accepted")
    assert r.status is Status.FAIL and r.failed
    assert r.detail.startswith(f"cannot reach 127.0.0.1:{port}: "), r.detail
    assert f"adapters.{platform}.api_base_url" in r.hint
    assert "/bot" not in r.detail and "/api" not in r.detail  # the host only, never the URL


async def test_enabled_adapter_without_token_skips_the_live_check(tmp_path: Path) -> None:
    results = await doctor_rows(tmp_path, {"discord": {"enabled": True}}, {})
    assert row(results, "discord adapter has its token").status is Status.FAIL
    r = row(results, "discord credentials accepted")
    assert r.status is Status.SKIP and "MERCURY_DISCORD_BOT_TOKEN" in r.detail


async def test_no_platform_adapter_enabled_makes_no_network_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("the doctor opened an HTTP session with no platform enabled")

    monkeypatch.setattr(aiohttp, "ClientSession", refuse)
    # Tokens present but the adapters disabled: still nothing to call.
    env = {"MERCURY_DISCORD_BOT_TOKEN": DISCORD_TOKEN, "MERCURY_TELEGRAM_BOT_TOKEN": "x"}
    results = await doctor_rows(tmp_path, {"discord": {"enabled": False}}, env)
    assert not [r for r in results if "credentials" in r.name]


# --------------------------------------------------------------------------- the CLI


async def test_cli_prints_the_hint_and_no_token(tmp_path: Path, telegram: FakeTelegram) -> None:
    """`mercury doctor` as a subprocess, with the fake served by this test's event loop."""
    path = write_config(
        tmp_path, {"telegram": {"enabled": True, "api_base_url": telegram.base_url}}
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MERCURY_")}
    # Wide enough that no line is folded, so a token could not hide across two lines.
    env |= {"MERCURY_TELEGRAM_BOT_TOKEN": WRONG["telegram"], "COLUMNS": "500"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from mercury.cli import main; main()",
        "--config",
        str(path),
        "doctor",
        env=env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=60)
    output = stdout.decode() + stderr.decode()
    assert proc.returncode == 1, output
    assert "telegram credentials accepted" in output
    assert "MERCURY_TELEGRAM_BOT_TOKEN was refused: get the token from @BotFather" in output
    for token in ALL_TOKENS:
        assert token not in output
