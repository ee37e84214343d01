"""One way to run a pipeline helper's loop in the background and stop it.

The gateway's and workers' pollers (remote_runs.py, abort_watch.py, delivery.py, the
spending re-read) each own one task: started once, cancelled and awaited at stop, so a
stop never leaves it running nor raises its cancellation. Each is a step repeated every
few seconds (`every`): a failing step (the database is away) is said once per outage and
once when it works again, and the loop goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from mercury.logging import get_logger

log = get_logger("mercury.background")


async def every(
    seconds: float, step: Callable[[], Awaitable[Any]], *, what: str, wait_first: bool = False
) -> None:
    """`step()` every `seconds` until cancelled (first after `seconds` with `wait_first`).

    A failing step is logged once per outage, and once when it works again; the loop
    goes on: the database, its usual cause, is watched elsewhere (heartbeat, status)."""
    failing = False
    if wait_first:
        await asyncio.sleep(seconds)
    while True:
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not failing:
                log.warning(f"{what} failed; trying again", error=type(exc).__name__)
            failing = True
        else:
            if failing:
                log.info(f"{what} works again")
            failing = False
        await asyncio.sleep(seconds)


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


__all__ = ["BackgroundTask", "every"]
