"""The Discord adapter end to end: real discord.py against the fake Discord on 127.0.0.1.

A recording sink stands in for the pipeline; tests answer with `adapter.send` and assert
on what the fake received.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from discord.gateway import DiscordWebSocket
from discord.http import Route
from pydantic import SecretStr

from mercury.adapters.base import Adapter
from mercury.adapters.discord import from_config
from mercury.adapters.discord.adapter import DiscordAdapter, DiscordStartError
from mercury.config import Config, DiscordConfig, Secrets
from mercury.core.messages import (
    Attachment,
    ConversationRef,
    InboundMessage,
    OutboundFile,
    Reply,
)
from tests.fakes.discord_server import (
    BOT_ID,
    BOT_USER,
    DM_CHANNEL_ID,
    HUMAN,
    OTHER_BOT,
    TEXT_CHANNEL_ID,
    THREAD_ID,
    TOKEN,
    FakeDiscord,
)
from tests.fakes.sink import RecordingSink

WAIT = 5.0


def make_adapter(fake: FakeDiscord, token: str = TOKEN, **kwargs: Any) -> DiscordAdapter:
    config = DiscordConfig(
        enabled=True, api_base_url=fake.api_base_url, gateway_url=fake.gateway_url
    )
    secrets = Secrets(discord_bot_token=SecretStr(token))
    kwargs.setdefault("ready_timeout", 10.0)
    return DiscordAdapter(config, secrets, guild_ready_timeout=0.05, **kwargs)


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    server = FakeDiscord()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def sink() -> RecordingSink:
    return RecordingSink(wait=WAIT)


@pytest.fixture
async def adapter(fake: FakeDiscord, sink: RecordingSink) -> AsyncIterator[DiscordAdapter]:
    a = make_adapter(fake)
    await a.start(sink)
    yield a
    await a.stop()


async def next_post(fake: FakeDiscord) -> dict[str, Any]:
    return await asyncio.wait_for(fake.outbox.get(), WAIT)


# ---------------------------------------------------------------------- start / stop


async def test_start_logs_in_and_stop_restores_endpoints(
    fake: FakeDiscord, sink: RecordingSink
) -> None:
    before = (Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY)
    a = make_adapter(fake)
    assert isinstance(a, Adapter)
    await a.start(sink)
    try:
        assert fake.calls_to("GET", "/users/@me")[0].headers["Authorization"] == f"Bot {TOKEN}"
        assert fake.identifies == 1
        intents = next(d for _, op, d in fake.gateway_ops if op == 2)["intents"]
        assert intents & (1 << 15), "message_content intent requested"
        assert intents & (1 << 12) and intents & (1 << 9), "DM and guild messages"
        assert fake.api_base_url == Route.BASE
    finally:
        await a.stop()
    assert before == (Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY)
    assert a.bot_handles == ()  # <@id> mentions need no handle
    assert a.routes() == []  # the gateway is a websocket Mercury opens


def test_from_config_names_the_missing_token() -> None:
    config = Config.model_validate({"adapters": {"discord": {"enabled": True}}})
    with pytest.raises(ValueError, match="MERCURY_DISCORD_BOT_TOKEN"):
        from_config(config, Secrets())
    adapter = from_config(config, Secrets(discord_bot_token=SecretStr(TOKEN)))
    assert isinstance(adapter, DiscordAdapter) and adapter.config is config.adapters.discord


async def test_bad_token_fails_start_with_one_clear_line(
    fake: FakeDiscord, sink: RecordingSink
) -> None:
    before = Route.BASE
    a = make_adapter(fake, token="wrong-token")
    with pytest.raises(DiscordStartError) as err:
        await a.start(sink)
    assert "rejected the bot token" in str(err.value)
    assert "MERCURY_DISCORD_BOT_TOKEN" in str(err.value)
    assert "\n" not in str(err.value)
    assert before == Route.BASE


async def test_unreachable_gateway_fails_clearly(fake: FakeDiscord, sink: RecordingSink) -> None:
    config = DiscordConfig(
        enabled=True, api_base_url=fake.api_base_url, gateway_url="ws://127.0.0.1:9/nowhere"
    )
    a = DiscordAdapter(config, Secrets(discord_bot_token=SecretStr(TOKEN)), ready_timeout=5.0)
    with pytest.raises(
        DiscordStartError, match=r"cannot reach the gateway ws://127\.0\.0\.1:9/nowhere"
    ):
        await a.start(sink)


async def test_gateway_that_never_readies_times_out(fake: FakeDiscord, sink: RecordingSink) -> None:
    fake.ignore_identify = True
    a = make_adapter(fake, ready_timeout=1.0)
    with pytest.raises(DiscordStartError, match="not connected within 1s"):
        await a.start(sink)
    assert a._task is None and Route.BASE == "https://discord.com/api/v10"


async def test_missing_token_is_a_clear_error(fake: FakeDiscord, sink: RecordingSink) -> None:
    a = DiscordAdapter(DiscordConfig(enabled=True), Secrets())
    with pytest.raises(DiscordStartError, match="MERCURY_DISCORD_BOT_TOKEN"):
        await a.start(sink)


# ---------------------------------------------------------------------- inbound kinds


async def test_dm_is_dm_and_reply_lands_in_the_dm(
    fake: FakeDiscord, sink: RecordingSink, adapter: DiscordAdapter
) -> None:
    sent = await fake.dispatch_message("hello there", channel_id=DM_CHANNEL_ID)
    msg = await sink.next()
    assert msg.is_dm and not msg.from_bot
    assert msg.conversation == ConversationRef("discord", str(DM_CHANNEL_ID), None)
    assert msg.platform_message_id == sent["id"]
    assert msg.author_id == HUMAN["id"] and msg.author_name == "Alice"
    assert msg.text == "hello there"
    assert msg.ts.tzinfo is not None

    result = await adapter.send(
        Reply(msg.conversation, "hi back", reply_to=msg.platform_message_id)
    )
    post = await next_post(fake)
    assert post["channel_id"] == DM_CHANNEL_ID
    assert post["request"]["content"] == "hi back"
    assert result.platform_message_ids == (post["message"]["id"],)


async def test_mention_in_guild_channel_and_reply_references_it(
    fake: FakeDiscord, sink: RecordingSink, adapter: DiscordAdapter
) -> None:
    sent = await fake.dispatch_message(f"<@{BOT_ID}> what's up?", mentions=[BOT_USER])
    msg = await sink.next()
    assert msg.mentions_bot and not msg.is_dm and not msg.reply_to_bot
    assert msg.conversation == ConversationRef("discord", str(TEXT_CHANNEL_ID), None)
    assert msg.text == f"<@{BOT_ID}> what's up?"  # the router strips the mention

    await adapter.send(Reply(msg.conversation, "answer", reply_to=msg.platform_message_id))
    post = await next_post(fake)
    assert post["channel_id"] == TEXT_CHANNEL_ID
    ref = post["request"]["message_reference"]
    assert int(ref["message_id"]) == int(sent["id"])
    assert int(ref["channel_id"]) == TEXT_CHANNEL_ID
    assert ref["fail_if_not_exists"] is False
    # the agent's text must never ping @everyone or roles
    assert post["request"]["allowed_mentions"]["parse"] == ["users"]


async def test_plain_channel_message_is_not_a_mention(
    fake: FakeDiscord, sink: RecordingSink, adapter: DiscordAdapter
) -> None:
    await fake.dispatch_message("just chatting")
    msg = await sink.next()
    assert not msg.mentions_bot and not msg.is_dm and not msg.reply_to_bot and not msg.from_bot


async def test_message_in_thread_carries_parent_and_thread(
    fake: FakeDiscord, sink: RecordingSink, adapter: DiscordAdapter
) -> None:
    await fake.dispatch_message("in a thread", channel_id=THREAD_ID)
    msg = await sink.next()
    assert msg.conversation == ConversationRef("discord", str(TEXT_CHANNEL_ID), str(THREAD_ID))
    await adapter.send(Reply(msg.conversation, "thread answer"))
    assert (await next_post(fake))["channel_id"] == THREAD_ID


async def test_own_messages_ignored_other_bots_flagged(
    fake: FakeDiscord, sink: RecordingSink, adapter: DiscordAdapter
) -> None:
    await fake.dispatch_message("I am the bot", author=BOT_USER)
    await fake.dispatch_message("beep", author=OTHER_BOT)
    msg = await sink.next()
    assert msg.text == "beep" and msg.from_bot
    await sink.nothing_more()


async def test_reply_to_the_bot(
    fake: FakeDiscord, sink: RecordingSink, adapter: DiscordAdapter
) -> None:
    conv = ConversationRef("discord", str(TEXT_CHANNEL_ID))
    ours = (await adapter.send(Reply(conv, "I said this"))).platform_message_ids[0]
    await next_post(fake)
    await fake.dispatch_message("and I answer you", reply_to=int(ours))
    msg = await sink.next()
    assert msg.reply_to_bot and not msg.mentions_bot

    # a reply to a human is not a reply to the bot
    human = await fake.dispatch_message("someone")
    await sink.next()
    await fake.dispatch_message("answering someone", reply_to=int(human["id"]))
    assert not (await sink.next()).reply_to_bot


# ---------------------------------------------------------------------- outbound


async def test_long_reply_is_split_without_losing_characters(
    fake: FakeDiscord, adapter: DiscordAdapter
) -> None:
    block = "```python\n" + "\n".join(f"print({i})  # line {i}" for i in range(150)) + "\n```\n"
    prose = "\n".join(f"Paragraph line {i} with some words in it." for i in range(120)) + "\n\n"
    text = (prose + block) * 3
    text = text[:10_000]
    assert len(text) == 10_000
    conv = ConversationRef("discord", str(TEXT_CHANNEL_ID))
    result = await adapter.send(Reply(conv, text, reply_to="1234"))
    posts = [await next_post(fake) for _ in result.platform_message_ids]
    assert len(posts) >= 5
    contents = [p["request"]["content"] for p in posts]
    assert all(len(c) <= 2000 for c in contents)
    # only the first chunk is a Discord reply
    assert "message_reference" in posts[0]["request"]
    assert all("message_reference" not in p["request"] for p in posts[1:])
    # each chunk has balanced fences, so it renders on its own
    assert all(c.count("```") % 2 == 0 for c in contents)
    # a cut fell inside a code block: closed at the end, reopened in the next chunk
    assert any(
        a.endswith("\n```") and b.startswith("```python\n") for a, b in itertools.pairwise(contents)
    )
    # every character arrives, in order (undoing the fence markers added at cuts)
    assert unsplit(contents).replace("\n", "") == text.replace("\n", "")
    assert not await _more_posts(fake)


def unsplit(chunks: list[str]) -> str:
    """Undo the fence markers split_message adds at cuts inside a code block."""
    out = chunks[0]
    for prev, chunk in itertools.pairwise(chunks):
        if prev.endswith("\n```") and chunk.startswith("```"):
            out = out[: -len("\n```")] + chunk[chunk.index("\n") + 1 :]
        else:
            out += chunk
    return out


async def _more_posts(fake: FakeDiscord) -> bool:
    await asyncio.sleep(0.1)
    return not fake.outbox.empty()


async def test_outbox_files_are_uploaded_multipart(
    fake: FakeDiscord, adapter: DiscordAdapter, tmp_path: Path
) -> None:
    files = []
    for i in range(12):
        p = tmp_path / f"report{i}.txt"
        p.write_bytes(f"content {i}".encode())
        files.append(OutboundFile(p, f"report{i}.txt"))
    conv = ConversationRef("discord", str(TEXT_CHANNEL_ID))
    result = await adapter.send(Reply(conv, "here are your files", files=tuple(files)))
    assert len(result.platform_message_ids) == 2  # Discord allows 10 files per message
    first, second = await next_post(fake), await next_post(fake)
    assert first["request"]["content"] == "here are your files"
    assert [n for n, _ in first["files"]] == [f"report{i}.txt" for i in range(10)]
    assert first["files"][3][1] == b"content 3"
    assert [n for n, _ in second["files"]] == ["report10.txt", "report11.txt"]
    assert [a["filename"] for a in first["request"]["attachments"]][:2] == [
        "report0.txt",
        "report1.txt",
    ]
    call = fake.calls_to("POST", f"/channels/{TEXT_CHANNEL_ID}/messages")[0]
    assert call.headers["Content-Type"].startswith("multipart/form-data")


async def test_typing_edit_and_delete(fake: FakeDiscord, adapter: DiscordAdapter) -> None:
    conv = ConversationRef("discord", str(TEXT_CHANNEL_ID))
    await adapter.set_typing(conv)
    assert len(fake.calls_to("POST", f"/channels/{TEXT_CHANNEL_ID}/typing")) == 1

    (mid,) = (await adapter.send(Reply(conv, "still working (30s)"))).platform_message_ids
    await next_post(fake)
    await adapter.edit(conv, mid, "still working (60s)")
    (patch,) = fake.calls_to("PATCH", f"/messages/{mid}")
    assert patch.json["content"] == "still working (60s)"
    await adapter.delete(conv, mid)
    assert fake.calls_to("DELETE", f"/channels/{TEXT_CHANNEL_ID}/messages/{mid}")
    await adapter.delete(conv, mid)  # already gone: no error


async def test_a_growing_answer_is_edited_in_place_even_half_written(
    fake: FakeDiscord, adapter: DiscordAdapter
) -> None:
    conv = ConversationRef("discord", str(TEXT_CHANNEL_ID))
    (mid,) = (await adapter.send(Reply(conv, "Here is"))).platform_message_ids
    await next_post(fake)
    half = "Here is the fix:\n```python\nif a < b and **c"  # an open fence and an open **
    await adapter.edit(conv, mid, half)
    await adapter.edit(conv, mid, "y" * 2500)  # cut at Discord's 2000
    assert [(e.message_id, e.text) for e in fake.edits] == [(mid, half), (mid, "y" * 2000)]
    assert fake.edits[0].at <= fake.edits[1].at
    await adapter.delete(conv, mid)
    assert [(d.chat_id, d.message_id) for d in fake.deletes] == [(str(TEXT_CHANNEL_ID), mid)]


# ---------------------------------------------------------------------- attachments in


async def test_attachment_is_described_and_downloaded(
    fake: FakeDiscord, sink: RecordingSink, adapter: DiscordAdapter
) -> None:
    content = bytes(range(256)) * 40
    att = fake.add_attachment("data.bin", content)
    await fake.dispatch_message("see file", channel_id=DM_CHANNEL_ID, attachments=[att])
    msg = await sink.next()
    (a,) = msg.attachments
    assert (a.name, a.size, a.content_type) == (
        "data.bin",
        len(content),
        "application/octet-stream",
    )
    assert a.ref == att["url"]
    assert await adapter.download(a, max_bytes=1_000_000) == content
    with pytest.raises(ValueError):
        await adapter.download(a, max_bytes=100)
    # a size Discord under-reports is still capped while streaming
    lying = Attachment(name=a.name, size=10, content_type=a.content_type, ref=a.ref)
    with pytest.raises(ValueError):
        await adapter.download(lying, max_bytes=1000)
    with pytest.raises(ValueError):
        await adapter.download(Attachment(name="x", ref="file:///etc/passwd"), max_bytes=1000)


# ---------------------------------------------------------------------- resilience


async def test_dropped_gateway_resumes_and_loses_nothing(
    fake: FakeDiscord, sink: RecordingSink, adapter: DiscordAdapter
) -> None:
    await fake.dispatch_message("before the drop")
    assert (await sink.next()).text == "before the drop"

    await fake.drop_gateway()
    # sent while the bot is disconnected: Discord keeps it for the RESUME
    await fake.dispatch_message("during the drop")
    await fake.wait_connected()
    assert (await sink.next()).text == "during the drop"
    await fake.dispatch_message("after the drop")
    assert (await sink.next()).text == "after the drop"
    await sink.nothing_more()

    assert fake.resumes == 1 and fake.identifies == 1
    resume = next(d for _, op, d in fake.gateway_ops if op == 6)
    assert resume["session_id"].startswith("session-")
    assert any(path == "/resume-gateway" for path, _, _ in fake.gateway_ops)
    assert [m.text for m in sink.received] == [
        "before the drop",
        "during the drop",
        "after the drop",
    ]

    # and it still answers
    await adapter.send(Reply(sink.received[-1].conversation, "still here"))
    assert (await next_post(fake))["request"]["content"] == "still here"


async def test_gateway_outage_backs_off_and_resumes(
    fake: FakeDiscord, sink: RecordingSink, adapter: DiscordAdapter
) -> None:
    await fake.dispatch_message("one")
    await sink.next()
    fake.refuse_gateway = 2  # the next two reconnects fail (503) before one succeeds
    await fake.drop_gateway()
    await fake.dispatch_message("two")  # waits in the session for the RESUME
    await fake.wait_connected(timeout=15)
    assert (await sink.next(timeout=5)).text == "two"
    await fake.dispatch_message("three")
    assert (await sink.next()).text == "three"
    await sink.nothing_more()
    assert fake.gateway_refusals == 2
    assert fake.resumes == 1 and fake.identifies == 1
    assert [m.text for m in sink.received] == ["one", "two", "three"]


async def test_replayed_event_is_delivered_once(
    fake: FakeDiscord, sink: RecordingSink, adapter: DiscordAdapter
) -> None:
    msg = await fake.dispatch_message("only once")
    await sink.next()
    await fake.dispatch("MESSAGE_CREATE", msg)  # the same event again
    await sink.nothing_more()


async def test_malformed_message_is_logged_and_skipped(
    fake: FakeDiscord,
    sink: RecordingSink,
    adapter: DiscordAdapter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with structlog.testing.capture_logs() as logs:
        await fake.dispatch("MESSAGE_CREATE", {"id": "1", "content": "no channel, no author"})
        await fake.dispatch("MESSAGE_CREATE", {"id": "2", "channel_id": str(TEXT_CHANNEL_ID)})
        await fake.dispatch("SOMETHING_NEW", {"whatever": True})
        await fake.dispatch_message("still serving")
        msg = await sink.next()
    assert msg.text == "still serving"
    skipped = [e for e in logs if e["event"] == "discord: malformed gateway event skipped"]
    assert len(skipped) == 2 and skipped[0]["discord_event"] == "MESSAGE_CREATE"
    assert skipped[0]["log_level"] == "error"
    await sink.nothing_more()
    assert fake.identifies == 1 and fake.resumes == 0  # the connection never dropped


async def test_sink_failure_does_not_stop_the_adapter(
    fake: FakeDiscord, adapter: DiscordAdapter
) -> None:
    got: list[str] = []

    async def flaky(msg: InboundMessage) -> None:
        got.append(msg.text)
        if msg.text == "boom":
            raise RuntimeError("pipeline bug")

    adapter._sink = flaky
    with structlog.testing.capture_logs() as logs:
        await fake.dispatch_message("boom")
        await fake.dispatch_message("fine")
        for _ in range(50):
            if len(got) == 2:
                break
            await asyncio.sleep(0.05)
    assert got == ["boom", "fine"]
    assert any(e["event"] == "discord: inbound handler failed" for e in logs)


async def test_stop_delivers_nothing_more(
    fake: FakeDiscord, sink: RecordingSink, adapter: DiscordAdapter
) -> None:
    await adapter.stop()
    await asyncio.sleep(0.1)
    assert not fake.connected.is_set()
    await fake.dispatch_message("after stop")
    await sink.nothing_more()
    assert sink.received == []
    await adapter.stop()  # idempotent
