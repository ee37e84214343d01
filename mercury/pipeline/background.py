"""One way to run a pipeline helper's loop in the background and stop it.

The gateway's and workers' pollers (remote_runs.py, abort_watch.py, delivery.py) each
own one task: started once, cancelled and awaited at stop, so a stop never leaves it
running nor raises its cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any


class BackgroundTask:
    """Holds at most one task; `start(coro)` runs it, `stop()` cancels and awaits it."""

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None

    def start(self, coro: Coroutine[Any, Any, None], name: str | None = None) -> None:
        self._task = asyncio.get_running_loop().create_task(coro, name=name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


__all__ = ["BackgroundTask"]
