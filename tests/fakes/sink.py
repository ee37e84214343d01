"""One stand-in for the pipeline's inbound sink, shared by every adapter test.

It records each InboundMessage an adapter hands over, lets a test await the next one or
check that nothing more came, and can run a hook per message (the web chat's tests use it
to answer, or to raise InboundUnavailable as a failing pipeline would).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from mercury.core.messages import InboundMessage

Hook = Callable[[InboundMessage], Awaitable[None]]


class RecordingSink:
    def __init__(self, *, wait: float = 10.0) -> None:
        self.received: list[InboundMessage] = []
        self.on_message: Hook | None = None
        self._wait = wait
        self._queue: asyncio.Queue[InboundMessage] = asyncio.Queue()

    async def __call__(self, msg: InboundMessage) -> None:
        self.received.append(msg)
        self._queue.put_nowait(msg)
        if self.on_message is not None:
            await self.on_message(msg)

    async def next(self, timeout: float | None = None) -> InboundMessage:
        """The next message not yet taken; fails after `timeout` seconds."""
        return await asyncio.wait_for(self._queue.get(), timeout or self._wait)

    async def nothing_more(self, wait: float = 0.4) -> None:
        """Give the adapter `wait` seconds, then fail if it delivered anything untaken."""
        await asyncio.sleep(wait)
        assert self._queue.empty(), [m.text for m in self.received]
