"""A streamed reply: the answer grows in place in the chat while the model writes it.

The host's model proxy reports what the model writes (api/stream_events.py); the executor
hands each run's events to its `StreamPreview`, which shows them in a preview message
through the platform's adapter: sent when the first text comes, then edited as the text
grows, at most once per `adapters.<platform>.stream.interval` (the platform's edit rate
limit: Telegram about one edit a second per chat, Discord's per-channel bucket, Slack's
tier). Edits are coalesced: whatever came meanwhile goes out in the next one. A refusal
for a rate limit (`RateLimited`) is waited out for its retry-after; a preview past the
platform's length limit continues in a new message.

The preview is never the reply. When the run ends, the executor stores and sends the
reply (or the failure notice) through the outbox exactly as without streaming, split the
same way, and only then `finish()` removes the preview messages: the reply replaces
them, and a run that failed mid-stream leaves its notice, not a half-written answer. A
preview that cannot be shown (the platform refuses edits) only stops the preview.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

from mercury.adapters.base import Adapter, RateLimited
from mercury.api.stream_events import CallStarted, StreamEvent, TextDelta, ToolCall
from mercury.core.messages import ConversationRef, Reply
from mercury.core.preview import PreviewText, preview_chunks
from mercury.logging import first_line, get_logger

log = get_logger("mercury.preview")

# Characters per preview message, under each platform's limit with room for its markup
# (Telegram's HTML, Slack's mrkdwn escapes). The reply itself is split by the adapter.
PREVIEW_LIMITS = {"telegram": 3500, "slack": 3000, "discord": 1900, "web": 40_000}
DEFAULT_LIMIT = 1900
# Tries to delete one preview message when the run is over (each waits out a 429).
DELETE_TRIES = 3
MAX_RETRY_AFTER_S = 60.0
# How long stop() lets a preview send or edit under way finish before cancelling it.
STOP_WAIT_S = 10.0


class StreamPreview:
    """One run's preview on one platform."""

    def __init__(
        self,
        adapter: Adapter,
        conversation: ConversationRef,
        *,
        interval: float,
        limit: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.adapter = adapter
        self.conversation = conversation
        self.interval = max(0.0, interval)
        self.limit = limit or PREVIEW_LIMITS.get(adapter.platform, DEFAULT_LIMIT)
        self._clock = clock
        self._sleep = sleep
        self.text = PreviewText()
        self._ids: list[str] = []  # the preview's messages, in order
        self._shown: list[str] = []  # what each shows now
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._next_at = 0.0  # no call to the platform before this (monotonic)
        self._broken = False
        self._calling = False  # a platform call is under way (see stop())
        self.edits = 0  # calls made (sends + edits), for the log

    @property
    def visible(self) -> bool:
        """Whether a preview message is in the chat (the "still working" status is then
        not needed)."""
        return bool(self._ids)

    def on_event(self, event: StreamEvent) -> None:
        """The proxy's hook for this run: synchronous and cheap, never raises."""
        if self._broken:
            return
        if isinstance(event, CallStarted):
            self.text.turn_started()
            return
        if isinstance(event, TextDelta):
            self.text.add_text(event.text)
        elif isinstance(event, ToolCall):
            self.text.tool_called(event.name)
        else:
            return
        self._changed.set()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._pump())

    async def _pump(self) -> None:
        """Show the latest text, paced; runs until `finish()` cancels it."""
        while not self._broken:
            await self._changed.wait()
            self._changed.clear()
            wait = self._next_at - self._clock()
            if wait > 0:
                await self._sleep(wait)
            if self._broken:
                return
            chunks = preview_chunks(self.text.render(), self.limit)
            try:
                await self._show(chunks)
            except RateLimited as exc:
                delay = min(max(exc.retry_after, self.interval), MAX_RETRY_AFTER_S)
                log.info(
                    "preview rate limited",
                    platform=self.adapter.platform,
                    retry_after=exc.retry_after,
                )
                self._next_at = self._clock() + delay
                self._changed.set()  # what was not shown goes out after the wait
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The reply still comes through the outbox; only the preview stops.
                self._broken = True
                log.warning(
                    "preview stopped",
                    platform=self.adapter.platform,
                    error=f"{type(exc).__name__}: {first_line(exc)}",
                )
                return

    async def _show(self, chunks: list[str]) -> None:
        """Bring the preview messages to `chunks`: one platform call per interval."""
        for i, chunk in enumerate(chunks):
            if i < len(self._shown) and self._shown[i] == chunk:
                continue
            wait = self._next_at - self._clock()
            if wait > 0:
                await self._sleep(wait)
            if self._broken:
                return
            self._next_at = self._clock() + self.interval
            self._calling = True
            try:
                if i < len(self._ids):
                    await self.adapter.edit(self.conversation, self._ids[i], chunk)
                    self._shown[i] = chunk
                else:
                    sent = await self.adapter.send(Reply(self.conversation, chunk, preview=True))
                    if not sent.platform_message_ids:
                        raise RuntimeError("the platform returned no message id for the preview")
                    self._ids.append(sent.platform_message_ids[0])
                    self._shown.append(chunk)
            finally:
                self._calling = False
            self.edits += 1

    async def stop(self) -> None:
        """No more edits (the run is over).

        A platform call under way is let finish (up to STOP_WAIT_S) rather than cancelled:
        a preview message the platform created while its send was cancelled would have no
        id here, and `finish()` could never remove it from the chat."""
        self._broken = True
        task, self._task = self._task, None
        if task is None:
            return
        if self._calling:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(task), STOP_WAIT_S)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    async def finish(self) -> None:
        """Stop and remove the preview messages: called once the reply (or the notice) is
        out, which replaces them."""
        await self.stop()
        for message_id in self._ids:
            for attempt in range(DELETE_TRIES):
                try:
                    await self.adapter.delete(self.conversation, message_id)
                    break
                except RateLimited as exc:
                    if attempt + 1 < DELETE_TRIES:
                        await self._sleep(min(exc.retry_after, MAX_RETRY_AFTER_S))
                except Exception as exc:
                    log.warning(
                        "preview not removed",
                        platform=self.adapter.platform,
                        error=f"{type(exc).__name__}: {first_line(exc)}",
                    )
                    break
        if self._ids:
            log.debug(
                "preview removed",
                platform=self.adapter.platform,
                messages=len(self._ids),
                calls=self.edits,
            )
        self._ids.clear()
        self._shown.clear()
