"""The gateway's view of runs it does not make: the workers', read and steered through
the database.

A gateway (`mercury run --role gateway`, docs/scale-out.md) has no container runner, yet
the inbound handler saves attachments into spaces and checks the disk, /stop and /status
ask about the space's run, and the dashboard shows what runs now and stops it. This
object answers those the runner's way (the same method names), from the database:
`abort` marks the space's running job (storage/job_control.py) for the worker holding it
to stop; the running list is every worker's running jobs, read every `refresh` seconds.
"""

from __future__ import annotations

from mercury.config import Config
from mercury.pipeline.background import BackgroundTask, every
from mercury.sandbox.identity import container_identity
from mercury.sandbox.runner import RunningContainer, disk_low_reason
from mercury.sandbox.spaces import SpaceStore
from mercury.storage import Database
from mercury.storage.job_control import RunningJob, request_abort, running_jobs
from mercury.storage.models import utcnow


def shown_as_container(job: RunningJob) -> RunningContainer:
    """A worker's running job as the dashboard's "running now" row: the worker that runs
    it stands where a local run shows its container."""
    return RunningContainer(
        run_id=f"job-{job.id}",
        space_id=job.space_id,
        container=f"{job.owner or '?'} (job {job.id})",
        started_at=job.started_at or utcnow(),
        stopping=job.abort_requested,
    )


class RemoteRuns:
    """The runner's questions answered from the database, for a process that runs nothing."""

    images = None  # no agent image is built here: the workers build theirs

    def __init__(self, config: Config, db: Database, *, refresh: float = 1.0) -> None:
        self.config = config
        self.db = db
        self.refresh = refresh
        # The gateway saves users' attachments into the shared spaces, owned by the
        # containers' uid as a worker would (sandbox/spaces.py).
        self.identity = container_identity(config.container)
        self.spaces = SpaceStore(config, self.identity)
        self._running: list[RunningJob] = []
        self._task = BackgroundTask()

    def start(self) -> None:
        # A failed read keeps the last view.
        self._task.start(
            every(self.refresh, self.read, what="reading the running jobs"), name="remote runs"
        )

    async def stop(self) -> None:
        await self._task.stop()

    async def read(self) -> None:
        """Read every worker's running jobs now (kept for the synchronous questions)."""
        self._running = await running_jobs(self.db)

    # ------------------------------------------------------------------ runner's questions

    def disk_low(self) -> str | None:
        return disk_low_reason(self.config)

    def hold_reason(self) -> str | None:
        return self.disk_low()

    async def abort(self, space_id: str) -> bool:
        """Ask the worker running the space's job to stop it; False when none runs."""
        asked = await request_abort(self.db, space_id)
        if asked:
            await self.read()
        return asked

    def active_spaces(self) -> set[str]:
        return {job.space_id for job in self._running}

    def active_runs(self) -> list[RunningContainer]:
        return [shown_as_container(job) for job in self._running]

    def waiting_containers(self) -> int:
        return 0  # warm containers live on the workers

    async def kill_all(self) -> None:
        return None  # the workers' runs are theirs to stop


__all__ = ["RemoteRuns", "shown_as_container"]
