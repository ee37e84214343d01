"""The platform registry: every package built the same way, adapters built only for the
enabled platforms, and the App mounting each adapter's HTTP routes on its one server."""

from __future__ import annotations

import inspect
import socket
import subprocess
import sys
from importlib import import_module
from pathlib import Path

import aiohttp
import pytest
from pydantic import SecretStr

from mercury.adapters.base import Adapter
from mercury.adapters.registry import (
    PLATFORMS,
    build_adapters,
    credential_checks,
    enabled_platforms,
)
from mercury.app import App
from mercury.config import SECRET_ENV, Config, LoadedConfig, Secrets

ALL_ENABLED = {
    "adapters": {
        "slack": {"enabled": True, "mode": "http"},
        "discord": {"enabled": True},
        "telegram": {"enabled": True, "mode": "webhook"},
        "web": {"enabled": True},
    },
    "server": {"public_url": "https://bot.example.org"},
}
ALL_SECRETS = Secrets(
    slack_bot_token=SecretStr("xoxb-registry-test"),
    slack_signing_secret=SecretStr("signing-secret"),
    discord_bot_token=SecretStr("discord-token"),
    telegram_bot_token=SecretStr("123:telegram-token"),
    telegram_webhook_secret=SecretStr("webhook-secret"),
    dashboard_password=SecretStr("a-password"),
)


REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("name", list(PLATFORMS))
def test_every_package_exports_the_same_four_names(name: str) -> None:
    package = import_module(PLATFORMS[name])
    assert sorted(package.__all__) == [
        "SETUP_DOC",
        "check_credentials",
        "from_config",
        "required_secrets",
    ]
    assert callable(package.from_config)
    assert inspect.iscoroutinefunction(package.check_credentials)
    assert (REPO / package.SETUP_DOC).is_file()
    section = getattr(Config().adapters, name)
    names = package.required_secrets(section)
    assert names and all(n in SECRET_ENV for n in names)


def test_importing_the_packages_loads_no_platform_library() -> None:
    """Only from_config imports slack_sdk, discord.py or python-telegram-bot."""
    code = (
        "import sys, mercury.adapters.registry as r, importlib\n"
        "for path in r.PLATFORMS.values(): importlib.import_module(path)\n"
        "print(sorted(m for m in ('slack_sdk', 'slack_bolt', 'discord', 'telegram')"
        " if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_only_enabled_platforms_are_built_in_registry_order(tmp_path: Path) -> None:
    default = Config(data_dir=tmp_path)
    assert enabled_platforms(default) == ["web"]
    assert list(build_adapters(default, Secrets())) == ["web"]
    everything = Config.model_validate({**ALL_ENABLED, "data_dir": str(tmp_path)})
    adapters = build_adapters(everything, ALL_SECRETS)
    assert list(adapters) == ["web", "slack", "discord", "telegram"]
    for name, adapter in adapters.items():
        assert isinstance(adapter, Adapter) and adapter.platform == name
    assert [name for name, _ in credential_checks(everything)] == list(adapters)


def test_a_missing_token_is_one_line_naming_the_variable(tmp_path: Path) -> None:
    config = Config.model_validate({**ALL_ENABLED, "data_dir": str(tmp_path)})
    without = ALL_SECRETS.model_copy(update={"telegram_bot_token": None})
    with pytest.raises(ValueError, match="MERCURY_TELEGRAM_BOT_TOKEN"):
        build_adapters(config, without)


async def test_the_app_mounts_every_adapters_routes_on_its_server(tmp_path: Path) -> None:
    """Slack's events and Telegram's webhook answer on the main server (503 until the
    adapter starts, so the platform retries), next to the web chat's page."""
    config = Config.model_validate(
        {
            **ALL_ENABLED,
            "data_dir": str(tmp_path),
            "server": {**ALL_ENABLED["server"], "port": free_port()},
        }
    )
    app = App(LoadedConfig(config, ALL_SECRETS, None))
    app._build_adapters()
    await app.http.start()
    base = f"http://127.0.0.1:{app.http.bound_port}"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(base + "/slack/events", json={}) as resp:
                assert resp.status == 503
            async with http.post(base + "/telegram/webhook", json={}) as resp:
                assert resp.status == 503
            async with http.get(base + "/chat") as resp:
                assert resp.status == 200
            async with http.post(base + "/discord/anything") as resp:
                assert resp.status == 404  # the gateway adapter serves nothing
    finally:
        await app.http.stop()
