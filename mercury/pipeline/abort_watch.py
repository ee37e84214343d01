"""A worker's ear for /stop: runs the gateway asked to stop, stopped here.

With a gateway and workers (docs/scale-out.md), /stop and the dashboard's stop button
reach the gateway, which marks the space's running job (storage/job_control.py). Each
worker looks every `workers.poll` for marks on the jobs it holds and aborts their
containers through its runner, as a single process's /stop does directly. The run then
ends "aborted" with no reply (the gateway already answered the /stop).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from mercury.logging import get_logger
from mercury.pipeline.background import BackgroundTask, every
from mercury.storage import Database
from mercury.storage.job_control import abort_requests

log = get_logger("mercury.abort_watch")


class AbortWatch:
    """Polls for stop requests on `owner`'s running jobs; calls `abort(space_id)` once each."""

    def __init__(
        self,
        db: Database,
        owner: str,
        abort: Callable[[str], Awaitable[bool]],
        *,
        poll: float,
    ) -> None:
        self.db = db
        self.owner = owner
        self.abort = abort
        self.poll = poll
        self._done: set[int] = set()  # jobs already aborted (their mark stays until they end)
        self._task = BackgroundTask()

    def start(self) -> None:
        self._task.start(
            every(self.poll, self.check, what="reading stop requests"), name="abort watch"
        )

    async def stop(self) -> None:
        await self._task.stop()

    async def check(self) -> int:
        """Abort the runs newly asked to stop; how many."""
        asked = await abort_requests(self.db, self.owner)
        self._done &= {job_id for job_id, _ in asked}
        stopped = 0
        for job_id, space_id in asked:
            if job_id in self._done:
                continue
            # False: its container is not started yet (or is gone): asked again next time.
            if await self.abort(space_id):
                self._done.add(job_id)
                log.info("stopped a run the gateway was asked to stop", job_id=job_id)
                stopped += 1
        return stopped


__all__ = ["AbortWatch"]
