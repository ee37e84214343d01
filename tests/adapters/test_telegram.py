"""The Telegram adapter end to end: real python-telegram-bot against the fake Bot API."""

from __future__ import annotations

import html
import io
import logging
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web
from pydantic import SecretStr
from telegram.error import BadRequest

from mercury.adapters.base import Adapter
from mercury.adapters.telegram import from_config
from mercury.adapters.telegram.adapter import WEBHOOK_PATH, TelegramAdapter
from mercury.adapters.telegram.format import (
    markdown_to_html,
    split_for_telegram,
    split_markdown,
    utf16_len,
)
from mercury.config import Config, Secrets, TelegramConfig
from mercury.core.messages import (
    Attachment,
    ConversationRef,
    OutboundFile,
    Reply,
)
from mercury.logging import configure_logging
from tests.fakes.sink import RecordingSink
from tests.fakes.telegram_server import BOT_ID, BOT_USERNAME, Call, FakeTelegram

# Shaped like a real token, so the test also shows the log filter, not only the
# shape-based scrubbing in mercury.logging, keeps it out of the logs.
TOKEN = "123456789:AAHfakeTokenForTests-only_abcdefghijk"
WEBHOOK_SECRET = "s3cret-webhook_token"
POLL_TIMEOUT = 5.0

# ------------------------------------------------------------------ helpers


def visible(html_text: str) -> str:
    """What a Telegram user sees of our HTML: tags dropped, entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", "", html_text))


def secrets(**extra: Any) -> Secrets:
    return Secrets(telegram_bot_token=SecretStr(TOKEN), **extra)


@pytest.fixture(autouse=True)
def captured_logs(caplog: pytest.LogCaptureFixture) -> Iterator[io.StringIO]:
    """Mercury's real logging set-up, at debug, into a buffer (plus caplog's raw records)."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    stream = io.StringIO()
    configure_logging("debug", "json", stream)
    root.addHandler(caplog.handler)
    caplog.set_level(logging.DEBUG)
    yield stream
    root.handlers[:], root.level = saved
    structlog.reset_defaults()


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram(TOKEN) as server:
        yield server


def make_config(fake: FakeTelegram, mode: str = "polling") -> TelegramConfig:
    return TelegramConfig(
        enabled=True, mode=mode, api_base_url=fake.base_url, file_base_url=fake.file_url
    )


@pytest.fixture
async def adapter(fake: FakeTelegram) -> AsyncIterator[tuple[TelegramAdapter, RecordingSink]]:
    tg = TelegramAdapter(make_config(fake), secrets(), poll_timeout=POLL_TIMEOUT)
    sink = RecordingSink()
    await tg.start(sink)
    try:
        yield tg, sink
    finally:
        await tg.stop()


def mention_entity(text: str, handle: str) -> dict[str, Any]:
    return {"type": "mention", "offset": text.index(handle), "length": len(handle)}


# ------------------------------------------------------------------ Markdown -> HTML


@pytest.mark.parametrize(
    ("markdown", "expected"),
    [
        ("a < b & c > d", "a &lt; b &amp; c &gt; d"),
        ("**bold** and *it* and _it_", "<b>bold</b> and <i>it</i> and <i>it</i>"),
        ("snake_case_name and 2 * 3 * 4", "snake_case_name and 2 * 3 * 4"),
        ("`x < y && z > 0`", "<code>x &lt; y &amp;&amp; z &gt; 0</code>"),
        ("`**not bold**`", "<code>**not bold**</code>"),
        ("~~gone~~", "<s>gone</s>"),
        (
            "```python\nif a < b & c:\n    print('<b>')\n```",
            '<pre><code class="language-python">if a &lt; b &amp; c:\n'
            "    print('&lt;b&gt;')</code></pre>",
        ),
        ("```\nplain <pre>\n```", "<pre>plain &lt;pre&gt;</pre>"),
        (
            '[docs & more](https://e.com/?a=1&b="x")',
            '<a href="https://e.com/?a=1&amp;b=&quot;x&quot;">docs &amp; more</a>',
        ),
        ("[click](javascript:alert)", "click (javascript:alert)"),
        ("# Title <1>", "<b>Title &lt;1&gt;</b>"),
        ("- one\n- **two**", "• one\n• <b>two</b>"),
        ("> quoted & fine", "<blockquote>quoted &amp; fine</blockquote>"),
        ("**unclosed <b>", "**unclosed &lt;b&gt;"),
    ],
)
def test_markdown_to_telegram_html(markdown: str, expected: str) -> None:
    assert markdown_to_html(markdown) == expected


def test_split_chunks_are_balanced_html_and_lose_nothing() -> None:
    body = "\n".join(f"line {i} <tag> & **b{i}** `c<{i}>`" for i in range(400))
    text = f"intro\n```sh\n{body}\n```\nend & done"
    chunks = split_for_telegram(text)
    assert len(chunks) > 1
    for chunk in chunks:
        assert len(visible(chunk)) <= 4096
        # every tag we open is closed, in order
        stack: list[str] = []
        for closing, name in re.findall(r"<(/?)([a-z]+)[^>]*>", chunk):
            if closing:
                assert stack.pop() == name
            else:
                stack.append(name)
        assert not stack
    # a fence cut in two is reopened with its language
    assert all('<code class="language-sh">' in c for c in chunks[1:])
    # every code line arrives whole and literal (no markup applied inside the block)
    joined = "\n".join(visible(c) for c in chunks)
    seen = [line for line in joined.split("\n") if line.startswith("line ")]
    assert seen == body.split("\n")
    assert joined.startswith("intro\n") and joined.endswith("end & done")


def test_split_counts_utf16_units_like_telegram() -> None:
    text = "🙂 " * 3000  # 6000 code points, 9000 UTF-16 units
    chunks = split_markdown(text)
    assert all(utf16_len(c) <= 4096 for c in chunks)
    assert "".join(chunks) == text


# ------------------------------------------------------------------ inbound / outbound


async def test_adapter_satisfies_protocol(adapter: tuple[TelegramAdapter, RecordingSink]) -> None:
    tg, _ = adapter
    assert isinstance(tg, Adapter)
    assert tg.bot_handles == (f"@{BOT_USERNAME}",)
    assert tg.routes() == []  # polling: nothing on Mercury's server


async def test_private_message_is_dm_and_reply_lands_in_that_chat(
    fake: FakeTelegram, adapter: tuple[TelegramAdapter, RecordingSink]
) -> None:
    tg, sink = adapter
    update = fake.push_update(fake.message_update(chat_id=42, text="hello there"))
    msg = await sink.next()
    assert msg.is_dm and not msg.mentions_bot and not msg.from_bot
    assert msg.conversation == ConversationRef("telegram", "42", None)
    assert msg.platform_message_id == f"42:{update['message']['message_id']}"
    assert msg.author_id == "501" and msg.author_name == "Ada"
    assert msg.text == "hello there"

    sent = await tg.send(Reply(msg.conversation, "**Hi** <you> & co"))
    call = await fake.next_outbound()
    assert call.method == "sendMessage"
    assert call.params["chat_id"] == 42
    assert call.params["parse_mode"] == "HTML"
    assert call.params["text"] == "<b>Hi</b> &lt;you&gt; &amp; co"
    assert "reply_parameters" not in call.params
    assert len(sent.platform_message_ids) == 1
    assert sent.platform_message_ids[0].startswith("42:")


async def test_group_mention_triggers_and_reply_quotes_the_message(
    fake: FakeTelegram, adapter: tuple[TelegramAdapter, RecordingSink]
) -> None:
    tg, sink = adapter
    text = f"@{BOT_USERNAME} what is 2+2?"
    update = fake.push_update(
        fake.message_update(
            chat_id=-1001, text=text, entities=[mention_entity(text, f"@{BOT_USERNAME}")]
        )
    )
    msg = await sink.next()
    assert msg.mentions_bot and not msg.is_dm
    assert msg.conversation == ConversationRef("telegram", "-1001", None)

    await tg.send(Reply(msg.conversation, "4", reply_to=msg.platform_message_id))
    call = await fake.next_outbound()
    assert call.params["chat_id"] == -1001
    assert call.params["reply_parameters"] == {
        "message_id": update["message"]["message_id"],
        "allow_sending_without_reply": True,
    }


async def test_group_mention_detection_variants(
    fake: FakeTelegram, adapter: tuple[TelegramAdapter, RecordingSink]
) -> None:
    _, sink = adapter
    plain = "just chatting about mercury_test_bot"
    other = "@other_bot hi"
    command = f"/ask@{BOT_USERNAME} hi"
    fake.push_update(fake.message_update(chat_id=-1001, text=plain))
    fake.push_update(
        fake.message_update(
            chat_id=-1001, text=other, entities=[mention_entity(other, "@other_bot")]
        )
    )
    fake.push_update(
        fake.message_update(
            chat_id=-1001,
            text=command,
            entities=[{"type": "bot_command", "offset": 0, "length": command.index(" ")}],
        )
    )
    # no entities at all (as some clients send): the raw text still counts
    fake.push_update(fake.message_update(chat_id=-1001, text=f"hey @{BOT_USERNAME.upper()}!"))
    results = [(await sink.next()).mentions_bot for _ in range(4)]
    assert results == [False, False, True, True]


async def test_reply_to_bot_and_bot_authors(
    fake: FakeTelegram, adapter: tuple[TelegramAdapter, RecordingSink]
) -> None:
    _, sink = adapter
    bot_message = {
        "message_id": 77,
        "date": 1700000000,
        "chat": {"id": -1001, "type": "supergroup", "title": "g"},
        "from": {"id": BOT_ID, "is_bot": True, "first_name": "Mercury", "username": BOT_USERNAME},
        "text": "earlier answer",
    }
    human_message = {**bot_message, "from": {"id": 9, "is_bot": False, "first_name": "Bo"}}
    fake.push_update(fake.message_update(chat_id=-1001, text="thanks!", reply_to=bot_message))
    fake.push_update(fake.message_update(chat_id=-1001, text="me too", reply_to=human_message))
    fake.push_update(fake.message_update(chat_id=-1001, text="beep", user_id=66, is_bot=True))
    fake.push_update(fake.message_update(chat_id=-1001, text="echo", user_id=BOT_ID, is_bot=True))
    first, second, other_bot, own = [await sink.next() for _ in range(4)]
    assert first.reply_to_bot and not first.mentions_bot and not first.from_bot
    assert not second.reply_to_bot
    assert other_bot.from_bot and own.from_bot


async def test_forum_topic_keeps_its_thread(
    fake: FakeTelegram, adapter: tuple[TelegramAdapter, RecordingSink]
) -> None:
    tg, sink = adapter
    text = f"@{BOT_USERNAME} in a topic"
    fake.push_update(
        fake.message_update(
            chat_id=-1002,
            text=text,
            thread_id=7,
            entities=[mention_entity(text, f"@{BOT_USERNAME}")],
        )
    )
    msg = await sink.next()
    assert msg.conversation == ConversationRef("telegram", "-1002", "7")
    await tg.send(Reply(msg.conversation, "ok", reply_to=msg.platform_message_id))
    call = await fake.next_outbound()
    assert call.params["message_thread_id"] == 7
    await tg.set_typing(msg.conversation)
    typing = fake.calls_to("sendChatAction")[-1]
    assert typing.params == {"chat_id": -1002, "action": "typing", "message_thread_id": 7}


async def test_long_reply_is_split_not_truncated(
    fake: FakeTelegram, adapter: tuple[TelegramAdapter, RecordingSink]
) -> None:
    tg, _ = adapter
    words = [f"w{i}<&>" if i % 7 == 0 else f"word{i}" for i in range(2000)]
    lines = [" ".join(words[i : i + 12]) for i in range(0, len(words), 12)]
    text = "\n".join(lines)
    text = (text * (10_000 // len(text) + 1))[:10_000]
    assert len(text) == 10_000
    conv = ConversationRef("telegram", "42")
    sent = await tg.send(Reply(conv, text, reply_to="42:5"))
    calls = [await fake.next_outbound() for _ in range(len(sent.platform_message_ids))]
    assert len(calls) >= 3
    assert all(len(visible(c.params["text"])) <= 4096 for c in calls)
    assert "".join(visible(c.params["text"]) for c in calls) == text
    # only the first chunk is a reply
    assert calls[0].params["reply_parameters"]["message_id"] == 5
    assert all("reply_parameters" not in c.params for c in calls[1:])
    assert fake.outbound.empty()


async def test_photo_and_document_in_are_downloaded_with_a_cap(
    fake: FakeTelegram, adapter: tuple[TelegramAdapter, RecordingSink]
) -> None:
    tg, sink = adapter
    photo_bytes = b"\x89PNG" + bytes(range(256)) * 40
    doc_bytes = b"report,value\n" * 500
    fake.add_file("ph-big", photo_bytes, "photos/file_1.jpg")
    fake.add_file("doc-1", doc_bytes, "documents/report.csv")
    fake.push_update(
        fake.message_update(
            chat_id=42,
            caption="look",
            photo=[
                {"file_id": "ph-small", "file_unique_id": "s", "width": 90, "height": 90,
                 "file_size": 100},
                {"file_id": "ph-big", "file_unique_id": "b", "width": 800, "height": 800,
                 "file_size": len(photo_bytes)},
            ],
        )
    )  # fmt: skip
    fake.push_update(
        fake.message_update(
            chat_id=42,
            document={"file_id": "doc-1", "file_unique_id": "d1", "file_name": "report.csv",
                      "mime_type": "text/csv"},
        )
    )  # fmt: skip
    photo_msg = await sink.next()
    doc_msg = await sink.next()
    assert photo_msg.text == "look"
    (photo,) = photo_msg.attachments
    assert photo.ref == "ph-big" and photo.size == len(photo_bytes)
    assert photo.content_type == "image/jpeg"
    (doc,) = doc_msg.attachments
    assert (doc.name, doc.content_type, doc.size) == ("report.csv", "text/csv", None)

    assert await tg.download(photo, max_bytes=1_000_000) == photo_bytes
    assert await tg.download(doc, max_bytes=1_000_000) == doc_bytes
    with pytest.raises(ValueError):
        await tg.download(photo, max_bytes=100)  # known size: refused before fetching
    # Unknown size up front: getFile tells (fake) or the stream is cut at the cap.
    with pytest.raises(ValueError):
        await tg.download(doc, max_bytes=1000)
    # The stream cap alone, when getFile reports no size.
    no_size = Attachment(name="x.bin", ref="doc-1")
    original = fake._m_getFile

    async def get_file_without_size(call: Any) -> Any:
        result = await original(call)
        result.pop("file_size")
        return result

    fake._m_getFile = get_file_without_size  # type: ignore[method-assign]
    with pytest.raises(ValueError, match="limit"):
        await tg.download(no_size, max_bytes=1000)
    assert await tg.download(no_size, max_bytes=len(doc_bytes)) == doc_bytes


async def test_outbox_files_go_out_as_document_and_photo(
    fake: FakeTelegram, adapter: tuple[TelegramAdapter, RecordingSink], tmp_path: Path
) -> None:
    tg, _ = adapter
    report = tmp_path / "report.csv"
    report.write_bytes(b"a,b\n1,2\n")
    chart = tmp_path / "chart.png"
    chart.write_bytes(b"\x89PNG fake image bytes")
    conv = ConversationRef("telegram", "42")
    sent = await tg.send(
        Reply(
            conv,
            "here you go",
            files=(OutboundFile(report, "report.csv"), OutboundFile(chart, "chart.png")),
        )
    )
    text, document, photo = [await fake.next_outbound() for _ in range(3)]
    assert text.method == "sendMessage"
    assert document.method == "sendDocument"
    assert document.files["document"] == ("report.csv", b"a,b\n1,2\n")
    assert document.params["chat_id"] == 42
    assert photo.method == "sendPhoto"
    assert photo.files["photo"] == ("chart.png", b"\x89PNG fake image bytes")
    assert len(sent.platform_message_ids) == 3


async def test_edit_and_delete(
    fake: FakeTelegram, adapter: tuple[TelegramAdapter, RecordingSink]
) -> None:
    tg, _ = adapter
    conv = ConversationRef("telegram", "-1001")
    sent = await tg.send(Reply(conv, "working…"))
    (mid,) = sent.platform_message_ids
    await tg.edit(conv, mid, "still working (30s) & *counting*")
    edit = fake.calls_to("editMessageText")[-1]
    assert edit.params["message_id"] == int(mid.split(":")[1])
    assert edit.params["text"] == "still working (30s) &amp; <i>counting</i>"
    assert edit.params["parse_mode"] == "HTML"
    await tg.delete(conv, mid)
    delete = fake.calls_to("deleteMessage")[-1]
    assert delete.params == {"chat_id": -1001, "message_id": int(mid.split(":")[1])}


HALF_WRITTEN = "Here is the fix:\n```python\nif a < b and **c"  # an open fence, an open **


async def test_a_growing_answer_is_edited_in_place_even_half_written(
    fake: FakeTelegram, adapter: tuple[TelegramAdapter, RecordingSink]
) -> None:
    tg, _ = adapter
    conv = ConversationRef("telegram", "501")
    (mid,) = (await tg.send(Reply(conv, "Here is"))).platform_message_ids
    grown = HALF_WRITTEN + ":\n    pass\n```\nThat **works"
    for text in ("Here is the fix:", HALF_WRITTEN, grown, grown):
        await tg.edit(conv, mid, text)
    # The fake parses HTML as Telegram does; the repeated text is "message is not modified".
    assert [c.status for c in fake.calls_to("editMessageText")] == [200, 200, 200, 400]
    assert [e.message_id for e in fake.edits] == [mid.split(":")[1]] * 3
    assert [visible(e.text) for e in fake.edits] == [
        "Here is the fix:",
        "Here is the fix:\nif a < b and **c",
        "Here is the fix:\nif a < b and **c:\n    pass\nThat **works",
    ]
    assert fake.edits[0].at <= fake.edits[1].at <= fake.edits[2].at


async def test_an_edit_telegram_refuses_as_html_goes_out_as_plain_text(
    fake: FakeTelegram, adapter: tuple[TelegramAdapter, RecordingSink]
) -> None:
    tg, _ = adapter
    conv = ConversationRef("telegram", "501")
    (mid,) = (await tg.send(Reply(conv, "Here is"))).platform_message_ids

    async def refuse_html(call: Call) -> web.Response | None:
        if call.method == "editMessageText" and call.params.get("parse_mode") == "HTML":
            return web.json_response(
                {"ok": False, "error_code": 400,
                 "description": "Bad Request: can't parse entities: Unsupported start tag"},
                status=400,
            )  # fmt: skip
        return None

    fake.on_call = refuse_html
    await tg.edit(conv, mid, HALF_WRITTEN)
    await tg.edit(conv, mid, HALF_WRITTEN)  # not modified, on the plain path too
    assert [(c.params.get("parse_mode"), c.status) for c in fake.calls_to("editMessageText")] == [
        ("HTML", 400), (None, 200), ("HTML", 400), (None, 400),
    ]  # fmt: skip
    assert [e.text for e in fake.edits] == [HALF_WRITTEN]
    fake.on_call = None
    fake.fail_next("editMessageText", 400)  # any other refusal is the caller's to see
    with pytest.raises(BadRequest):
        await tg.edit(conv, mid, "something else")


# ------------------------------------------------------------------ failures


async def test_get_updates_5xx_recovers_and_delivers_exactly_once(
    fake: FakeTelegram, adapter: tuple[TelegramAdapter, RecordingSink], captured_logs: io.StringIO
) -> None:
    _, sink = adapter
    fake.push_update(fake.message_update(chat_id=42, text="before"))
    assert (await sink.next()).text == "before"
    polls_before = len(fake.calls_to("getUpdates"))
    fake.fail_get_updates(3, status=502)
    # Wake the long poll that is waiting now, so the failing ones start right away.
    fake.push_update(fake.message_update(chat_id=42, text="during"))
    during = await sink.next(timeout=20)
    assert during.text == "during"
    failed = [c for c in fake.calls_to("getUpdates")[polls_before:] if c.status == 502]
    assert len(failed) == 3
    fake.push_update(fake.message_update(chat_id=42, text="after"))
    assert (await sink.next()).text == "after"
    await sink.nothing_more(1.0)  # nothing delivered twice
    assert "telegram polling failed, retrying" in captured_logs.getvalue()


async def test_malformed_update_is_logged_and_skipped(
    fake: FakeTelegram, adapter: tuple[TelegramAdapter, RecordingSink], captured_logs: io.StringIO
) -> None:
    _, sink = adapter
    bad = fake.push_update({"message": {"message_id": 1, "text": "no chat, no date"}})
    weird = fake.push_update({"message": "not an object"})
    fake.push_update(fake.message_update(chat_id=42, text="still here"))
    assert (await sink.next()).text == "still here"
    await sink.nothing_more(0.3)
    logs = captured_logs.getvalue()
    assert "telegram update malformed, skipped" in logs
    # the offset moved past the bad updates, so they are not fetched again
    last_offset = fake.calls_to("getUpdates")[-1].params.get("offset", 0)
    assert last_offset > max(bad["update_id"], weird["update_id"])
    fake.push_update(fake.message_update(chat_id=42, text="and again"))
    assert (await sink.next()).text == "and again"


async def test_edited_messages_and_other_updates_are_ignored(
    fake: FakeTelegram, adapter: tuple[TelegramAdapter, RecordingSink]
) -> None:
    _, sink = adapter
    edited = fake.message_update(chat_id=42, text="edited")
    fake.push_update({"edited_message": edited["message"]})
    fake.push_update(fake.message_update(chat_id=42, text="fresh"))
    assert (await sink.next()).text == "fresh"
    await sink.nothing_more(0.3)


async def test_bot_token_never_in_logs(
    fake: FakeTelegram,
    adapter: tuple[TelegramAdapter, RecordingSink],
    captured_logs: io.StringIO,
    caplog: pytest.LogCaptureFixture,
) -> None:
    tg, sink = adapter
    fake.add_file("doc-1", b"data", "documents/a.txt")
    fake.push_update(fake.message_update(chat_id=42, text="hi"))
    await sink.next()
    await tg.send(Reply(ConversationRef("telegram", "42"), "hello"))
    await tg.download(Attachment(name="a.txt", ref="doc-1"), 100)
    fake.fail_get_updates(1, status=500)
    fake.push_update(fake.message_update(chat_id=42, text="again"))
    await sink.next()
    # httpx logs every request URL (which contains the token) at INFO: it was there ...
    assert any(r.name == "httpx" and "/bot" in r.getMessage() for r in caplog.records)
    # ... and never with the token, neither raw records nor Mercury's rendered output.
    secret_part = TOKEN.split(":")[1]
    assert secret_part not in caplog.text
    assert secret_part not in captured_logs.getvalue()
    # (checked again now: PTB mutates objects it logged, formatting late must not leak)
    assert all(secret_part not in r.getMessage() for r in caplog.records)


async def test_bad_token_fails_start(fake: FakeTelegram) -> None:
    tg = TelegramAdapter(
        make_config(fake),
        Secrets(telegram_bot_token=SecretStr("999:wrong")),
        poll_timeout=POLL_TIMEOUT,
    )
    with pytest.raises(RuntimeError, match="MERCURY_TELEGRAM_BOT_TOKEN") as info:
        await tg.start(RecordingSink())
    assert "wrong" not in str(info.value)  # PTB's own message quotes the token


# ------------------------------------------------------------------ webhook mode


@pytest.fixture
async def webhook(
    fake: FakeTelegram,
) -> AsyncIterator[tuple[TelegramAdapter, RecordingSink, str]]:
    app = web.Application()
    tg = TelegramAdapter(
        make_config(fake, "webhook"),
        secrets(telegram_webhook_secret=SecretStr(WEBHOOK_SECRET)),
        public_url="https://bot.example.org/",
    )
    app.add_routes(tg.routes())  # as the App mounts every adapter's routes
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}{WEBHOOK_PATH}"
    sink = RecordingSink()
    await tg.start(sink)
    try:
        yield tg, sink, url
    finally:
        await tg.stop()
        await runner.cleanup()


async def test_webhook_secret_checked_and_updates_delivered_once(
    fake: FakeTelegram, webhook: tuple[TelegramAdapter, RecordingSink, str]
) -> None:
    tg, sink, url = webhook
    assert fake.webhook is not None
    assert fake.webhook["url"] == "https://bot.example.org/telegram/webhook"
    assert fake.webhook["secret_token"] == WEBHOOK_SECRET
    assert not fake.calls_to("getUpdates")  # no polling in webhook mode

    update = fake.message_update(chat_id=42, text="via webhook")
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json=update) as resp:
            assert resp.status == 401
        async with http.post(
            url, json=update, headers={"X-Telegram-Bot-Api-Secret-Token": "wrong"}
        ) as resp:
            assert resp.status == 401
        await sink.nothing_more(0.2)
        good = {"X-Telegram-Bot-Api-Secret-Token": WEBHOOK_SECRET}
        async with http.post(url, json=update, headers=good) as resp:
            assert resp.status == 200
        msg = await sink.next()
        assert msg.text == "via webhook" and msg.is_dm
        # Telegram redelivers when it missed our 200: still one message
        async with http.post(url, json=update, headers=good) as resp:
            assert resp.status == 200
        # a malformed update is acknowledged (so it is not redelivered) and skipped
        async with http.post(url, json={"update_id": 99, "message": {"x": 1}}, headers=good) as r:
            assert r.status == 200
        async with http.post(url, data=b"not json", headers=good) as resp:
            assert resp.status == 400
        await sink.nothing_more(0.3)

    await tg.send(Reply(msg.conversation, "answer"))
    assert (await fake.next_outbound()).params["text"] == "answer"
    await tg.stop()
    assert fake.calls_to("deleteWebhook")
    assert fake.webhook is None


def test_webhook_mode_requires_secret_and_public_url() -> None:
    config = TelegramConfig(enabled=True, mode="webhook")
    with pytest.raises(ValueError, match="WEBHOOK_SECRET"):
        TelegramAdapter(config, secrets(), public_url="https://x")
    with pytest.raises(ValueError, match="public_url"):
        TelegramAdapter(config, secrets(telegram_webhook_secret=SecretStr(WEBHOOK_SECRET)))


def test_from_config_takes_the_public_url_and_names_what_is_missing() -> None:
    webhook = {"adapters": {"telegram": {"enabled": True, "mode": "webhook"}}}
    with_secret = secrets(telegram_webhook_secret=SecretStr(WEBHOOK_SECRET))
    with pytest.raises(ValueError, match=r"server\.public_url"):
        from_config(Config.model_validate(webhook), with_secret)
    config = Config.model_validate({**webhook, "server": {"public_url": "https://bot.example"}})
    tg = from_config(config, with_secret)
    assert tg.webhook_url == "https://bot.example/telegram/webhook"
    assert [(r.method, r.path) for r in tg.routes()] == [("POST", WEBHOOK_PATH)]
    with pytest.raises(ValueError, match="MERCURY_TELEGRAM_BOT_TOKEN"):
        from_config(config, Secrets())
