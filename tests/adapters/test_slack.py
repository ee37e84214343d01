"""The Slack adapter end to end: real slack-bolt / slack_sdk against the loopback fake.

A recording sink stands in for the pipeline; the tests answer with adapter.send() and
assert on what the fake Slack received.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from pydantic import SecretStr
from structlog.testing import capture_logs

from mercury.adapters.base import Adapter
from mercury.adapters.slack import from_config
from mercury.adapters.slack.adapter import MAX_MESSAGE_CHARS, TYPING_REACTION, SlackAdapter
from mercury.adapters.slack.format import to_mrkdwn
from mercury.config import Config, Secrets, SlackConfig
from mercury.core.messages import Attachment, ConversationRef, InboundMessage, OutboundFile, Reply
from tests.fakes.sink import RecordingSink
from tests.fakes.slack_server import FakeSlack

PING = 0.5  # Socket Mode health-check period = reconnect back-off in these tests


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    # slack_sdk reads proxy variables itself and ignores NO_PROXY (see TESTING-NOTES).
    for name in list(os.environ):
        if name.lower() in ("http_proxy", "https_proxy", "all_proxy"):
            monkeypatch.delenv(name, raising=False)


def secrets(**override: str) -> Secrets:
    values = {
        "slack_bot_token": FakeSlack.BOT_TOKEN,
        "slack_app_token": FakeSlack.APP_TOKEN,
        "slack_signing_secret": FakeSlack.SIGNING_SECRET,
        **override,
    }
    return Secrets(**{k: SecretStr(v) for k, v in values.items()})


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    server = FakeSlack()
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def socket_bot(fake: FakeSlack) -> AsyncIterator[tuple[SlackAdapter, RecordingSink]]:
    adapter = SlackAdapter(
        SlackConfig(enabled=True, mode="socket", api_base_url=fake.api_url),
        secrets(),
        ping_interval=PING,
    )
    sink = RecordingSink()
    await adapter.start(sink)
    await fake.wait_connections(1)
    yield adapter, sink
    await adapter.stop()


HttpBot = tuple[SlackAdapter, RecordingSink, str]


@pytest.fixture
async def http_bot_factory(
    fake: FakeSlack,
) -> AsyncIterator[Callable[[], Awaitable[HttpBot]]]:
    started: list[tuple[SlackAdapter, web.AppRunner]] = []

    async def make() -> HttpBot:
        app = web.Application()
        adapter = SlackAdapter(
            SlackConfig(enabled=True, mode="http", api_base_url=fake.api_url),
            secrets(),
        )
        app.add_routes(adapter.routes())  # as the App mounts every adapter's routes
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        sink = RecordingSink()
        await adapter.start(sink)
        started.append((adapter, runner))
        port = runner.addresses[0][1]
        return adapter, sink, f"http://127.0.0.1:{port}/slack/events"

    yield make
    for adapter, runner in started:
        await adapter.stop()
        await runner.cleanup()


# ------------------------------------------------------------------------ Socket Mode


async def test_is_an_adapter(socket_bot: tuple[SlackAdapter, RecordingSink]) -> None:
    adapter, _ = socket_bot
    assert isinstance(adapter, Adapter)
    assert adapter.bot_handles == ()  # <@U…> mentions need no handle
    assert adapter.routes() == []  # Socket Mode: nothing on Mercury's server


def test_from_config_builds_the_mode_and_names_what_is_missing() -> None:
    http = Config.model_validate({"adapters": {"slack": {"enabled": True, "mode": "http"}}})
    adapter = from_config(http, secrets())
    assert [(r.method, r.path) for r in adapter.routes()] == [("POST", "/slack/events")]
    with pytest.raises(ValueError, match="MERCURY_SLACK_SIGNING_SECRET"):
        from_config(http, Secrets(slack_bot_token=SecretStr(FakeSlack.BOT_TOKEN)))
    socket = Config.model_validate({"adapters": {"slack": {"enabled": True}}})
    with pytest.raises(ValueError, match="MERCURY_SLACK_APP_TOKEN"):
        from_config(socket, Secrets(slack_bot_token=SecretStr(FakeSlack.BOT_TOKEN)))
    with pytest.raises(ValueError, match="MERCURY_SLACK_BOT_TOKEN"):
        from_config(socket, Secrets())


async def test_dm_is_delivered_and_the_reply_lands_in_the_same_dm(
    fake: FakeSlack, socket_bot: tuple[SlackAdapter, RecordingSink]
) -> None:
    adapter, sink = socket_bot
    event = FakeSlack.message("hello **bot**", channel="D42", channel_type="im", ts="1700.000100")
    envelope = await fake.push_event(event)
    msg = await sink.next()
    assert (await fake.wait_ack(envelope))["envelope_id"] == envelope
    assert msg.is_dm and not msg.from_bot
    assert msg.platform == "slack"
    assert msg.platform_message_id == "D42:1700.000100"
    assert msg.conversation.chat_id == "D42" and msg.conversation.thread_id is None
    assert msg.author_id == "U1" and msg.author_name == "alice"
    assert msg.text == "hello **bot**"

    sent = await adapter.send(
        Reply(msg.conversation, "hi **alice**", reply_to=msg.platform_message_id)
    )
    post = await fake.next_post()
    assert post["channel"] == "D42"
    assert post["text"] == "hi *alice*"
    assert not post.get("thread_ts")  # a DM reads as a conversation, not threads
    assert sent.platform_message_ids == (f"D42:{post['ts']}",)


async def test_mention_in_channel_is_delivered_once_and_answered_in_its_thread(
    fake: FakeSlack, socket_bot: tuple[SlackAdapter, RecordingSink]
) -> None:
    adapter, sink = socket_bot
    ts = "1700.000200"
    text = f"<@{FakeSlack.BOT_USER_ID}> what time is it?"
    # Slack sends both events for one mention in a channel.
    await fake.push_event(FakeSlack.message(text, ts=ts, event_type="app_mention"))
    await fake.push_event(FakeSlack.message(text, ts=ts))
    msg = await sink.next()
    await sink.nothing_more()
    assert msg.mentions_bot and not msg.is_dm
    assert msg.platform_message_id == f"C1:{ts}"

    await adapter.set_typing(msg.conversation)
    await adapter.set_typing(msg.conversation)  # called every few seconds: one reaction
    added = fake.calls_to("reactions.add")
    assert len(added) == 1
    assert added[0].params["timestamp"] == ts and added[0].params["name"] == TYPING_REACTION

    status = await adapter.send_status(msg.conversation, "still working (30s)")
    assert (await fake.next_post())["thread_ts"] == ts  # next to the reply it announces
    await adapter.edit(msg.conversation, status.platform_message_ids[0], "still working (45s)")
    await adapter.delete(msg.conversation, status.platform_message_ids[0])
    status_ts = status.platform_message_ids[0].split(":")[1]
    assert fake.calls_to("chat.update")[0].params["ts"] == status_ts
    assert fake.calls_to("chat.delete")[0].params == {"channel": "C1", "ts": status_ts}
    # A reply is never taken for a status by its words: no reply_to, no thread.
    await adapter.send(Reply(msg.conversation, "still working on it, says the README"))
    assert not (await fake.next_post()).get("thread_ts")

    await adapter.send(Reply(msg.conversation, "noon", reply_to=msg.platform_message_id))
    post = await fake.next_post()
    assert post["channel"] == "C1" and post["thread_ts"] == ts and post["text"] == "noon"
    assert fake.calls_to("reactions.remove")[0].params["timestamp"] == ts


async def test_plain_channel_message_is_ambient_and_thread_replies_keep_their_thread(
    fake: FakeSlack, socket_bot: tuple[SlackAdapter, RecordingSink]
) -> None:
    adapter, sink = socket_bot
    await fake.push_event(FakeSlack.message("lunch anyone?", user="U2"))
    msg = await sink.next()
    assert not msg.mentions_bot and not msg.is_dm and not msg.reply_to_bot
    assert msg.author_name == "bob"

    # A reply in the thread of a message the bot posted.
    sent = await adapter.send(Reply(msg.conversation, "I can't eat"))
    bot_ts = sent.platform_message_ids[0].split(":")[1]
    await fake.next_post()
    await fake.push_event(
        FakeSlack.message(
            "why not?", thread_ts=bot_ts, parent_user_id=FakeSlack.BOT_USER_ID, ts="1700.000301"
        )
    )
    reply = await sink.next()
    assert reply.conversation.thread_id == bot_ts
    assert reply.reply_to_bot and not reply.mentions_bot
    await adapter.send(Reply(reply.conversation, "no mouth"))
    assert (await fake.next_post())["thread_ts"] == bot_ts


async def test_own_messages_are_ignored_and_other_bots_are_marked(
    fake: FakeSlack, socket_bot: tuple[SlackAdapter, RecordingSink]
) -> None:
    _, sink = socket_bot
    await fake.push_event(
        FakeSlack.message("my own reply", user=FakeSlack.BOT_USER_ID, bot_id=FakeSlack.BOT_ID)
    )
    await fake.push_event(
        {"type": "message", "subtype": "bot_message", "channel": "C1", "ts": "1700.000400",
         "bot_id": "BOTHER", "username": "deploybot", "text": "deployed"}
    )  # fmt: skip
    other = await sink.next()
    await sink.nothing_more()
    assert other.from_bot and other.author_id == "BOTHER" and other.author_name == "deploybot"
    assert [m.text for m in sink.received] == ["deployed"]


async def test_long_reply_is_split_under_the_limit_with_every_character(
    fake: FakeSlack, socket_bot: tuple[SlackAdapter, RecordingSink]
) -> None:
    adapter, sink = socket_bot
    await fake.push_event(FakeSlack.message("<@UBOT> essay please", ts="1700.000500"))
    msg = await sink.next()
    words = [f"word{i}" for i in range(2000)]
    lines = [" ".join(words[i : i + 12]) for i in range(0, len(words), 12)]
    text = "\n".join(lines)[:10_000]
    assert len(text) == 10_000
    sent = await adapter.send(Reply(msg.conversation, text, reply_to=msg.platform_message_id))
    posts = [await fake.next_post() for _ in sent.platform_message_ids]
    assert len(posts) >= 3
    assert all(len(p["text"]) <= MAX_MESSAGE_CHARS for p in posts)
    assert all(p["thread_ts"] == "1700.000500" for p in posts)
    assert "".join(p["text"] for p in posts) == text
    assert fake.posted.empty()


async def test_user_file_is_downloaded_with_the_bot_token_and_capped(
    fake: FakeSlack, socket_bot: tuple[SlackAdapter, RecordingSink]
) -> None:
    adapter, sink = socket_bot
    data = b"col1,col2\n1,2\n" * 100
    file = fake.add_file("data.csv", data, "text/csv")
    await fake.push_event(FakeSlack.message("see file", subtype="file_share", files=[file]))
    msg = await sink.next()
    (att,) = msg.attachments
    assert att == Attachment("data.csv", len(data), "text/csv", file["url_private_download"])
    assert await adapter.download(att, max_bytes=10_000) == data
    with pytest.raises(ValueError):
        await adapter.download(att, max_bytes=100)  # size known from the event
    unsized = Attachment("data.csv", None, "text/csv", att.ref)
    with pytest.raises(ValueError):
        await adapter.download(unsized, max_bytes=100)  # cap enforced while streaming
    with pytest.raises(ValueError):
        # The bot token is never sent to a host that is not Slack's.
        await adapter.download(Attachment("x", 1, None, "http://evil.example/x"), 100)


async def test_outbox_file_is_uploaded_into_the_thread(
    fake: FakeSlack, socket_bot: tuple[SlackAdapter, RecordingSink], tmp_path: Path
) -> None:
    adapter, sink = socket_bot
    await fake.push_event(FakeSlack.message("<@UBOT> chart?", ts="1700.000600", channel="C7"))
    msg = await sink.next()
    chart = tmp_path / "chart.png"
    chart.write_bytes(b"\x89PNG fake image bytes")
    await adapter.send(
        Reply(
            msg.conversation, "here", (OutboundFile(chart, "chart.png"),), msg.platform_message_id
        )
    )
    assert (await fake.next_post())["text"] == "here"
    (upload,) = fake.uploads.values()
    assert upload.filename == "chart.png"
    assert upload.data == chart.read_bytes()
    assert upload.completed["channel_id"] == "C7"
    assert upload.completed["thread_ts"] == "1700.000600"
    order = [c.method for c in fake.calls if c.method.startswith("files.") or c.method == "upload"]
    assert order == ["files.getUploadURLExternal", "upload", "files.completeUploadExternal"]


async def test_dropped_websocket_reconnects_and_a_later_event_arrives_once(
    fake: FakeSlack, socket_bot: tuple[SlackAdapter, RecordingSink]
) -> None:
    _, sink = socket_bot
    opened = len(fake.calls_to("apps.connections.open"))
    # The first attempt to get a new URL fails: the client must back off and try again.
    fake.fail_next("apps.connections.open", status=500)
    await fake.drop_websocket()
    await fake.wait_connections(2, timeout=15)
    assert len(fake.calls_to("apps.connections.open")) >= opened + 2
    envelope = await fake.push_event(FakeSlack.message("after the blip", ts="1700.000700"))
    msg = await sink.next()
    await fake.wait_ack(envelope)
    await sink.nothing_more()
    assert msg.text == "after the blip"
    assert [m.text for m in sink.received] == ["after the blip"]


async def test_malformed_events_are_logged_and_skipped(
    fake: FakeSlack, socket_bot: tuple[SlackAdapter, RecordingSink]
) -> None:
    _, sink = socket_bot
    with capture_logs() as logs:
        bad = [
            {"type": "message", "text": "no channel, no ts, no user"},
            {"type": "message", "channel": "C1", "ts": "1700.1", "user": "U1", "text": 42},
            {"type": "app_mention", "channel": "C1", "user": "U1"},
        ]
        envelopes = [await fake.push_event(e) for e in bad]
        for envelope in envelopes:
            await fake.wait_ack(envelope)  # acknowledged, so Slack does not redeliver
        await fake.push_event(FakeSlack.message("still here?", ts="1700.000800"))
        msg = await sink.next()
        await sink.nothing_more()
    assert msg.text == "still here?"
    assert len(sink.received) == 1
    skipped = [e for e in logs if e["event"] == "slack event skipped: malformed"]
    assert len(skipped) == 3


async def test_rate_limits_and_server_errors_are_retried(
    fake: FakeSlack, socket_bot: tuple[SlackAdapter, RecordingSink]
) -> None:
    adapter, sink = socket_bot
    await fake.push_event(FakeSlack.message("<@UBOT> hi", ts="1700.000900"))
    msg = await sink.next()
    fake.fail_next("chat.postMessage", status=429)
    fake.fail_next("chat.postMessage", status=503)
    sent = await adapter.send(Reply(msg.conversation, "hello", reply_to=msg.platform_message_id))
    assert len(fake.calls_to("chat.postMessage")) == 3
    assert len(sent.platform_message_ids) == 1
    assert (await fake.next_post())["text"] == "hello"


async def test_a_growing_answer_is_edited_in_place_and_a_second_delete_is_quiet(
    fake: FakeSlack, socket_bot: tuple[SlackAdapter, RecordingSink]
) -> None:
    adapter, _ = socket_bot
    conv = ConversationRef("slack", "D1")
    (mid,) = (await adapter.send(Reply(conv, "Here is"))).platform_message_ids
    await fake.next_post()
    half = "Here is the fix:\n```python\n# step 1\nif a < b and **c"  # open fence and **
    await adapter.edit(conv, mid, half)
    await adapter.edit(conv, mid, "x" * (MAX_MESSAGE_CHARS + 100))  # cut at the limit
    ts = mid.split(":")[1]
    assert [(e.chat_id, e.message_id) for e in fake.edits] == [("D1", ts)] * 2
    # The open fence is code to the end, closed: nothing in it is taken for Markdown.
    assert fake.edits[0].text == "Here is the fix:\n```\n# step 1\nif a &lt; b and **c\n```"
    assert fake.edits[1].text == "x" * MAX_MESSAGE_CHARS
    await adapter.delete(conv, mid)
    await adapter.delete(conv, mid)  # Slack: message_not_found, which is what we wanted
    assert [(d.chat_id, d.message_id) for d in fake.deletes] == [("D1", ts)]


async def test_a_preview_in_a_channel_sits_in_the_thread_of_the_answered_message(
    fake: FakeSlack, socket_bot: tuple[SlackAdapter, RecordingSink]
) -> None:
    adapter, sink = socket_bot
    ts = "1700.000300"
    await fake.push_event(FakeSlack.message(f"<@{FakeSlack.BOT_USER_ID}> plan?", ts=ts))
    msg = await sink.next()
    await adapter.send(Reply(msg.conversation, "Here is", preview=True))  # names no reply_to
    assert (await fake.next_post())["thread_ts"] == ts  # where the reply will go


async def test_bad_tokens_fail_start_with_a_clear_error(fake: FakeSlack) -> None:
    config = SlackConfig(enabled=True, mode="socket", api_base_url=fake.api_url)
    with pytest.raises(RuntimeError, match="MERCURY_SLACK_BOT_TOKEN"):
        await SlackAdapter(config, secrets(slack_bot_token="xoxb-wrong")).start(RecordingSink())
    with pytest.raises(RuntimeError, match="MERCURY_SLACK_APP_TOKEN"):
        await SlackAdapter(config, secrets(slack_app_token="xapp-wrong")).start(RecordingSink())
    with pytest.raises(ValueError, match="SIGNING_SECRET"):
        SlackAdapter(config.model_copy(update={"mode": "http"}), Secrets(
            slack_bot_token=SecretStr(FakeSlack.BOT_TOKEN)))  # fmt: skip


# ------------------------------------------------------------------------- HTTP mode


async def test_http_signature_and_url_verification(
    fake: FakeSlack, http_bot_factory: Callable[[], Awaitable[HttpBot]]
) -> None:
    _, sink, url = await http_bot_factory()
    payload = FakeSlack.callback(FakeSlack.message("hi", channel="D9", channel_type="im"))
    status, _ = await fake.deliver_http(url, payload, "not-the-secret")
    assert status == 401
    status, _ = await fake.deliver_http(
        url, payload, FakeSlack.SIGNING_SECRET, timestamp=1_000_000_000
    )
    assert status == 401  # a replayed old request: the timestamp is checked too
    challenge = {"type": "url_verification", "token": "t", "challenge": "c-123"}
    status, body = await fake.deliver_http(url, challenge, FakeSlack.SIGNING_SECRET)
    assert status == 200 and "c-123" in body
    assert sink.received == []

    status, _ = await fake.deliver_http(url, payload, FakeSlack.SIGNING_SECRET)
    assert status == 200
    msg = await sink.next()
    assert msg.is_dm and msg.conversation.chat_id == "D9"


async def test_http_retry_never_causes_a_second_run(
    fake: FakeSlack, http_bot_factory: Callable[[], Awaitable[HttpBot]]
) -> None:
    _, sink, url = await http_bot_factory()
    payload = FakeSlack.callback(FakeSlack.message("<@UBOT> once", ts="1700.001000"))
    assert (await fake.deliver_http(url, payload, FakeSlack.SIGNING_SECRET))[0] == 200
    first = await sink.next()
    status, _ = await fake.deliver_http(url, payload, FakeSlack.SIGNING_SECRET, retry_num=1)
    assert status == 200
    await sink.nothing_more()
    assert len(sink.received) == 1

    # After a restart the adapter has no memory: the retry still carries the same id,
    # which the pipeline dedups on.
    _, fresh_sink, fresh_url = await http_bot_factory()
    await fake.deliver_http(fresh_url, payload, FakeSlack.SIGNING_SECRET, retry_num=2)
    again = await fresh_sink.next()
    assert again.platform_message_id == first.platform_message_id == "C1:1700.001000"


async def test_http_acks_before_the_pipeline_finishes(
    fake: FakeSlack, http_bot_factory: Callable[[], Awaitable[HttpBot]]
) -> None:
    adapter, _, url = await http_bot_factory()
    release = asyncio.Event()
    got: list[InboundMessage] = []

    async def slow_sink(msg: InboundMessage) -> None:
        got.append(msg)
        await release.wait()

    adapter._sink = slow_sink  # a pipeline that takes its time
    payload = FakeSlack.callback(FakeSlack.message("slow", ts="1700.001100"))
    status, _ = await asyncio.wait_for(
        fake.deliver_http(url, payload, FakeSlack.SIGNING_SECRET), timeout=2
    )
    assert status == 200
    release.set()
    for _ in range(50):
        if got:
            break
        await asyncio.sleep(0.02)
    assert [m.text for m in got] == ["slow"]


# --------------------------------------------------------------------- mrkdwn units


@pytest.mark.parametrize(
    ("markdown", "mrkdwn"),
    [
        ("**bold** and *italic* and ~~gone~~", "*bold* and _italic_ and ~gone~"),
        ("__bold__ too", "*bold* too"),
        ("# Title with **bold**", "*Title with bold*"),
        ("### Small", "*Small*"),
        ("see [the docs](https://x.io/a?b=1&c=2)", "see <https://x.io/a?b=1&amp;c=2|the docs>"),
        ("<https://x.io>", "<https://x.io>"),
        ("a < b && c > d", "a &lt; b &amp;&amp; c &gt; d"),
        ("[a <b>](https://x.io)", "<https://x.io|a &lt;b&gt;>"),
        ("- one\n* two", "• one\n• two"),
        ("> quoted <tag>", "> quoted &lt;tag&gt;"),
        ("`a<b> **not bold**`", "`a&lt;b&gt; **not bold**`"),
        (
            "```python\nif a < b:\n    x = **y**\n```\ndone **ok**",
            "```\nif a &lt; b:\n    x = **y**\n```\ndone *ok*",
        ),
        ("snake_case_name and 2*3*4", "snake_case_name and 2*3*4"),
        ("plain text", "plain text"),
    ],
)
def test_markdown_to_mrkdwn(markdown: str, mrkdwn: str) -> None:
    assert to_mrkdwn(markdown) == mrkdwn


def test_mrkdwn_link_url_cannot_break_out() -> None:
    out = to_mrkdwn("[x](https://a.io/p|q>r)")
    assert out == "<https://a.io/p%7Cq%3Er|x>"
