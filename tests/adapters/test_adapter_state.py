"""Every adapter keeps its `state` (the Overview's and /metrics' up/down, last event, last
error) the same way: connected after start, an inbound event stamps last_event_at, not
connected after stop; failures leave one short line without a secret.

Each platform runs on its real client library against its fake server on 127.0.0.1 (the
web chat on a real aiohttp server), with the shared RecordingSink as the pipeline.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr

from mercury.adapters.base import Adapter, AdapterState, StateTracker
from mercury.adapters.discord.adapter import DiscordAdapter
from mercury.adapters.slack.adapter import SlackAdapter
from mercury.adapters.telegram.adapter import TelegramAdapter
from mercury.adapters.web.adapter import WebChatAdapter
from mercury.config import DiscordConfig, Secrets, SlackConfig, TelegramConfig
from mercury.core.messages import ConversationRef, Reply
from mercury.http.server import HttpServer, build_app
from tests.fakes import discord_server
from tests.fakes.sink import RecordingSink
from tests.fakes.slack_server import FakeSlack
from tests.fakes.telegram_server import Call, FakeTelegram

TELEGRAM_TOKEN = "123456789:AAHfakeTokenForTests-only_abcdefghijk"
WEB_PASSWORD = "state test password"
WAIT = 10.0


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    # slack_sdk reads proxy variables itself and ignores NO_PROXY.
    for name in list(os.environ):
        if name.lower() in ("http_proxy", "https_proxy", "all_proxy"):
            monkeypatch.delenv(name, raising=False)


class Platform:
    """One adapter on its fake: open (started), hand it an inbound message, close."""

    name: str
    adapter: Any
    fake: Any

    async def open(self, sink: RecordingSink) -> None:
        raise NotImplementedError

    async def inbound(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class SlackPlatform(Platform):
    name = "slack"

    async def open(self, sink: RecordingSink) -> None:
        self.fake = FakeSlack()
        await self.fake.start()
        self.adapter = SlackAdapter(
            SlackConfig(enabled=True, mode="socket", api_base_url=self.fake.api_url),
            Secrets(
                slack_bot_token=SecretStr(FakeSlack.BOT_TOKEN),
                slack_app_token=SecretStr(FakeSlack.APP_TOKEN),
            ),
            ping_interval=0.5,
        )
        await self.adapter.start(sink)
        await self.fake.wait_connections(1)

    async def inbound(self) -> None:
        await self.fake.push_event(FakeSlack.message("hi", channel="D1", channel_type="im"))

    async def close(self) -> None:
        await self.adapter.stop()
        await self.fake.close()


class DiscordPlatform(Platform):
    name = "discord"

    async def open(self, sink: RecordingSink) -> None:
        self.fake = discord_server.FakeDiscord()
        await self.fake.start()
        self.adapter = DiscordAdapter(
            DiscordConfig(
                enabled=True,
                api_base_url=self.fake.api_base_url,
                gateway_url=self.fake.gateway_url,
            ),
            Secrets(discord_bot_token=SecretStr(discord_server.TOKEN)),
            ready_timeout=10.0,
            guild_ready_timeout=0.05,
        )
        await self.adapter.start(sink)

    async def inbound(self) -> None:
        await self.fake.dispatch_message("hi", channel_id=discord_server.DM_CHANNEL_ID)

    async def close(self) -> None:
        await self.adapter.stop()
        await self.fake.stop()


class TelegramPlatform(Platform):
    name = "telegram"

    async def open(self, sink: RecordingSink) -> None:
        self.fake = FakeTelegram(TELEGRAM_TOKEN)
        await self.fake.start()
        config = TelegramConfig(
            enabled=True, api_base_url=self.fake.base_url, file_base_url=self.fake.file_url
        )
        self.adapter = TelegramAdapter(
            config, Secrets(telegram_bot_token=SecretStr(TELEGRAM_TOKEN)), poll_timeout=2.0
        )
        await self.adapter.start(sink)

    async def inbound(self) -> None:
        self.fake.push_update(self.fake.message_update(chat_id=42, text="hi"))

    async def close(self) -> None:
        await self.adapter.stop()
        await self.fake.close()


class WebPlatform(Platform):
    name = "web"

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.status = 0

    async def open(self, sink: RecordingSink) -> None:
        self.adapter = WebChatAdapter(
            username="admin",
            password=WEB_PASSWORD,
            max_upload=4096,
            upload_dir=self.tmp_path / "uploads",
        )
        app = build_app()
        app.add_routes(self.adapter.routes())
        self.fake = HttpServer("127.0.0.1", 0, app)
        await self.fake.start()
        await self.adapter.start(sink)

    async def inbound(self) -> None:
        url = f"http://127.0.0.1:{self.fake.bound_port}/api/chat/messages"
        async with (
            aiohttp.ClientSession(headers={"Authorization": f"Bearer {WEB_PASSWORD}"}) as http,
            http.post(url, json={"space": "main", "text": "hi"}) as resp,
        ):
            self.status = resp.status  # 202, or 500 when the sink failed

    async def close(self) -> None:
        await self.adapter.stop()
        await self.fake.stop()


@pytest.fixture(params=["slack", "discord", "telegram", "web"])
async def platform(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Platform, RecordingSink]]:
    made: dict[str, Callable[[], Platform]] = {
        "slack": SlackPlatform,
        "discord": DiscordPlatform,
        "telegram": TelegramPlatform,
        "web": lambda: WebPlatform(tmp_path),
    }
    p = made[request.param]()
    sink = RecordingSink(wait=WAIT)
    await p.open(sink)
    try:
        yield p, sink
    finally:
        await p.close()


async def _eventually(check: Callable[[], bool], timeout: float = WAIT) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.05)


# --------------------------------------------------------------------------- the contract


async def test_connected_after_start_event_stamped_and_down_after_stop(
    platform: tuple[Platform, RecordingSink],
) -> None:
    p, sink = platform
    adapter = p.adapter
    assert isinstance(adapter, Adapter)
    state = adapter.state
    assert isinstance(state, AdapterState)
    assert state.connected and state.last_event_at is None and state.last_error is None

    before = datetime.now(UTC)
    await p.inbound()
    await sink.next()
    stamped = adapter.state.last_event_at
    assert stamped is not None and before - timedelta(seconds=1) <= stamped <= datetime.now(UTC)
    assert adapter.state.connected

    await adapter.stop()
    after = adapter.state
    assert not after.connected
    assert after.last_event_at == stamped  # the history stays for the Overview


async def test_a_sink_failure_is_recorded_as_a_receive_error(
    platform: tuple[Platform, RecordingSink],
) -> None:
    p, sink = platform

    async def broken(_msg: Any) -> None:
        raise RuntimeError("database on fire")

    sink.on_message = broken
    await p.inbound()
    await sink.next()
    await _eventually(lambda: p.adapter.state.last_error is not None)
    state = p.adapter.state
    assert state.last_error == "receive failed: RuntimeError: database on fire"
    assert state.last_error_at is not None and state.last_event_at is not None
    assert state.connected  # one bad message is not a lost connection
    if isinstance(p, WebPlatform):
        assert p.status == 500  # and the web chat told the sender


# --------------------------------------------------------------------------- failures


async def test_slack_failed_send_records_a_short_secret_free_error() -> None:
    fake = FakeSlack()
    await fake.start()
    adapter = SlackAdapter(
        SlackConfig(enabled=True, mode="http", api_base_url=fake.api_url),
        Secrets(
            slack_bot_token=SecretStr(FakeSlack.BOT_TOKEN),
            slack_signing_secret=SecretStr(FakeSlack.SIGNING_SECRET),
        ),
    )
    try:
        await adapter.start(RecordingSink())
        assert adapter.state.connected
        fake.fail_next("chat.postMessage", 500, 3)  # past slack_sdk's two retries
        with pytest.raises(Exception):  # noqa: B017 - slack_sdk's own error type
            await adapter.send(Reply(ConversationRef("slack", "C1"), "hello"))
        error = adapter.state.last_error
        assert error is not None and error.startswith("send failed: ")
        assert FakeSlack.BOT_TOKEN not in error and len(error) <= 300
        assert adapter.state.last_error_at is not None
    finally:
        await adapter.stop()
        await fake.close()


async def test_telegram_failed_send_and_polling_outage_are_recorded() -> None:
    async with FakeTelegram(TELEGRAM_TOKEN) as fake:
        config = TelegramConfig(
            enabled=True, api_base_url=fake.base_url, file_base_url=fake.file_url
        )
        adapter = TelegramAdapter(
            config, Secrets(telegram_bot_token=SecretStr(TELEGRAM_TOKEN)), poll_timeout=1.0
        )
        sink = RecordingSink(wait=WAIT)
        await adapter.start(sink)
        try:

            async def refuse(call: Call) -> web.Response | None:
                if call.method != "sendMessage":
                    return None
                return web.json_response(
                    {"ok": False, "error_code": 400, "description": "Bad Request: chat not found"},
                    status=400,
                )

            fake.on_call = refuse
            with pytest.raises(Exception):  # noqa: B017 - PTB's BadRequest
                await adapter.send(Reply(ConversationRef("telegram", "42"), "hello"))
            error = adapter.state.last_error
            assert error is not None and error.startswith("send failed: BadRequest")
            assert "chat not found" in error.lower() and TELEGRAM_TOKEN not in error
            fake.on_call = None

            fake.fail_get_updates(1, status=502)
            await _eventually(lambda: not adapter.state.connected)
            assert (adapter.state.last_error or "").startswith("polling failed")
            assert TELEGRAM_TOKEN not in (adapter.state.last_error or "")
            # The next update that gets through shows the polling works again.
            fake.push_update(fake.message_update(chat_id=42, text="back"))
            assert (await sink.next()).text == "back"
            assert adapter.state.connected
        finally:
            await adapter.stop()


async def test_discord_gateway_drop_is_recorded_and_resume_reconnects() -> None:
    fake = discord_server.FakeDiscord()
    await fake.start()
    adapter = DiscordAdapter(
        DiscordConfig(enabled=True, api_base_url=fake.api_base_url, gateway_url=fake.gateway_url),
        Secrets(discord_bot_token=SecretStr(discord_server.TOKEN)),
        ready_timeout=10.0,
        guild_ready_timeout=0.05,
    )
    await adapter.start(RecordingSink())
    try:
        fake.refuse_gateway = 1  # stay down for one reconnect attempt
        await fake.drop_gateway()
        await _eventually(lambda: adapter.state.last_error is not None)
        assert "gateway connection dropped" in (adapter.state.last_error or "")
        await fake.wait_connected(timeout=15)
        await _eventually(lambda: adapter.state.connected)
    finally:
        await adapter.stop()
        await fake.stop()
    assert not adapter.state.connected


async def test_slack_socket_drop_shows_down_until_slack_sdk_reconnects() -> None:
    fake = FakeSlack()
    await fake.start()
    adapter = SlackAdapter(
        SlackConfig(enabled=True, mode="socket", api_base_url=fake.api_url),
        Secrets(
            slack_bot_token=SecretStr(FakeSlack.BOT_TOKEN),
            slack_app_token=SecretStr(FakeSlack.APP_TOKEN),
        ),
        ping_interval=0.5,
    )
    await adapter.start(RecordingSink())
    try:
        await fake.wait_connections(1)
        assert adapter.state.connected
        await fake.drop_websocket()
        await fake.wait_connections(2, timeout=WAIT)
        await _eventually(lambda: adapter.state.connected)
    finally:
        await adapter.stop()
        await fake.close()


# --------------------------------------------------------------------------- the tracker


def test_tracker_keeps_history_and_scrubs_errors() -> None:
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    tracker = StateTracker(clock=lambda: now[0])
    assert tracker.state == AdapterState()
    tracker.connected()
    tracker.event()
    now[0] += timedelta(minutes=1)
    tracker.failed("send", RuntimeError("token 123456789:" + "A" * 35 + " refused\nmore"))
    state = tracker.state
    assert state.connected and state.last_event_at == datetime(2026, 1, 1, tzinfo=UTC)
    assert state.last_error_at == now[0]
    assert state.last_error is not None and "AAAAAAAA" not in state.last_error
    assert "\n" not in state.last_error and state.last_error.startswith("send failed: RuntimeError")
    tracker.disconnected("dropped")
    assert not tracker.state.connected and tracker.state.last_error == "dropped"
    tracker.error("x" * 1000)
    assert len(tracker.state.last_error or "") == 300


async def test_records_failure_reraises_and_records() -> None:
    from mercury.adapters.base import records_failure

    class Thing:
        def __init__(self) -> None:
            self.tracker = StateTracker()

        @records_failure("send")
        async def send(self, boom: bool) -> str:
            if boom:
                raise ValueError("nope")
            return "ok"

    thing = Thing()
    assert await thing.send(False) == "ok" and thing.tracker.state.last_error is None
    with pytest.raises(ValueError, match="nope"):
        await thing.send(True)
    assert thing.tracker.state.last_error == "send failed: ValueError: nope"
