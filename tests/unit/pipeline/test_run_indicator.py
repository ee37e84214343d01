"""The run indicator: typing while a run goes, a "still working (Ns)" status past the
threshold that is kept fresh and removed at the end. The adapter here is a small recording
implementation of the Adapter contract (the thing under test is the executor's timing)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from mercury.core.messages import Attachment, ConversationRef, Reply, SentMessage
from mercury.pipeline import indicator


class RecordingAdapter:
    platform = "web"
    bot_handles: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    async def start(self, sink: Any) -> None: ...

    async def stop(self) -> None: ...

    async def send(self, reply: Reply) -> SentMessage:
        self.events.append(("send", reply.text))
        return SentMessage(("status-1",))

    async def send_status(self, conversation: ConversationRef, text: str) -> SentMessage:
        self.events.append(("send", text))
        return SentMessage(("status-1",))

    async def set_typing(self, conversation: ConversationRef) -> None:
        self.events.append(("typing", None))

    async def edit(self, conversation: ConversationRef, message_id: str, text: str) -> None:
        self.events.append(("edit", (message_id, text)))

    async def delete(self, conversation: ConversationRef, message_id: str) -> None:
        self.events.append(("delete", message_id))

    async def download(self, attachment: Attachment, max_bytes: int) -> bytes:
        return b""


async def test_typing_then_status_then_removed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(indicator, "STATUS_AFTER_S", 0.3)
    monkeypatch.setattr(indicator, "STATUS_EVERY_S", 0.2)
    monkeypatch.setattr(indicator, "TYPING_EVERY_S", 0.1)
    adapter = RecordingAdapter()
    conv = ConversationRef("web", "main")
    task = asyncio.create_task(indicator.indicate(adapter, conv))
    await asyncio.sleep(0.9)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    kinds = [k for k, _ in adapter.events]
    assert kinds[0] == "typing"
    first_send = kinds.index("send")
    assert kinds[:first_send].count("typing") >= 2  # typing before the threshold
    assert adapter.events[first_send][1].startswith("still working (")
    edits = [v for k, v in adapter.events if k == "edit"]
    assert edits and all(mid == "status-1" for mid, _ in edits)
    assert edits[-1][1].startswith("still working (")
    assert adapter.events[-1] == ("delete", "status-1")  # removed at the end


async def test_short_runs_show_no_status(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(indicator, "TYPING_EVERY_S", 0.1)
    adapter = RecordingAdapter()
    task = asyncio.create_task(indicator.indicate(adapter, ConversationRef("web", "main")))
    await asyncio.sleep(0.35)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert {k for k, _ in adapter.events} == {"typing"}


async def test_a_streamed_preview_replaces_the_still_working_status(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Once the answer shows as it is written, a "still working" status would only be
    noise: typing goes on, no status is posted."""
    from mercury.api.stream_events import TextDelta
    from mercury.pipeline.preview import StreamPreview

    monkeypatch.setattr(indicator, "STATUS_AFTER_S", 0.3)
    monkeypatch.setattr(indicator, "STATUS_EVERY_S", 0.2)
    monkeypatch.setattr(indicator, "TYPING_EVERY_S", 0.1)
    adapter = RecordingAdapter()
    conv = ConversationRef("web", "main")
    preview = StreamPreview(adapter, conv, interval=0.0)  # type: ignore[arg-type]
    preview.on_event(TextDelta("partial answer"))
    task = asyncio.create_task(indicator.indicate(adapter, conv, preview))
    await asyncio.sleep(0.9)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await preview.stop()
    sends = [v for k, v in adapter.events if k == "send"]
    assert sends == ["partial answer"]  # the preview; no "still working" status
    assert [k for k, _ in adapter.events].count("typing") >= 3
