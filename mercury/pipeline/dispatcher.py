"""SpaceQueue dispatcher: the jobs table is the queue; one job per space, a global cap.

Claiming is done by the database (`claim_next_jobs`: FIFO per space, a space with a running
job is skipped, safe with several processes on one PostgreSQL), so the dispatcher's own
state is only which jobs this process runs. A crash leaves jobs `running` with this
process's owner id; they are requeued once, then failed with a notice — never silently lost.

Leases: each claim holds its job for `lease` (LEASE_S, 60 s); while the run goes on the
dispatcher renews every lease/3. Recovery runs twice:
- at start (`recover`): jobs of owners that are not live processes (core/peers.py: no
  fresh heartbeat, stopped, or their pid gone on this host) are recovered at once, so a
  restarted `mercury run` does not wait a lease; a live process's jobs are left alone;
- every lease/2 while running: any job whose lease ran out, whoever held it (never ours).
Jobs recovered while running are handed to `on_recovered` (the caller tells the chat).

Losing the database: a failed claim or renewal is logged once per outage and claiming
simply fails (so stops) until the database answers again. Runs are never killed for it.
A job whose lease could not be renewed before it ran out may have been taken by another
process: that is logged; when the database is back, renewal tells which jobs are no longer
ours (the others are renewed again), and the runs of jobs taken end without finishing or
requeueing them (`owner=` on both writes).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from mercury.core.peers import live_process_ids
from mercury.logging import first_line, get_logger
from mercury.pipeline.outbox import until_stored
from mercury.pipeline.peers import here, read_peers
from mercury.storage import Database, JobRecord, JobStatus, StaleJobs, repo
from mercury.storage.jobs import renew_leases, requeue_or_fail_expired
from mercury.storage.models import FINAL_JOB_STATUSES, utcnow

log = get_logger("mercury.dispatcher")

# Seconds a claim holds a running job unless renewed; renewed every third of it, expired
# jobs of other processes looked for every half. Tests pass a shorter `lease`.
LEASE_S = 60.0

JobHandler = Callable[[JobRecord], Awaitable[JobStatus]]
# Why no job may start now (e.g. the host is low on disk), or None.
StartGate = Callable[[], str | None]
# Told about jobs recovered while running (expired leases), to notify their chats.
RecoveredHandler = Callable[[StaleJobs], Awaitable[None]]


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
        lease: float = LEASE_S,
        clock: Callable[[], datetime] = utcnow,
        on_recovered: RecoveredHandler | None = None,
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
        self.lease = timedelta(seconds=lease)
        self.clock = clock
        self.on_recovered = on_recovered
        self._wake = asyncio.Event()
        self._running: dict[int, tuple[str, asyncio.Task[None]]] = {}
        # Until when each running job's lease was last renewed (as far as we know).
        self._lease_until: dict[int, datetime] = {}
        # Jobs no longer ours (taken after their lease ran out, or maybe taken): their runs
        # end without writing the job.
        self._lost: set[int] = set()
        # Jobs whose lease ran out while renewal failed: maybe taken (logged once each).
        self._expired: set[int] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._lease_tasks: list[asyncio.Task[None]] = []
        self._accepting = False
        self.db_down = False  # the last claim or renewal failed: not claiming
        self.peak_concurrency = 0

    # ------------------------------------------------------------------ lifecycle

    async def recover(self) -> StaleJobs:
        """At start: requeue (once) or fail the jobs of dead processes and expired leases.

        A job held by a live other process (fresh heartbeat) under an unexpired lease is
        left alone; any other owner's jobs are recovered at once, lease or not."""
        now = self.clock()
        me = here(self.owner)
        live = live_process_ids(await read_peers(self.db, host=me.host), now, me)
        stale = await requeue_or_fail_expired(
            self.db, now, live_owners=live, exclude_owner=self.owner
        )
        if stale.requeued or stale.failed:
            log.warning(
                "recovered jobs of a stopped process",
                requeued=[j.id for j in stale.requeued],
                failed=[j.id for j in stale.failed],
            )
        return stale

    async def recover_expired(self) -> StaleJobs:
        """While running: requeue (once) or fail other processes' jobs whose lease ran out,
        then hand them to `on_recovered` (to tell their chats)."""
        stale = await requeue_or_fail_expired(self.db, self.clock(), exclude_owner=self.owner)
        if stale.requeued or stale.failed:
            log.warning(
                "recovered jobs whose lease ran out",
                requeued=[j.id for j in stale.requeued],
                failed=[j.id for j in stale.failed],
            )
            self._wake.set()
            if self.on_recovered is not None:
                try:
                    await self.on_recovered(stale)
                except Exception:
                    log.exception("could not report jobs recovered after their lease ran out")
        return stale

    async def renew(self) -> set[int]:
        """Renew the lease of every job this process runs; the ids taken away from it.

        A renewal that fails (database unreachable) keeps the old expiry; a job whose
        lease ran out meanwhile is logged as possibly taken (its run goes on)."""
        ids = [i for i in self._running if i not in self._lost]
        if not ids:
            return set()
        now = self.clock()
        until = now + self.lease
        try:
            held = await renew_leases(self.db, self.owner, ids, until)
        except Exception as exc:
            self._database_failed("renewing leases", exc)
            for job_id in ids:
                expiry = self._lease_until.get(job_id)
                if expiry is not None and expiry <= now and job_id not in self._expired:
                    # Still renewed when the database answers: renewal then says for sure.
                    self._expired.add(job_id)
                    log.error(
                        "lease ran out while the database was unreachable; another process "
                        "may have taken the job",
                        job_id=job_id,
                    )
            return set()
        self._database_back()
        for job_id in held:
            self._lease_until[job_id] = until
            self._expired.discard(job_id)
        gone = {i for i in ids if i not in held and i in self._running}
        taken = set()
        for job_id in gone:
            job = await repo.get_job(self.db, job_id)
            if job is not None and job.status in FINAL_JOB_STATUSES:
                continue  # finished (e.g. by the outbox with its reply): not taken
            taken.add(job_id)
            self._lost.add(job_id)
            log.error(
                "job taken by another process after its lease ran out; its run here "
                "will not record an end",
                job_id=job_id,
                now_owner=None if job is None else job.owner,
            )
        return taken

    def start(self) -> None:
        self._accepting = True
        loop = asyncio.get_running_loop()
        self._loop_task = loop.create_task(self._loop())
        period = self.lease.total_seconds()
        self._lease_tasks = [
            loop.create_task(self._every(period / 3, self.renew, "renewing leases")),
            loop.create_task(self._every(period / 2, self.recover_expired, "lease recovery")),
        ]

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
            await self._stop_lease_tasks()
            return
        _done, pending = await asyncio.wait(tasks, timeout=grace)
        if pending:
            log.warning("runs still going at shutdown; killing them", count=len(pending))
            interrupted = list(self._running)
            await on_timeout()
            await asyncio.wait(pending, timeout=15)
            for job_id in interrupted:
                await self._requeue(job_id)
        # Renewal goes on while runs finish, so a long grace never lets a lease run out.
        await self._stop_lease_tasks()

    async def _stop_lease_tasks(self) -> None:
        for task in self._lease_tasks:
            task.cancel()
        for task in self._lease_tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._lease_tasks = []

    # ------------------------------------------------------------------ the loop

    async def _every(
        self, seconds: float, work: Callable[[], Awaitable[object]], what: str
    ) -> None:
        """Run `work` every `seconds` until cancelled; a failure is logged, never fatal."""
        while True:
            await asyncio.sleep(seconds)
            try:
                await work()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._database_failed(what, exc)

    def _database_failed(self, what: str, exc: BaseException) -> None:
        if not self.db_down:
            log.error(
                "database unreachable: not claiming jobs until it answers; runs go on",
                doing=what,
                error=first_line(exc),
            )
        self.db_down = True

    def _database_back(self) -> None:
        if self.db_down:
            log.info("database reachable again: claiming jobs")
        self.db_down = False

    async def _loop(self) -> None:
        while self._accepting:
            try:
                await self._claim()
            except Exception as exc:  # a database hiccup must not end dispatching
                self._database_failed("claiming jobs", exc)
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
            self.db,
            owner=self.owner,
            max_total=free,
            busy_spaces=self.running_spaces(),
            now=self.clock(),
            lease=self.lease,
        )
        self._database_back()
        for job in jobs:
            task = asyncio.get_running_loop().create_task(self._execute(job))
            self._running[job.id] = (job.space_id, task)
            if job.lease_until is not None:
                self._lease_until[job.id] = job.lease_until
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
                    await repo.requeue_job(self.db, job.id, not_started=True, owner=self.owner)
            elif not interrupted:
                # Retried until stored: a job left `running` would hold its space until its
                # lease runs out. A job whose reply went out is already done (the outbox
                # finished it with the send), so a later failure cannot turn it into a
                # failed one; one taken by another process is not ours to end (owner=).
                await until_stored(
                    functools.partial(
                        repo.finish_job, self.db, job.id, status, error, owner=self.owner
                    ),
                    "job end",
                )
            self._running.pop(job.id, None)
            self._lease_until.pop(job.id, None)
            self._lost.discard(job.id)
            self._expired.discard(job.id)
            self._wake.set()

    async def _requeue(self, job_id: int) -> None:
        """Put a job interrupted by shutdown back in the queue, keeping its place."""
        with contextlib.suppress(Exception):
            await repo.requeue_job(self.db, job_id, owner=self.owner)
