"""Watching a started run until it ends: the result, an exit, an abort, a limit or the
deadline, whichever comes first.

result.json is polled every 10 ms (one lstat on the event loop) and about once a second
an `inspect` tells whether the container is still alive, so a crash or an OOM kill ends
the run at once instead of waiting out the timeout. Timeout and abort kill it. A result
that lands while the container is being killed or is exiting still wins. While a run
goes, the host's free disk is checked against `disk.min_free`, and a watched space (no
filesystem image) is measured against `disk.space_size`; either stops the run.

result.json is read once, by descriptor, and parsed on the thread pool (never on the
event loop). When it lists files to send, the container is stopped (killed and waited
for) before any of them is opened, so nothing the agent does can race the host's reads; a
run that sends no file does not wait for that.

While the engine does not answer (enginewatch.py), a run goes on being watched through
its result file: an agent that finishes still has its answer delivered. A container that
ended without a result while an outage was noticed was most likely killed by the engine's
restart, so that run comes back with `retry` set, as does a run blind for longer than
container.engine_outage_limit.

`RunWatching` is a part of ContainerRunner (runner.py), kept apart to keep each file
readable; it relies on the runner attributes declared at its top.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors

from mercury.config import Config
from mercury.logging import get_logger, scrub_text
from mercury.sandbox.enginewatch import EngineHealth, short_error
from mercury.sandbox.iodir import ResultFile, result_present
from mercury.sandbox.outputs import DroppedFile, collect_outputs
from mercury.sandbox.reaper import ENGINE_ERRORS as _ENGINE_ERRORS
from mercury.sandbox.spaces import SpaceStore
from mercury.sandbox.types import RunReason, RunRequest, RunResult

log = get_logger("mercury.sandbox.runner")


LOG_TAIL_LINES = 40
_ALIVE = ("created", "running", "paused", "restarting")
# How long to wait for a killed container to be reported as exited.
KILL_WAIT_S = 10.0
# A SIGKILLed container (exit 137) not marked OOM-killed is looked at again this many
# times, this far apart: the engine's OOM event may come after its exit event.
SIGKILL_EXIT = 137
LATE_OOM_LOOKS = 3
LATE_OOM_WAIT_S = 0.2
# A result.json that fails to parse is re-read while it is still changing: a non-atomic
# writer is caught mid-write rather than reported as malformed.
_SETTLE_S = 0.05
_SETTLE_TRIES = 4
# How often free disk (statvfs, on the loop) and a watched space's size (a walk, on the
# pool) are checked while a run goes.
FREE_CHECK_S = 0.25
SPACE_CHECK_S = 1.0


@dataclass(eq=False)
class ActiveRun:
    """One run in flight."""

    request: RunRequest
    name: str
    started: float  # time.monotonic()
    io_dir: Path | None = None
    space_dir: Path | None = None
    image: str | None = None
    # Set once create was sent: from then on the container may exist and must be removed.
    maybe_created: bool = False
    started_container: bool = False  # start succeeded: the agent may have done work
    outages_at_start: int = 0  # EngineHealth.outages when the run began
    aborted: bool = False
    exit_code: int | None = None
    # Docker calls sent for this run; cleanup waits for those still running, because a
    # create sent before a cancellation can land after it. Touched on the loop thread only.
    inflight: list[concurrent.futures.Future[Any]] = field(default_factory=list)
    waker: asyncio.Future[None] | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def wake(self) -> None:
        if self.waker is not None and not self.waker.done():
            self.waker.set_result(None)


class RunWatching:
    """ContainerRunner's part that watches a started run (see the module docstring)."""

    # Provided by ContainerRunner (declared here, defined there: this class is a part of
    # it, not a base anything else extends).
    config: Config
    health: EngineHealth
    spaces: SpaceStore
    poll_interval: float
    probe_interval: float
    disk_low: Callable[[], str | None]
    _result: Callable[..., RunResult]
    _call: Callable[..., Awaitable[Any]]
    _call_run: Callable[..., Awaitable[Any]]
    _read_result: Callable[[Path], ResultFile | None]

    def _cut_by_engine(self, run: ActiveRun) -> bool:
        """Whether an engine outage was noticed since the run began: a container that ended
        without a result meanwhile was likely killed by the engine's restart."""
        return self.health.down or self.health.outages != run.outages_at_start

    def _probe_state(
        self, run: ActiveRun, probe: asyncio.Future[dict[str, Any]]
    ) -> dict[str, Any] | None:
        """State from an inspect; {"Status": "gone"} if the container vanished; None if
        unknown (a slow or hiccuping engine: the next probe or the deadline decides)."""
        if probe.cancelled():
            return None
        exc = probe.exception()
        if isinstance(exc, docker.errors.NotFound):
            return {"Status": "gone"}
        if exc is not None:
            if not self.health.report(exc):  # an outage is logged once, by the watcher
                log.warning("run.probe_failed", run_id=run.request.run_id, error=short_error(exc))
            return None
        return dict(probe.result().get("State") or {})

    async def _watch(
        self, run: ActiveRun, client: docker.DockerClient, deadline: float, timeout: float
    ) -> RunResult:
        """Wait for result.json, exit, abort, a disk limit or the deadline; the first wins."""
        assert run.io_dir is not None
        io_dir = run.io_dir
        now = time.monotonic()
        next_poll = now
        # The first probe comes early so a container that dies at once fails fast.
        next_probe = now + min(0.5, self.probe_interval)
        next_free = now + FREE_CHECK_S
        watched = self.spaces.limit_of(run.request.space_id) == "watch"
        next_measure = now + SPACE_CHECK_S if watched else float("inf")
        probe: asyncio.Future[dict[str, Any]] | None = None
        measure: asyncio.Future[int] | None = None
        try:
            while True:
                now = time.monotonic()
                if now >= next_poll:
                    if result_present(io_dir):
                        return await self._from_result(run, client, stopped=False)
                    next_poll = now + self.poll_interval
                if run.aborted:
                    return await self._stop(run, client, RunReason.ABORTED, "aborted")
                if now >= deadline:
                    return await self._stop(
                        run, client, RunReason.TIMEOUT, f"no result within {timeout:g}s; killed"
                    )
                if now >= next_free:
                    next_free = now + FREE_CHECK_S
                    low = self.disk_low()
                    if low:
                        return await self._stop(run, client, RunReason.DISK, f"stopped: {low}")
                if measure is not None and measure.done():
                    used = measure.result() if not measure.exception() else 0
                    measure = None
                    size = self.config.disk.space_size or 0
                    if used > size:
                        return await self._stop(
                            run,
                            client,
                            RunReason.DISK,
                            f"stopped: the space's files passed disk.space_size ({mib(size)})",
                        )
                if measure is None and now >= next_measure:
                    next_measure = now + SPACE_CHECK_S
                    measure = asyncio.ensure_future(
                        self._call(
                            self.spaces.measure,
                            run.request.space_id,
                            self.config.disk.space_size,
                        )
                    )
                    measure.add_done_callback(lambda _f: run.wake())
                if probe is not None and probe.done():
                    state = self._probe_state(run, probe)
                    probe = None
                    if state is not None and state.get("Status") not in _ALIVE:
                        return await self._after_exit(run, client, state)
                if self.health.run_given_up:
                    # Blind for longer than the limit: the job goes back, to fail with the
                    # operator's notice (or, on a worker, to run on another worker's
                    # engine); the container goes when the engine is back.
                    return self._result(
                        run,
                        RunReason.CRASHED,
                        error="the Docker engine did not answer within "
                        + (
                            "container.engine_outage_limit"
                            if self.health.given_up
                            else f"{self.health.run_give_up:g}s: handed back to the queue"
                        ),
                        retry=True,
                    )
                if probe is None and now >= next_probe:
                    probe = asyncio.ensure_future(
                        self._call_run(run, client.api.inspect_container, run.name)
                    )
                    probe.add_done_callback(lambda _f: run.wake())
                    next_probe = now + self.probe_interval
                wake_at = min(
                    next_poll,
                    deadline,
                    next_free,
                    next_probe if probe is None else deadline,
                    next_measure if measure is None else deadline,
                )
                await self._sleep(run, max(0.0, wake_at - time.monotonic()))
        finally:
            for fut in (probe, measure):
                if fut is not None:
                    # Its thread finishes on its own (cleanup waits for probes); moot now.
                    fut.cancel()
                    if fut.done() and not fut.cancelled():
                        fut.exception()

    async def _sleep(self, run: ActiveRun, delay: float) -> None:
        """Sleep, but wake early on abort or a finished probe."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        handle = loop.call_later(delay, lambda: fut.done() or fut.set_result(None))
        run.waker = fut
        try:
            await fut
        finally:
            handle.cancel()
            run.waker = None

    async def _stop(
        self, run: ActiveRun, client: docker.DockerClient, reason: RunReason, error: str
    ) -> RunResult:
        """Kill, wait for the exit, then read: a result that landed meanwhile wins."""
        stopped = await self._stop_container(run, client)
        if result_present(run.io_dir):  # type: ignore[arg-type]
            return await self._from_result(run, client, stopped=stopped)
        return self._result(run, reason, error=error)

    async def _stop_container(self, run: ActiveRun, client: docker.DockerClient) -> bool:
        """Kill the container and wait for its exit; whether it is known to have stopped."""
        try:
            await self._call_run(run, client.api.kill, run.name)
        except _ENGINE_ERRORS as exc:
            # 409: already exited; 404: already gone. Either way it no longer runs.
            gone = isinstance(exc, docker.errors.APIError) and status_in(exc, 404, 409)
            if not gone and not self.health.report(exc):  # an outage is logged once
                log.warning("run.kill_failed", run_id=run.request.run_id, error=short_error(exc))
        stopped = False
        try:
            status = await self._call_run(run, client.api.wait, run.name, timeout=KILL_WAIT_S)
            code = status.get("StatusCode")
            run.exit_code = code if isinstance(code, int) else None
            stopped = True
        except docker.errors.NotFound:
            stopped = True  # removed already: nothing of it runs
        except Exception as exc:  # the engine is slow or broken: decide anyway
            log.warning("run.wait_failed", run_id=run.request.run_id, error=short_error(exc))
        return stopped

    async def _after_exit(
        self, run: ActiveRun, client: docker.DockerClient, state: dict[str, Any]
    ) -> RunResult:
        """The container has exited: a result still wins, else OOM or a crash."""
        code = state.get("ExitCode")
        run.exit_code = code if isinstance(code, int) else None
        if result_present(run.io_dir):  # type: ignore[arg-type]
            return await self._from_result(run, client, stopped=True)
        if run.exit_code == SIGKILL_EXIT and not state.get("OOMKilled"):
            state = await self._late_oom(run, client, state)
        if state.get("OOMKilled"):
            limit = run.request.memory or self.config.container.memory
            return self._result(
                run,
                RunReason.OOM,
                error=f"out of memory: killed at the {mib(limit)} limit",
            )
        if self._cut_by_engine(run):
            # Killed (or lost) by the engine's restart, not by anything the agent did.
            return self._result(
                run,
                RunReason.CRASHED,
                error=f"the container ended during a Docker engine outage "
                f"(status {state.get('Status')}, exit code {run.exit_code}); run again",
                retry=True,
            )
        if state.get("Status") == "gone":
            return self._result(run, RunReason.CRASHED, error="the container disappeared")
        tail = await self._log_tail(run, client)
        return self._result(
            run,
            RunReason.CRASHED,
            error=f"exited with code {run.exit_code} without writing result.json",
            log_tail=tail,
        )

    async def _late_oom(
        self, run: ActiveRun, client: docker.DockerClient, state: dict[str, Any]
    ) -> dict[str, Any]:
        """A SIGKILLed container's state once the engine had a moment to mark an OOM kill.

        The engine learns of an OOM kill from its own event, which on a busy machine can
        come after the exit event: read right at the exit, `OOMKilled` may still be false
        for a container the kernel killed for its memory. Looked at again a few times."""
        for _ in range(LATE_OOM_LOOKS):
            await asyncio.sleep(LATE_OOM_WAIT_S)
            try:
                info = await self._call_run(run, client.api.inspect_container, run.name)
            except Exception:
                return state  # gone or unreachable: decide on what is known
            later = dict(info.get("State") or {})
            if later.get("OOMKilled"):
                return later
        return state

    async def _from_result(
        self, run: ActiveRun, client: docker.DockerClient, *, stopped: bool
    ) -> RunResult:
        """Parse result.json off the loop; stop the container before copying any file."""
        assert run.io_dir is not None
        res = await self._call(self._read_result, run.io_dir)
        # A parse failure on a file that is still changing is a writer caught mid-write
        # (a container that still runs).
        for _ in range(_SETTLE_TRIES):
            if res is None or res.problem is None or stopped:
                break
            await asyncio.sleep(_SETTLE_S)
            again = await self._call(self._read_result, run.io_dir)
            if again is None or again.signature == res.signature:
                break
            res = again
        if res is None:  # vanished between the lstat and the open
            return self._result(run, RunReason.CRASHED, error="result.json vanished")
        if res.ok and res.problem is None and res.files and not stopped:
            # Files to send: nothing in the container may change them from here on.
            stopped = await self._stop_container(run, client)
        return await self._result_from_file(run, res, stopped=stopped)

    async def _result_from_file(
        self, run: ActiveRun, res: ResultFile, *, stopped: bool
    ) -> RunResult:
        if res.problem is not None:
            return self._result(run, RunReason.ERROR, error=res.problem, result=res.data)
        if not res.ok:
            return self._result(
                run, RunReason.ERROR, error=res.error, usage=res.usage, result=res.data
            )
        cfg = self.config.container
        if not stopped:
            # Never read a space while its container might still be writing: the reply
            # goes out, the files do not.
            outputs_files: list[Any] = []
            dropped = (
                [DroppedFile("all", "not sent this time", count=len(res.files))]
                if res.files
                else []
            )
        else:
            assert run.space_dir is not None
            outs = await self._call(
                collect_outputs,
                run.space_dir,
                res.files,
                self.config.data_dir,
                run.request.run_id,
                max_files=cfg.max_output_files,
                max_bytes=cfg.max_output_size,
            )
            outputs_files, dropped = outs.files, outs.dropped
        if dropped:
            log.warning(
                "result.files_dropped",
                run_id=run.request.run_id,
                files=[f"{d.listed}: {d.why}" for d in dropped[:10]],
                count=len(dropped),
            )
        return self._result(
            run,
            RunReason.OK,
            reply=res.reply,
            usage=res.usage,
            files=outputs_files,
            dropped_files=dropped,
            result=res.data,
        )

    async def _log_tail(self, run: ActiveRun, client: docker.DockerClient) -> str | None:
        try:
            raw = await self._call_run(
                run, client.api.logs, run.name, stdout=True, stderr=True, tail=LOG_TAIL_LINES
            )
        except _ENGINE_ERRORS as exc:
            log.warning("run.logs_failed", run_id=run.request.run_id, error=short_error(exc))
            return None
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        return scrub_text(text)


def status_in(exc: docker.errors.APIError, *codes: int) -> bool:
    return getattr(exc, "status_code", None) in codes


def mib(n: int) -> str:
    return f"{n / 1024**2:g} MiB"
