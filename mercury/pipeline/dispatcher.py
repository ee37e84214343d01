"""SpaceQueue dispatcher: the jobs table is the queue; one job per space, a global cap.

Claiming is done by the database (`claim_next_jobs`: FIFO per space, a space with a running
job is skipped), so the dispatcher's own state is only which jobs this process runs. A
crash leaves jobs `running` with this process's owner id; the next start requeues them
once, then fails them with a notice — never silently lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import uuid
from collections.abc import Awaitable, Callable

from mercury.logging import get_logger
from mercury.pipeline.outbox import until_stored
from mercury.storage import Database, JobRecord, JobStatus, StaleJobs, repo

log = get_logger("mercury.dispatcher")

JobHandler = Callable[[JobRecord], Awaitable[JobStatus]]
# Why no job may start now (e.g. the host is low on disk), or None.
StartGate = Callable[[], str | None]


class JobDeferred(Exception):
    """Raised by a handler that did not start the job: it goes back to the queue, unrun."""


class Dispatcher:
    """Runs queued jobs through `handler`, at most `max_concurrency` at once."""

    def __init__(
        self,
        db: Database,
        handler: JobHandler,
        *,
        max_concurrency: int,
        poll_interval: float = 1.0,
        owner: str | None = None,
        gate: StartGate | None = None,
    ) -> None:
        self.db = db
        self.handler = handler
        self.max_concurrency = max_concurrency
        self.poll_interval = poll_interval
        # Unique per process: recovery tells a dead process's jobs from ours by it.
        self.owner = owner or f"mercury-{uuid.uuid4().hex[:12]}"
        # While the gate says why not, nothing is claimed: queued jobs keep waiting.
        self.gate = gate
        self.held: str | None = None
        self._wake = asyncio.Event()
        self._running: dict[int, tuple[str, asyncio.Task[None]]] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._accepting = False
        self.peak_concurrency = 0

    # ------------------------------------------------------------------ lifecycle

    async def recover(self) -> StaleJobs:
        """Requeue (once) or fail the jobs a dead process left running."""
        stale = await repo.requeue_or_fail_stale_running(self.db, self.owner)
        if stale.requeued or stale.failed:
            log.warning(
                "recovered jobs of a stopped process",
                requeued=[j.id for j in stale.requeued],
                failed=[j.id for j in stale.failed],
            )
        return stale

    def start(self) -> None:
        self._accepting = True
        self._loop_task = asyncio.get_running_loop().create_task(self._loop())

    def wake(self) -> None:
        """A job was enqueued (or a slot freed): look at the queue now, not at the next tick."""
        self._wake.set()

    def running_spaces(self) -> set[str]:
        return {space for space, _ in self._running.values()}

    async def stop(self, grace: float, on_timeout: Callable[[], Awaitable[None]]) -> None:
        """Stop claiming; let running jobs finish within `grace`, then `on_timeout` (kill).

        Jobs cut short by the kill are put back in the queue for the next start.
        """
        self._accepting = False
        self._wake.set()
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        tasks = [task for _, task in self._running.values()]
        if not tasks:
            return
        _done, pending = await asyncio.wait(tasks, timeout=grace)
        if pending:
            log.warning("runs still going at shutdown; killing them", count=len(pending))
            interrupted = list(self._running)
            await on_timeout()
            await asyncio.wait(pending, timeout=15)
            for job_id in interrupted:
                await self._requeue(job_id)

    # ------------------------------------------------------------------ the loop

    async def _loop(self) -> None:
        while self._accepting:
            try:
                await self._claim()
            except Exception:  # a database hiccup must not end dispatching
                log.exception("claiming jobs failed; retrying")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_interval)

    async def _claim(self) -> None:
        free = self.max_concurrency - len(self._running)
        if free <= 0:
            return
        held = self.gate() if self.gate is not None else None
        if held != self.held:
            if held:
                log.error("queued jobs are held back", why=held)
            else:
                log.info("queued jobs run again")
            self.held = held
        if held:
            return
        jobs = await repo.claim_next_jobs(
            self.db, owner=self.owner, max_total=free, busy_spaces=self.running_spaces()
        )
        for job in jobs:
            task = asyncio.get_running_loop().create_task(self._execute(job))
            self._running[job.id] = (job.space_id, task)
        self.peak_concurrency = max(self.peak_concurrency, len(self._running))

    async def _execute(self, job: JobRecord) -> None:
        status = JobStatus.FAILED
        error: str | None = None
        deferred = False
        try:
            status = await self.handler(job)
        except asyncio.CancelledError:
            # Shutdown: leave the job for the next start (stop() requeues it).
            raise
        except JobDeferred as exc:
            deferred = True
            log.warning("job put back in the queue, not started", job_id=job.id, why=str(exc))
        except Exception as exc:
            log.exception("job failed", job_id=job.id, space_id=job.space_id)
            error = f"{type(exc).__name__}: {exc}"
        finally:
            # A run killed because we are shutting down is not finished: stop() requeues it.
            interrupted = not self._accepting and status is JobStatus.ABORTED
            if deferred:
                with contextlib.suppress(Exception):
                    await repo.requeue_job(self.db, job.id, not_started=True)
            elif not interrupted:
                # Retried until stored: a job left `running` would hold its space until a
                # restart. A job whose reply went out is already done (the outbox finished
                # it with the send), so a later failure cannot turn it into a failed one.
                await until_stored(
                    functools.partial(repo.finish_job, self.db, job.id, status, error),
                    "job end",
                )
            self._running.pop(job.id, None)
            self._wake.set()

    async def _requeue(self, job_id: int) -> None:
        """Put a job interrupted by shutdown back in the queue, keeping its place."""
        with contextlib.suppress(Exception):
            await repo.requeue_job(self.db, job_id)
