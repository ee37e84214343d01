"""Rate limits on Slack, Discord and Telegram: each adapter on its real client library
against its fake platform, which answers 429 in the platform's own shape.

What the pipeline relies on while it streams a reply (issue 13): an edit, send or delete
that the platform refuses for its rate limit, once the library has done its own retrying,
comes out as `RateLimited` with the platform's wait, and the next call goes through.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from pydantic import SecretStr

from mercury.adapters.base import RateLimited
from mercury.adapters.discord.adapter import DiscordAdapter
from mercury.adapters.slack.adapter import SlackAdapter
from mercury.adapters.telegram.adapter import TelegramAdapter
from mercury.config import DiscordConfig, Secrets, SlackConfig, TelegramConfig
from mercury.core.messages import ConversationRef, Reply
from tests.fakes import discord_server as ds
from tests.fakes.discord_server import FakeDiscord
from tests.fakes.sink import RecordingSink
from tests.fakes.slack_server import FakeSlack
from tests.fakes.telegram_server import FakeTelegram

TELEGRAM_TOKEN = "123456789:AAHfakeTokenForRateLimits-only_abcdef"
# discord.py 2.7 tries a request 5 times, sleeping out each 429 (HTTPClient.request).
DISCORD_TRIES = 5
# slack_sdk tries once more per retry the adapter's AsyncRateLimitErrorRetryHandler allows.
SLACK_TRIES = 3

Call = Callable[[Any, ConversationRef, str], Awaitable[Any]]


async def _edit(adapter: Any, conv: ConversationRef, mid: str) -> Any:
    return await adapter.edit(conv, mid, "the answer so far, and more")


async def _delete(adapter: Any, conv: ConversationRef, mid: str) -> Any:
    return await adapter.delete(conv, mid)


async def _send(adapter: Any, conv: ConversationRef, _mid: str) -> Any:
    return await adapter.send(Reply(conv, "the final answer"))


async def _send_status(adapter: Any, conv: ConversationRef, _mid: str) -> Any:
    return await adapter.send_status(conv, "still working (30s)")


# ----------------------------------------------------------------------------- Slack


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    # slack_sdk reads proxy variables itself and ignores NO_PROXY.
    for name in list(os.environ):
        if name.lower() in ("http_proxy", "https_proxy", "all_proxy"):
            monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def slack() -> AsyncIterator[tuple[FakeSlack, SlackAdapter]]:
    fake = FakeSlack()
    await fake.start()
    # HTTP mode: outbound calls only, no Socket Mode websocket to wait for.
    adapter = SlackAdapter(
        SlackConfig(enabled=True, mode="http", api_base_url=fake.api_url),
        Secrets(
            slack_bot_token=SecretStr(FakeSlack.BOT_TOKEN),
            slack_signing_secret=SecretStr(FakeSlack.SIGNING_SECRET),
        ),
    )
    await adapter.start(RecordingSink())
    yield fake, adapter
    await adapter.stop()
    await fake.close()


async def test_slack_edit_rate_limited_past_the_library_retries_is_rate_limited(
    slack: tuple[FakeSlack, SlackAdapter],
) -> None:
    fake, adapter = slack
    conv = ConversationRef("slack", "C1")
    (mid,) = (await adapter.send(Reply(conv, "the answer so far"))).platform_message_ids
    fake.fail_next("chat.update", 429, times=SLACK_TRIES, retry_after=1)
    with pytest.raises(RateLimited) as caught:
        await adapter.edit(conv, mid, "the answer so far, and more")
    assert caught.value.retry_after == 1.0
    assert caught.value.what == "edit"
    assert len(fake.calls_to("chat.update")) == SLACK_TRIES  # the library did retry
    assert fake.edits == []
    # Once the wait is over the same edit lands.
    await adapter.edit(conv, mid, "the answer so far, and more")
    assert [(e.message_id, e.text) for e in fake.edits] == [
        (mid.split(":")[1], "the answer so far, and more")
    ]


@pytest.mark.parametrize(
    ("method", "call", "what"),
    [
        ("chat.postMessage", _send, "send"),
        ("chat.postMessage", _send_status, "send"),
        ("chat.delete", _delete, "delete"),
    ],
)
async def test_slack_send_and_delete_rate_limited_are_rate_limited(
    slack: tuple[FakeSlack, SlackAdapter], method: str, call: Call, what: str
) -> None:
    fake, adapter = slack
    conv = ConversationRef("slack", "C1")
    (mid,) = (await adapter.send(Reply(conv, "posted"))).platform_message_ids
    # Retry-After 0 keeps the library's own retries short (it adds up to a second each).
    fake.fail_next(method, 429, times=SLACK_TRIES, retry_after=0)
    with pytest.raises(RateLimited) as caught:
        await call(adapter, conv, mid)
    assert (caught.value.retry_after, caught.value.what) == (0.0, what)
    # A send that failed shows on the Overview; a delete, as before, does not.
    assert ("RateLimited" in (adapter.state.last_error or "")) == (what == "send")


# --------------------------------------------------------------------------- Discord


@pytest.fixture
async def discord() -> AsyncIterator[tuple[FakeDiscord, DiscordAdapter]]:
    fake = FakeDiscord()
    await fake.start()
    adapter = DiscordAdapter(
        DiscordConfig(enabled=True, api_base_url=fake.api_base_url, gateway_url=fake.gateway_url),
        Secrets(discord_bot_token=SecretStr(ds.TOKEN)),
        ready_timeout=10.0,
        guild_ready_timeout=0.05,
    )
    await adapter.start(RecordingSink())
    yield fake, adapter
    await adapter.stop()
    await fake.stop()


async def _discord_message(
    fake: FakeDiscord, adapter: DiscordAdapter
) -> tuple[ConversationRef, str]:
    conv = ConversationRef("discord", str(ds.TEXT_CHANNEL_ID))
    (mid,) = (await adapter.send(Reply(conv, "the answer so far"))).platform_message_ids
    await fake.outbox.get()
    return conv, mid


async def test_discord_absorbs_a_single_429_on_an_edit(
    discord: tuple[FakeDiscord, DiscordAdapter],
) -> None:
    fake, adapter = discord
    conv, mid = await _discord_message(fake, adapter)
    fake.fail_next("edit_message", 429, times=1, retry_after=0.2)
    await adapter.edit(conv, mid, "the answer so far, and more")
    assert len(fake.calls_to("PATCH", f"/messages/{mid}")) == 2  # refused, then retried
    assert [(e.message_id, e.text) for e in fake.edits] == [(mid, "the answer so far, and more")]


async def test_discord_429_on_every_try_is_rate_limited(
    discord: tuple[FakeDiscord, DiscordAdapter],
) -> None:
    fake, adapter = discord
    conv, mid = await _discord_message(fake, adapter)
    fake.fail_next("edit_message", 429, times=DISCORD_TRIES, retry_after=0.2)
    with pytest.raises(RateLimited) as caught:
        await adapter.edit(conv, mid, "the answer so far, and more")
    # The precise wait (X-RateLimit-Reset-After), not Retry-After's rounded-up second.
    assert caught.value.retry_after == pytest.approx(0.2)
    assert caught.value.what == "edit"
    assert len(fake.calls_to("PATCH", f"/messages/{mid}")) == DISCORD_TRIES
    assert fake.edits == []
    await adapter.edit(conv, mid, "the answer so far, and more")
    assert [e.text for e in fake.edits] == ["the answer so far, and more"]


@pytest.mark.parametrize(
    ("operation", "call", "what"),
    [("create_message", _send, "send"), ("delete_message", _delete, "delete")],
)
async def test_discord_send_and_delete_429_on_every_try_are_rate_limited(
    discord: tuple[FakeDiscord, DiscordAdapter], operation: str, call: Call, what: str
) -> None:
    fake, adapter = discord
    conv, mid = await _discord_message(fake, adapter)
    fake.fail_next(operation, 429, times=DISCORD_TRIES, retry_after=0.1)
    with pytest.raises(RateLimited) as caught:
        await call(adapter, conv, mid)
    assert caught.value.retry_after == pytest.approx(0.1)
    assert caught.value.what == what
    assert fake.deletes == []


# -------------------------------------------------------------------------- Telegram


@pytest.fixture
async def telegram() -> AsyncIterator[tuple[FakeTelegram, TelegramAdapter]]:
    async with FakeTelegram(TELEGRAM_TOKEN) as fake:
        adapter = TelegramAdapter(
            TelegramConfig(
                enabled=True,
                mode="polling",
                api_base_url=fake.base_url,
                file_base_url=fake.file_url,
            ),
            Secrets(telegram_bot_token=SecretStr(TELEGRAM_TOKEN)),
            poll_timeout=1.0,
        )
        await adapter.start(RecordingSink())
        try:
            yield fake, adapter
        finally:
            await adapter.stop()


@pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")  # PTB's own
@pytest.mark.parametrize("timedelta_mode", [False, True], ids=["int", "timedelta"])
async def test_telegram_flood_control_on_an_edit_is_rate_limited(
    telegram: tuple[FakeTelegram, TelegramAdapter],
    monkeypatch: pytest.MonkeyPatch,
    timedelta_mode: bool,
) -> None:
    # PTB 22 gives RetryAfter.retry_after as an int (deprecated), or as a timedelta under
    # PTB_TIMEDELTA=true, the type to come: the adapter takes either.
    monkeypatch.setenv("PTB_TIMEDELTA", "true" if timedelta_mode else "false")
    fake, adapter = telegram
    conv = ConversationRef("telegram", "501")
    (mid,) = (await adapter.send(Reply(conv, "the answer so far"))).platform_message_ids
    fake.fail_next("editMessageText", 429, retry_after=1)
    with pytest.raises(RateLimited) as caught:
        await adapter.edit(conv, mid, "the answer so far, and more")
    assert caught.value.retry_after == 1.0
    assert caught.value.what == "edit"
    assert fake.calls_to("editMessageText")[-1].status == 429
    assert fake.edits == []
    await adapter.edit(conv, mid, "the answer so far, and more")
    assert [(e.message_id, e.text) for e in fake.edits] == [
        (mid.split(":")[1], "the answer so far, and more")
    ]


@pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")
@pytest.mark.parametrize(
    ("method", "call", "what"),
    [
        ("sendMessage", _send, "send"),
        ("sendMessage", _send_status, "send"),
        ("deleteMessage", _delete, "delete"),
    ],
)
async def test_telegram_flood_control_on_send_and_delete_is_rate_limited(
    telegram: tuple[FakeTelegram, TelegramAdapter], method: str, call: Call, what: str
) -> None:
    fake, adapter = telegram
    conv = ConversationRef("telegram", "501")
    (mid,) = (await adapter.send(Reply(conv, "posted"))).platform_message_ids
    fake.fail_next(method, 429, retry_after=1)
    with pytest.raises(RateLimited) as caught:
        await call(adapter, conv, mid)
    assert (caught.value.retry_after, caught.value.what) == (1.0, what)
    assert fake.deletes == []


@pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")
async def test_telegram_flood_control_midway_through_a_reply_doubles_nothing(
    telegram: tuple[FakeTelegram, TelegramAdapter],
) -> None:
    """A reply in several messages refused after its first part: the wait is taken there
    and the rest follows; raised, the outbox would send the whole reply again and the
    first part would arrive twice."""
    fake, adapter = telegram
    conv = ConversationRef("telegram", "501")
    parts = [f"part {i} " + "x" * 3000 for i in range(3)]
    sends = 0

    async def refuse_the_second(call: Any) -> Any:
        nonlocal sends
        if call.method != "sendMessage":
            return None
        sends += 1
        if sends == 2:
            fake.fail_next("sendMessage", 429, retry_after=1)
        return None

    fake.on_call = refuse_the_second
    sent = await adapter.send(Reply(conv, "\n\n".join(parts)))
    accepted = [str(c.params["text"]) for c in fake.calls_to("sendMessage") if c.status == 200]
    assert len(sent.platform_message_ids) == len(accepted) == 3
    assert [t.split()[1] for t in accepted] == ["0", "1", "2"]  # each part once, in order
    assert [c.status for c in fake.calls_to("sendMessage")].count(429) == 1


@pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")
async def test_telegram_flood_control_on_a_reply_s_first_part_is_raised(
    telegram: tuple[FakeTelegram, TelegramAdapter],
) -> None:
    """Nothing is out yet: the outbox waits (durably) and sends the whole reply again."""
    fake, adapter = telegram
    fake.fail_next("sendMessage", 429, retry_after=1)
    with pytest.raises(RateLimited):
        await adapter.send(Reply(ConversationRef("telegram", "501"), "hello"))
