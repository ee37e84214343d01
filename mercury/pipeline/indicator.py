"""While a run goes: the typing indicator, and past 30 s a "still working" status."""

from __future__ import annotations

import asyncio
import contextlib
import time

from mercury.adapters.base import Adapter
from mercury.core.messages import ConversationRef
from mercury.pipeline.preview import StreamPreview

__all__ = ["STATUS_AFTER_S", "STATUS_EVERY_S", "TYPING_EVERY_S", "indicate"]

STATUS_AFTER_S = 30.0  # past this, a "still working" status message appears
STATUS_EVERY_S = 15.0
TYPING_EVERY_S = 5.0


async def indicate(
    adapter: Adapter | None, conv: ConversationRef, preview: StreamPreview | None = None
) -> None:
    """Typing while the run goes; past 30 s a "still working (Ns)" status, kept fresh,
    unless the answer already shows as it is written (a streamed preview)."""
    if adapter is None:
        return
    begun = time.monotonic()
    status_id: str | None = None
    try:
        while True:
            with contextlib.suppress(Exception):
                await adapter.set_typing(conv)
            elapsed = time.monotonic() - begun
            streaming = preview is not None and preview.visible
            if elapsed >= STATUS_AFTER_S and not streaming:
                text = f"still working ({int(elapsed)}s)"
                with contextlib.suppress(Exception):
                    if status_id is None:
                        sent = await adapter.send_status(conv, text)
                        status_id = (sent.platform_message_ids or (None,))[0]
                    else:
                        await adapter.edit(conv, status_id, text)
                await asyncio.sleep(STATUS_EVERY_S)
            else:
                left = STATUS_AFTER_S - elapsed
                await asyncio.sleep(min(TYPING_EVERY_S, left) if left > 0 else TYPING_EVERY_S)
    finally:
        if status_id is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(adapter.delete(conv, status_id))
