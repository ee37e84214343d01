"""The streamed reply's preview (pipeline/preview.py): pacing, coalescing, 429s, overflow.

The adapter is the real web chat adapter (its log is in memory, no network); the clock is
a fake one, advanced by the preview's own sleeps, so pacing is checked exactly without
measuring wall-clock time. `FlakyWeb` (below) adds what the web chat never does: refusals
for a rate limit, as the Slack, Discord and Telegram adapters raise them (those are
exercised on their real libraries in tests/adapters/ and end to end in the stream tests).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mercury.adapters.base import RateLimited
from mercury.adapters.web.adapter import WebChatAdapter
from mercury.api.stream_events import CallEnded, CallStarted, TextDelta, ToolCall
from mercury.core.messages import ConversationRef
from mercury.pipeline.preview import StreamPreview

CONV = ConversationRef("web", "space1")


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


class FlakyWeb(WebChatAdapter):
    """The web chat, refusing the next `refuse` edits for a rate limit."""

    refuse = 0
    retry_after = 3.0
    calls: list[tuple[str, float]]

    async def edit(self, conversation: ConversationRef, message_id: str, text: str) -> None:
        self.calls.append(("edit", self.clock()))
        if self.refuse:
            self.refuse -= 1
            raise RateLimited(self.retry_after, "edit")
        await super().edit(conversation, message_id, text)


def web(tmp_path: Path, cls: type[WebChatAdapter] = WebChatAdapter) -> WebChatAdapter:
    return cls(username="admin", password="pw", max_upload=1024, upload_dir=tmp_path)


def shown(adapter: WebChatAdapter) -> list[str]:
    return [e["text"] for e in adapter.logs.after("space1", None) if e.get("role") == "assistant"]


async def settle(preview: StreamPreview) -> None:
    for _ in range(50):
        await asyncio.sleep(0)
    del preview


async def test_the_preview_grows_in_one_message_and_goes_when_finished(tmp_path: Path) -> None:
    adapter = web(tmp_path)
    clock = FakeClock()
    preview = StreamPreview(adapter, CONV, interval=1.0, clock=clock, sleep=clock.sleep)
    preview.on_event(CallStarted("anthropic", "m"))
    preview.on_event(TextDelta("Hello"))
    await settle(preview)
    assert shown(adapter) == ["Hello"]
    assert preview.visible
    preview.on_event(TextDelta(" world"))
    await settle(preview)
    assert shown(adapter) == ["Hello world"]  # edited in place, not a second message
    preview.on_event(CallEnded(True))
    await preview.finish()
    assert shown(adapter) == []


async def test_edits_are_paced_and_coalesced(tmp_path: Path) -> None:
    adapter = web(tmp_path)
    clock = FakeClock()
    preview = StreamPreview(adapter, CONV, interval=1.0, clock=clock, sleep=clock.sleep)
    preview.on_event(TextDelta("a"))
    await settle(preview)
    start = clock.now
    # Twenty deltas arrive before the next edit is allowed: they go out as one edit.
    for i in range(20):
        preview.on_event(TextDelta(f" {i}"))
    await settle(preview)
    assert preview.edits == 2  # the first send, then one edit for all twenty
    assert clock.now - start >= 1.0  # the edit waited for the interval (fake clock)
    assert shown(adapter) == ["a " + " ".join(str(i) for i in range(20))]
    await preview.finish()


async def test_a_rate_limit_is_waited_out_and_the_latest_text_still_shows(
    tmp_path: Path,
) -> None:
    adapter = web(tmp_path, FlakyWeb)
    assert isinstance(adapter, FlakyWeb)
    clock = FakeClock()
    adapter.calls = []
    adapter.clock = clock  # type: ignore[attr-defined]
    adapter.refuse = 1
    adapter.retry_after = 5.0
    preview = StreamPreview(adapter, CONV, interval=1.0, clock=clock, sleep=clock.sleep)
    preview.on_event(TextDelta("one"))
    await settle(preview)
    preview.on_event(TextDelta(" two"))
    await settle(preview)
    # Refused once: the next try came no sooner than retry-after later.
    edits = [t for kind, t in adapter.calls if kind == "edit"]
    assert len(edits) == 2
    assert edits[1] - edits[0] >= 5.0
    assert shown(adapter) == ["one two"]
    await preview.finish()


async def test_a_long_answer_continues_in_a_new_message(tmp_path: Path) -> None:
    adapter = web(tmp_path)
    clock = FakeClock()
    preview = StreamPreview(adapter, CONV, interval=0.5, limit=100, clock=clock, sleep=clock.sleep)
    words = [f"word{i}" for i in range(60)]
    for w in words:
        preview.on_event(TextDelta(w + " "))
    await settle(preview)
    messages = shown(adapter)
    assert len(messages) >= 3
    assert all(len(m) <= 100 for m in messages)
    assert " ".join(messages).split() == words  # nothing lost between the messages
    await preview.finish()
    assert shown(adapter) == []


async def test_a_tool_shows_its_status(tmp_path: Path) -> None:
    adapter = web(tmp_path)
    clock = FakeClock()
    preview = StreamPreview(adapter, CONV, interval=0.0, clock=clock, sleep=clock.sleep)
    preview.on_event(CallStarted("openai", None))
    preview.on_event(ToolCall("bash"))
    await settle(preview)
    assert shown(adapter) == ["_running bash…_"]
    await preview.finish()


async def test_a_platform_that_refuses_edits_stops_only_the_preview(tmp_path: Path) -> None:
    class Broken(WebChatAdapter):
        async def edit(self, conversation: ConversationRef, message_id: str, text: str) -> None:
            raise RuntimeError("message can't be edited")

    adapter = web(tmp_path, Broken)
    clock = FakeClock()
    preview = StreamPreview(adapter, CONV, interval=0.0, clock=clock, sleep=clock.sleep)
    preview.on_event(TextDelta("a"))
    await settle(preview)
    preview.on_event(TextDelta("b"))
    await settle(preview)
    preview.on_event(TextDelta("c"))  # ignored: the preview stopped
    await settle(preview)
    assert shown(adapter) == ["a"]
    await preview.finish()  # still removes what it showed
    assert shown(adapter) == []


@pytest.mark.parametrize("events", [[], [CallStarted("anthropic", "m"), CallEnded(False)]])
async def test_nothing_written_means_no_preview(tmp_path: Path, events: list[object]) -> None:
    adapter = web(tmp_path)
    preview = StreamPreview(adapter, CONV, interval=1.0)
    for e in events:
        preview.on_event(e)  # type: ignore[arg-type]
    await settle(preview)
    assert shown(adapter) == [] and not preview.visible
    await preview.finish()


async def test_a_preview_sent_while_the_run_ends_is_still_removed(tmp_path: Path) -> None:
    """The run ends while the preview's first send is on its way: stop() lets the send
    finish rather than cancel it, so the message the platform made has an id to delete."""
    arrived = asyncio.Event()
    release = asyncio.Event()

    class Slow(WebChatAdapter):
        async def send(self, reply):  # type: ignore[no-untyped-def]
            arrived.set()
            await release.wait()
            return await super().send(reply)

    adapter = web(tmp_path, Slow)
    preview = StreamPreview(adapter, CONV, interval=0.0)
    preview.on_event(TextDelta("half an answer"))
    await arrived.wait()
    stopping = asyncio.get_running_loop().create_task(preview.stop())
    await settle(preview)
    assert not stopping.done()  # waits for the send under way
    release.set()
    await stopping
    assert shown(adapter) == ["half an answer"]
    await preview.finish()
    assert shown(adapter) == []
