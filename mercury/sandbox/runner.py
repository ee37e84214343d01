"""The per-message container runner: one fresh, hardened container per run.

A run: write input.json into a fresh io dir, `create` then `start` the container (never
attach), then watch. result.json is polled every 10 ms (one lstat on the event loop) and
about once a second an `inspect` tells whether the container is still alive, so a crash or
an OOM kill ends the run at once instead of waiting out the timeout. Timeout and abort kill
it. A result that lands while the container is being killed or is exiting still wins.

result.json is read once, by descriptor, and parsed on the thread pool (never on the event
loop). When it lists files to send, the container is stopped (killed and waited for)
before any of them is opened, so nothing the agent does can race the host's reads; a run
that sends no file does not wait for that. A space's next run waits until the previous
container of that space is gone. While a run goes, the host's free disk is checked
against `disk.min_free`, and a watched space (no filesystem image) is measured against
`disk.space_size`; either stops the run.

Every Docker call runs on a small thread pool (the SDK blocks) through the SDK's low-level
API, which skips the high-level client's extra inspect after create. The container and
the io dir are removed on every path, in a tracked background task so the reply is not
held up by the removal; `wait_cleanups()` / `aclose()` await them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import docker
import docker.errors
import requests.exceptions

from mercury.config import Config
from mercury.logging import get_logger, scrub_text
from mercury.sandbox.engine import EngineUnavailable, connect_engine
from mercury.sandbox.hardening import (
    LABEL_INSTANCE,
    LABEL_MANAGED,
    LABEL_RUN,
    ContainerSpec,
    check_id,
    container_spec,
)
from mercury.sandbox.identity import container_identity
from mercury.sandbox.iodir import (
    ResultFile,
    create_io_dir,
    io_root,
    read_result,
    remove_io_dir,
    result_present,
)
from mercury.sandbox.outputs import DroppedFile, collect_outputs, outputs_root
from mercury.sandbox.spaces import SpaceStore, free_bytes
from mercury.sandbox.types import ImageBuildState, RunReason, RunRequest, RunResult

log = get_logger("mercury.sandbox.runner")

T = TypeVar("T")

LOG_TAIL_LINES = 40
_ALIVE = ("created", "running", "paused", "restarting")
# What a Docker call raises when the engine refuses or cannot be reached: the SDK wraps
# HTTP errors, but a dropped connection surfaces as a bare requests exception.
_ENGINE_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException)
# How long to wait for a killed container to be reported as exited.
KILL_WAIT_S = 10.0
# A result.json that fails to parse is re-read while it is still changing: a non-atomic
# writer is caught mid-write rather than reported as malformed.
_SETTLE_S = 0.05
_SETTLE_TRIES = 4
# How often free disk (statvfs, on the loop) and a watched space's size (a walk, on the
# pool) are checked while a run goes.
FREE_CHECK_S = 0.25
SPACE_CHECK_S = 1.0


@dataclass(eq=False)
class _Run:
    """One run in flight."""

    request: RunRequest
    name: str
    started: float  # time.monotonic()
    io_dir: Path | None = None
    space_dir: Path | None = None
    image: str | None = None
    # Set once create was sent: from then on the container may exist and must be removed.
    maybe_created: bool = False
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


class ContainerRunner:
    """Runs RunRequests in fresh hardened containers and types every outcome.

    `run()` raises ValueError only for a request that is itself unsafe (bad ids, a secret
    in its env, a forbidden mount); every runtime failure comes back as a RunResult.
    `poll_interval` and `probe_interval` tune the result poll and the liveness probe.
    """

    def __init__(
        self,
        config: Config,
        images: ImageBuildState,
        *,
        client: docker.DockerClient | None = None,
        resources_dir: Path | None = None,
        api_socket_dir: Path | None = None,
        poll_interval: float = 0.01,
        probe_interval: float = 1.0,
    ) -> None:
        self.config = config
        self.images = images
        self.resources_dir = resources_dir
        self.api_socket_dir = api_socket_dir
        self.poll_interval = poll_interval
        self.probe_interval = probe_interval
        self._client = client
        self._owns_client = client is None
        self._client_lock = asyncio.Lock()
        # Raises IdentityError (a ValueError) when container.user cannot work here.
        self.identity = container_identity(config.container)
        # The one owner of space folders: the pipeline saves uploads through it too.
        self.spaces = SpaceStore(config, self.identity)
        self._runs: dict[str, _Run] = {}
        self._cleanups: set[asyncio.Task[None]] = set()
        # space id -> the cleanup of its last run: the next run of the space waits for it,
        # so no container of a finished run can touch the space while another runs.
        self._space_cleanups: dict[str, asyncio.Task[None]] = {}
        # Each run needs at most a few calls at once (create/start, a probe, a kill);
        # a dedicated pool keeps slow Docker calls from starving the default executor.
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(8, 4 * config.container.max_concurrency),
            thread_name_prefix="mercury-docker",
        )
        self._closed = False

    # ------------------------------------------------------------------ public API

    def active_spaces(self) -> set[str]:
        """Spaces with a run in flight."""
        return {r.request.space_id for r in self._runs.values()}

    async def abort(self, space_id: str) -> bool:
        """Kill the runs of `space_id` (they end as aborted). False if none was running."""
        found = False
        for run in list(self._runs.values()):
            if run.request.space_id == space_id and not run.aborted:
                run.aborted = True
                run.wake()
                found = True
        if found:
            log.info("run.abort", space_id=space_id)
        return found

    async def kill_all(self, timeout: float = 15.0) -> None:
        """Abort every active run and wait (up to `timeout`) until they have ended."""
        runs = list(self._runs.values())
        for run in runs:
            run.aborted = True
            run.wake()
        if runs:
            log.info("run.kill_all", runs=len(runs))
            waits = [asyncio.ensure_future(r.done.wait()) for r in runs]
            _, pending = await asyncio.wait(waits, timeout=timeout)
            for w in pending:
                w.cancel()

    async def wait_cleanups(self) -> None:
        """Wait until every finished run's container and io dir are gone."""
        while self._cleanups:
            await asyncio.gather(*list(self._cleanups), return_exceptions=True)

    async def cleanup_orphans(self) -> int:
        """Remove this instance's leftover containers and io dirs; return containers removed.

        Only containers labelled mercury.managed=true and mercury.instance=<this instance>
        are touched, so other installs on the same engine keep theirs.
        """
        client = await self._engine()
        instance = self.config.instance
        found = await self._call(
            client.api.containers,
            all=True,
            filters={"label": [f"{LABEL_MANAGED}=true", f"{LABEL_INSTANCE}={instance}"]},
        )
        active = set(self._runs)
        removed = 0
        for info in found:
            labels = info.get("Labels") or {}
            # Double-check: the filter is the engine's, the promise is ours.
            if labels.get(LABEL_MANAGED) != "true" or labels.get(LABEL_INSTANCE) != instance:
                continue
            if labels.get(LABEL_RUN) in active:
                continue
            try:
                await self._call(client.api.remove_container, info["Id"], force=True, v=True)
                removed += 1
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                log.warning("orphan.remove_failed", container=info["Id"][:12], error=_short(exc))
        stale: list[Path] = []
        for root in (io_root(self.config.data_dir), outputs_root(self.config.data_dir)):
            if root.is_dir():
                stale += [p for p in root.iterdir() if p.name not in active]
        for path in stale:
            if path.is_dir() and not path.is_symlink():
                await self._call(remove_io_dir, path)
            else:
                path.unlink(missing_ok=True)
        if removed or stale:
            log.info("orphans.removed", containers=removed, io_dirs=len(stale))
        return removed

    async def aclose(self) -> None:
        """Kill what still runs, wait for every cleanup, release the pool and client."""
        if self._runs:
            await self.kill_all()
        await self.wait_cleanups()
        self._closed = True
        await self._call(self.spaces.close)
        self._pool.shutdown(wait=False)
        if self._owns_client and self._client is not None:
            self._client.close()
            self._client = None

    def disk_low(self) -> str | None:
        """Why no run may start now (free disk under disk.min_free), or None."""
        floor = self.config.disk.min_free
        try:
            free = free_bytes(self.config.data_dir)
        except OSError:
            return None
        if free < floor:
            return (
                f"only {_mib(free)} free in {self.config.data_dir}, under disk.min_free "
                f"({_mib(floor)})"
            )
        return None

    async def run(self, request: RunRequest) -> RunResult:
        """Run one request in a fresh container and return its typed outcome."""
        if self._closed:
            raise RuntimeError("the runner is closed")
        check_id("run id", request.run_id)
        check_id("space id", request.space_id)
        if request.run_id in self._runs:
            raise ValueError(f"run id {request.run_id!r} is already running")
        run = _Run(
            request=request,
            name=f"mercury-{self.config.instance}-{request.run_id}",
            started=time.monotonic(),
        )
        self._runs[request.run_id] = run
        try:
            result = await self._run(run)
        finally:
            del self._runs[request.run_id]
            run.done.set()
            # Also on cancellation and exceptions: the container and io dir must go.
            self._schedule_cleanup(run)
        log.info(
            "run.done",
            run_id=request.run_id,
            space_id=request.space_id,
            reason=result.reason.value,
            exit_code=result.exit_code,
            duration_ms=result.duration_ms,
            image=result.image,
        )
        return result

    # ------------------------------------------------------------------ one run

    async def _run(self, run: _Run) -> RunResult:
        req = run.request
        cfg = self.config
        image = req.image or self.images.current_image()
        run.space_dir = self.spaces.path(req.space_id)
        run.io_dir = io_root(cfg.data_dir) / req.run_id
        # Validated before anything is created: ValueError means an unsafe request.
        spec = self._spec(run, image)
        low = self.disk_low()
        if low:
            return self._result(run, RunReason.DISK, error=f"not started: {low}")
        previous = self._space_cleanups.get(req.space_id)
        if previous is not None:
            # The space's last container may still be being killed: it must be gone first.
            await asyncio.shield(previous)
        try:
            client = await self._engine()
        except EngineUnavailable as exc:
            return self._result(run, RunReason.CRASHED, error=str(exc))
        try:
            profile = req.input.get("profile")
            await self._call(
                self.spaces.ensure,
                req.space_id,
                profile if isinstance(profile, str) else "general",
            )
            # A leftover dir of the same run id is stale (ids are unique per run).
            await self._call(
                create_io_dir,
                cfg.data_dir,
                req.run_id,
                dict(req.input),
                self.identity,
                replace=True,
            )
        except (OSError, ValueError, TypeError) as exc:
            return self._result(
                run, RunReason.CRASHED, error=f"cannot prepare the run's files: {exc}"
            )
        missing = [str(m.source) for m in spec.mounts if not m.source.exists()]
        if missing:
            # Binds would silently create a missing source as an empty root-owned dir.
            return self._result(
                run, RunReason.CRASHED, error=f"mount source missing: {', '.join(missing)}"
            )

        try:
            await self._create(run, client, spec)
        except docker.errors.ImageNotFound:
            fallback = self.images.base_image
            if image == fallback:
                return self._result(
                    run,
                    RunReason.CRASHED,
                    error=f"image {image} not found on the engine (build it: mercury image build)",
                )
            if req.image is None or image == self.images.derived_image:
                self.images.rebuild()
            log.warning("image.missing", image=image, fallback=fallback, run_id=req.run_id)
            image = fallback
            spec = self._spec(run, image)
            try:
                await self._create(run, client, spec)
            except _ENGINE_ERRORS as exc:
                return self._result(
                    run, RunReason.CRASHED, error=f"create failed on {image}: {_short(exc)}"
                )
        except _ENGINE_ERRORS as exc:
            return self._result(run, RunReason.CRASHED, error=f"create failed: {_short(exc)}")

        if run.aborted:
            return self._result(run, RunReason.ABORTED, error="aborted before start")
        try:
            await self._call_run(run, client.api.start, run.name)
        except _ENGINE_ERRORS as exc:
            return self._result(run, RunReason.CRASHED, error=f"start failed: {_short(exc)}")
        log.debug("run.started", run_id=req.run_id, space_id=req.space_id, container=run.name)

        timeout = req.timeout_s or cfg.container.timeout
        return await self._watch(run, client, time.monotonic() + timeout, timeout)

    def _spec(self, run: _Run, image: str) -> ContainerSpec:
        req = run.request
        assert run.space_dir is not None and run.io_dir is not None
        return container_spec(
            self.config.container,
            instance=self.config.instance,
            run_id=req.run_id,
            space_id=req.space_id,
            image=image,
            data_dir=self.config.data_dir,
            space_dir=run.space_dir,
            io_dir=run.io_dir,
            resources_dir=self.resources_dir,
            api_socket_dir=req.api_socket_dir or self.api_socket_dir,
            readonly_mounts=req.readonly_mounts,
            user=self.identity.user,
            env=req.env,
            memory=req.memory,
            network=req.network,
        )

    async def _create(self, run: _Run, client: docker.DockerClient, spec: ContainerSpec) -> None:
        host_config = client.api.create_host_config(**spec.host_config)
        run.image = spec.image
        run.maybe_created = True
        await self._call_run(
            run,
            client.api.create_container,
            spec.image,
            name=spec.name,
            user=spec.user,
            environment=spec.environment,
            labels=spec.labels,
            host_config=host_config,
            detach=True,
            # Otherwise the SDK copies proxy settings from ~/.docker/config.json into the
            # container's environment, past our allow-list.
            use_config_proxy=False,
        )

    async def _watch(
        self, run: _Run, client: docker.DockerClient, deadline: float, timeout: float
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
                            f"stopped: the space's files passed disk.space_size ({_mib(size)})",
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
                    state = _probe_state(run, probe)
                    probe = None
                    if state is not None and state.get("Status") not in _ALIVE:
                        return await self._after_exit(run, client, state)
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

    async def _sleep(self, run: _Run, delay: float) -> None:
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
        self, run: _Run, client: docker.DockerClient, reason: RunReason, error: str
    ) -> RunResult:
        """Kill, wait for the exit, then read: a result that landed meanwhile wins."""
        stopped = await self._stop_container(run, client)
        if result_present(run.io_dir):  # type: ignore[arg-type]
            return await self._from_result(run, client, stopped=stopped)
        return self._result(run, reason, error=error)

    async def _stop_container(self, run: _Run, client: docker.DockerClient) -> bool:
        """Kill the container and wait for its exit; whether it is known to have stopped."""
        try:
            await self._call_run(run, client.api.kill, run.name)
        except _ENGINE_ERRORS as exc:
            # 409: already exited; 404: already gone. Either way it no longer runs.
            if not (isinstance(exc, docker.errors.APIError) and _status_in(exc, 404, 409)):
                log.warning("run.kill_failed", run_id=run.request.run_id, error=_short(exc))
        stopped = False
        try:
            status = await self._call_run(run, client.api.wait, run.name, timeout=KILL_WAIT_S)
            code = status.get("StatusCode")
            run.exit_code = code if isinstance(code, int) else None
            stopped = True
        except docker.errors.NotFound:
            stopped = True  # removed already: nothing of it runs
        except Exception as exc:  # the engine is slow or broken: decide anyway
            log.warning("run.wait_failed", run_id=run.request.run_id, error=_short(exc))
        return stopped

    async def _after_exit(
        self, run: _Run, client: docker.DockerClient, state: dict[str, Any]
    ) -> RunResult:
        """The container has exited: a result still wins, else OOM or a crash."""
        code = state.get("ExitCode")
        run.exit_code = code if isinstance(code, int) else None
        if result_present(run.io_dir):  # type: ignore[arg-type]
            return await self._from_result(run, client, stopped=True)
        if state.get("OOMKilled"):
            limit = run.request.memory or self.config.container.memory
            return self._result(
                run,
                RunReason.OOM,
                error=f"out of memory: killed at the {_mib(limit)} limit",
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

    async def _from_result(
        self, run: _Run, client: docker.DockerClient, *, stopped: bool
    ) -> RunResult:
        """Parse result.json off the loop; stop the container before copying any file."""
        assert run.io_dir is not None
        res = await self._call(read_result, run.io_dir)
        # A parse failure on a file that is still changing is a writer caught mid-write
        # (a container that still runs).
        for _ in range(_SETTLE_TRIES):
            if res is None or res.problem is None or stopped:
                break
            await asyncio.sleep(_SETTLE_S)
            again = await self._call(read_result, run.io_dir)
            if again is None or again.signature == res.signature:
                break
            res = again
        if res is None:  # vanished between the lstat and the open
            return self._result(run, RunReason.CRASHED, error="result.json vanished")
        if res.ok and res.problem is None and res.files and not stopped:
            # Files to send: nothing in the container may change them from here on.
            stopped = await self._stop_container(run, client)
        return await self._result_from_file(run, res, stopped=stopped)

    async def _result_from_file(self, run: _Run, res: ResultFile, *, stopped: bool) -> RunResult:
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

    def _result(self, run: _Run, reason: RunReason, **fields: Any) -> RunResult:
        return RunResult(
            run_id=run.request.run_id,
            space_id=run.request.space_id,
            reason=reason,
            exit_code=run.exit_code,
            duration_ms=int((time.monotonic() - run.started) * 1000),
            image=run.image,
            container_name=run.name if run.maybe_created else None,
            **fields,
        )

    async def _log_tail(self, run: _Run, client: docker.DockerClient) -> str | None:
        try:
            raw = await self._call_run(
                run, client.api.logs, run.name, stdout=True, stderr=True, tail=LOG_TAIL_LINES
            )
        except _ENGINE_ERRORS as exc:
            log.warning("run.logs_failed", run_id=run.request.run_id, error=_short(exc))
            return None
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        return scrub_text(text)

    # ------------------------------------------------------------------ cleanup

    def _schedule_cleanup(self, run: _Run) -> None:
        task = asyncio.get_running_loop().create_task(self._cleanup(run))
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)
        space = run.request.space_id
        self._space_cleanups[space] = task

        def _forget(done: asyncio.Task[None]) -> None:
            if self._space_cleanups.get(space) is done:
                del self._space_cleanups[space]

        task.add_done_callback(_forget)

    async def _cleanup(self, run: _Run) -> None:
        """Remove the container (killing it if needed) and the io dir."""
        pending = [f for f in run.inflight if not f.done()]
        if pending:
            # A create still in its thread may yet make the container we must remove.
            await asyncio.wait([asyncio.wrap_future(f) for f in pending])
        if run.maybe_created and self._client is not None:
            await self._remove_container(run)
        if run.io_dir is not None:
            await self._call(remove_io_dir, run.io_dir)

    async def _remove_container(self, run: _Run, attempts: int = 3) -> None:
        assert self._client is not None
        for attempt in range(1, attempts + 1):
            try:
                await self._call(self._client.api.remove_container, run.name, force=True, v=True)
                return
            except docker.errors.NotFound:
                return  # never created, or already gone
            except _ENGINE_ERRORS as exc:
                # e.g. 409 while the engine is still tearing the killed container down.
                if attempt == attempts:
                    log.warning(
                        "run.remove_failed",
                        run_id=run.request.run_id,
                        container=run.name,
                        error=_short(exc),
                        hint="cleanup_orphans() at the next start removes it",
                    )
                    return
                await asyncio.sleep(0.2 * attempt)

    # ------------------------------------------------------------------ plumbing

    async def _engine(self) -> docker.DockerClient:
        if self._client is None:
            async with self._client_lock:
                if self._client is None:
                    client, _info = await self._call(connect_engine)
                    self._client = client
        return self._client

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking call on the runner's pool."""
        fut = self._pool.submit(functools.partial(fn, *args, **kwargs))
        return await asyncio.wrap_future(fut)

    async def _call_run(self, run: _Run, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Like _call, but tracked on the run so cleanup can wait for it."""
        fut = self._pool.submit(functools.partial(fn, *args, **kwargs))
        run.inflight = [f for f in run.inflight if not f.done()]
        run.inflight.append(fut)
        return await asyncio.wrap_future(fut)


def _probe_state(run: _Run, probe: asyncio.Future[dict[str, Any]]) -> dict[str, Any] | None:
    """State from an inspect; {"Status": "gone"} if the container vanished; None if unknown."""
    if probe.cancelled():
        return None
    exc = probe.exception()
    if isinstance(exc, docker.errors.NotFound):
        return {"Status": "gone"}
    if exc is not None:
        # A slow or hiccuping engine: the next probe or the deadline decides.
        log.warning("run.probe_failed", run_id=run.request.run_id, error=_short(exc))
        return None
    return dict(probe.result().get("State") or {})


def _status_in(exc: docker.errors.APIError, *codes: int) -> bool:
    return getattr(exc, "status_code", None) in codes


def _short(exc: BaseException) -> str:
    text = getattr(exc, "explanation", None) or str(exc) or type(exc).__name__
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return scrub_text(str(text).splitlines()[0][:300]) if text else type(exc).__name__


def _mib(n: int) -> str:
    return f"{n / 1024**2:g} MiB"
