"""The per-message container runner: one fresh, hardened container per run.

A run: write input.json into a fresh io dir, `create` then `start` the container (never
attach), then watch it until it ends (watch.py: the result, an exit, an abort, a disk
limit or the deadline). A space's next run waits until the previous container of that
space is gone.

Every Docker call runs on a small thread pool (the SDK blocks) through the SDK's low-level
API, which skips the high-level client's extra inspect after create. The container and
the io dir are removed on every path, in a tracked background task so the reply is not
held up by the removal (reaper.py: a removal the engine cannot take waits for it);
`wait_cleanups()` / `aclose()` await them.

What is not the message's fault comes back with `retry` set, for the caller to put the
job back in the queue: a run not started because the disk is low, the Docker engine does
not answer (enginewatch.py) or the agent image is being rebuilt (imagestate.py, after a
run found it gone), and a run the engine cut short. `hold_reason()` says when none may
start, for the dispatcher to hold its claims; `unavailable()` when waiting no longer
helps and the message should fail with a notice for the operator.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar

import docker
import docker.errors

from mercury.config import Config
from mercury.logging import get_logger
from mercury.sandbox.contract import new_run_id, spared_run
from mercury.sandbox.engine import EngineUnavailable, connect_engine
from mercury.sandbox.enginewatch import EngineHealth, short_error
from mercury.sandbox.hardening import ContainerSpec, check_id, container_spec
from mercury.sandbox.identity import container_identity
from mercury.sandbox.images import image_id
from mercury.sandbox.iodir import ResultFile, create_io_dir, io_root, read_result, remove_io_dir
from mercury.sandbox.reaper import ENGINE_ERRORS as _ENGINE_ERRORS
from mercury.sandbox.reaper import Reaper
from mercury.sandbox.spaces import SpaceStore, free_bytes
from mercury.sandbox.types import ImageBuildState, RunReason, RunRequest, RunResult
from mercury.sandbox.warm import (
    NO_EXTENSIONS,
    SocketFolders,
    UsualExtensions,
    WarmPool,
    WarmSlot,
    plain_request,
)
from mercury.sandbox.watch import ActiveRun, RunWatching, mib

log = get_logger("mercury.sandbox.runner")

T = TypeVar("T")


def disk_low_reason(config: Config) -> str | None:
    """Why nothing may be started or stored now (free disk in data_dir under
    disk.min_free), or None. Shared by the runner and a gateway, which runs nothing."""
    floor = config.disk.min_free
    try:
        free = free_bytes(config.data_dir)
    except OSError:
        return None
    if free < floor:
        return f"only {mib(free)} free in {config.data_dir}, under disk.min_free ({mib(floor)})"
    return None


@dataclass(frozen=True, slots=True)
class RunningContainer:
    """A run in flight, as the dashboard shows it: read-only, safe to hand out.

    `started_at` is wall-clock (for display), derived from the run's monotonic start;
    `stopping` is set once the run was aborted and is still being killed.
    """

    run_id: str
    space_id: str
    container: str
    started_at: datetime
    stopping: bool = False


class ContainerRunner(RunWatching):
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
        socket_folders: SocketFolders | None = None,
        preload: tuple[str, ...] = (),
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
        # What the default role's runs are granted (set by the App): warm containers
        # are made with it (warm.py).
        self.usual_extensions: UsualExtensions = NO_EXTENSIONS
        # Put in front of this process's run ids (the App's process id): cleanup tells
        # another live process's runs from its own and dead ones' by it.
        self.run_tag = ""
        # Raises IdentityError (a ValueError) when container.user cannot work here.
        self.identity = container_identity(config.container)
        # The one owner of space folders: the pipeline saves uploads through it too.
        self.spaces = SpaceStore(config, self.identity)
        self._runs: dict[str, ActiveRun] = {}
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
        self.health = EngineHealth(self._ping, config.container.engine_outage_limit)
        self._reaper = Reaper(config, self.health, self._call, lambda: self._client)
        # Warm containers (warm.py): only where runs get host-API sockets made ahead
        # (`socket_folders`, the App's host API); `preload` = the chain's providers.
        self.warm = WarmPool(self, socket_folders, preload)

    # ------------------------------------------------------------------ public API

    def active_spaces(self) -> set[str]:
        """Spaces with a run in flight."""
        return {r.request.space_id for r in self._runs.values()}

    def active_runs(self) -> list[RunningContainer]:
        """The runs in flight, oldest first (a snapshot: the runs themselves stay private)."""
        now_wall, now_mono = datetime.now(UTC), time.monotonic()
        found = [
            RunningContainer(
                run_id=r.request.run_id,
                space_id=r.request.space_id,
                container=r.name,
                started_at=now_wall - timedelta(seconds=now_mono - r.started),
                stopping=r.aborted,
            )
            for r in self._runs.values()
        ]
        return sorted(found, key=lambda r: r.started_at)

    async def next_run_id(self, space_id: str) -> str:
        """The id for the space's next run: its waiting container's (reserved for it from
        now on) when it has one, else a new one (a cold run). Pair with `release_run_id`."""
        return await self.warm.take(space_id) or new_run_id(self.run_tag)

    def release_run_id(self, run_id: str) -> None:
        """The run of an id from `next_run_id` is over or never started: a waiting
        container still reserved for it is removed (a no-op once the run took it)."""
        self.warm.release(run_id)

    def waiting_containers(self) -> int:
        """Warm containers waiting for a message now."""
        return self.warm.waiting()

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

    async def cleanup_orphans(self, live_tags: Collection[str] = ()) -> int:
        """Remove this instance's leftover containers and io dirs; return containers removed.

        Only containers labelled mercury.managed=true and mercury.instance=<this instance>
        are touched, so other installs on the same engine keep theirs; and of those, not
        the runs of other live processes of the instance (`live_tags`, their run tags).
        """
        client = await self._engine()
        active = set(self._runs) | self.warm.run_ids()
        return await self._reaper.orphans(
            client, active, spare=lambda run_id: spared_run(run_id, self.run_tag, live_tags)
        )

    async def aclose(self) -> None:
        """Kill what still runs, wait for every cleanup, release the pool and client.
        A second call does nothing."""
        if self._closed:
            return
        if self._runs:
            await self.kill_all()
        # Removals waiting for a dead engine are the next start's (cleanup_orphans).
        self._reaper.close()
        await self.warm.aclose()
        await self.wait_cleanups()
        self._closed = True
        await self.health.aclose()
        await self.images.aclose()
        await self._call(self.spaces.close)
        self._pool.shutdown(wait=False)
        if self._owns_client and self._client is not None:
            self._client.close()
            self._client = None

    def disk_low(self) -> str | None:
        """Why no run may start now (free disk under disk.min_free), or None."""
        return disk_low_reason(self.config)

    def hold_reason(self) -> str | None:
        """Why no run may start now, or None: the dispatcher's gate, so that queued jobs
        wait (unclaimed) while the disk is low, the engine is down (up to
        container.engine_outage_limit) or the agent image is being built."""
        return self.disk_low() or self.health.hold_reason() or self.images.hold_reason()

    async def unavailable(self) -> Literal["engine", "image"] | None:
        """Why runs cannot work now and waiting does not help, or None: the engine has been
        down longer than container.engine_outage_limit, or the agent image is missing and
        rebuilding it failed. The caller fails the message with a notice for the operator."""
        if self.health.given_up and not await self.health.recheck():
            return "engine"
        if self.images.broken:
            # The operator may have built it meanwhile: look before refusing.
            try:
                client = await self._engine()
                if await self._call(image_id, client, self.images.base_image) is not None:
                    self.images.found()
                    return None
            except Exception as exc:
                if self.health.report(exc):
                    return None  # the engine is down: that is waited out, not refused
            return "image"
        return None

    async def run(self, request: RunRequest) -> RunResult:
        """Run one request in a fresh container and return its typed outcome."""
        if self._closed:
            raise RuntimeError("the runner is closed")
        check_id("run id", request.run_id)
        check_id("space id", request.space_id)
        if request.run_id in self._runs:
            raise ValueError(f"run id {request.run_id!r} is already running")
        run = ActiveRun(
            request=request,
            name=f"mercury-{self.config.instance}-{request.run_id}",
            started=time.monotonic(),
            outages_at_start=self.health.outages,
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

    async def _run(self, run: ActiveRun) -> RunResult:
        req = run.request
        cfg = self.config
        image = req.image or self.images.current_image()
        run.space_dir = self.spaces.path(req.space_id)
        run.io_dir = io_root(cfg.data_dir) / req.run_id
        # Validated before anything is created: ValueError means an unsafe request.
        spec = self._spec(run, image)
        low = self.disk_low()
        if low:
            return self._result(run, RunReason.DISK, error=f"not started: {low}", retry=True)
        if self.health.down:
            held: str | None = f"the Docker engine does not answer ({self.health.error})"
        else:
            held = self.images.hold_reason()
        if held:
            # The gate was passed just before: wait in the queue like the others.
            return self._result(run, RunReason.CRASHED, error=f"not started: {held}", retry=True)
        previous = self._space_cleanups.get(req.space_id)
        if previous is not None and not await self._space_free(previous):
            return self._result(
                run,
                RunReason.CRASHED,
                error="not started: the space's last container waits for the engine to be removed",
                retry=True,
            )
        try:
            client = await self._engine()
        except EngineUnavailable as exc:
            self.health.mark_down(str(exc))
            return self._result(run, RunReason.CRASHED, error=str(exc), retry=True)
        slot = self.warm.claim(req.run_id)
        if slot is not None:
            warm = await self._warm_start(run, client, slot, image)
            if warm is not None:
                return warm
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
            gone = await self._image_gone(run, client, image)
            if gone is not None:
                return gone
        except _ENGINE_ERRORS as exc:
            return self._call_failed(run, "create failed", exc)

        if run.aborted:
            return self._result(run, RunReason.ABORTED, error="aborted before start")
        try:
            await self._call_run(run, client.api.start, run.name)
        except _ENGINE_ERRORS as exc:
            return self._call_failed(run, "start failed", exc)
        run.started_container = True
        log.debug("run.started", run_id=req.run_id, space_id=req.space_id, container=run.name)
        if plain_request(req, self.usual_extensions):
            self.warm.want(req.space_id)  # the space is active: its next container waits
        timeout = req.timeout_s or cfg.container.timeout
        return await self._watch(run, client, time.monotonic() + timeout, timeout)

    async def _warm_start(
        self, run: ActiveRun, client: docker.DockerClient, slot: WarmSlot, image: str
    ) -> RunResult | None:
        """Hand the run to its waiting container and watch it; None when that container
        cannot take it (warm.py `WarmPool.begin`): the run goes the cold way."""
        if not await self.warm.begin(slot, run, client, image):
            return None
        run.image = slot.image
        run.maybe_created = True
        run.started_container = True
        req = run.request
        log.debug("run.started", run_id=req.run_id, space_id=req.space_id, warm=True)
        self.warm.want(req.space_id)
        timeout = req.timeout_s or self.config.container.timeout
        return await self._watch(run, client, time.monotonic() + timeout, timeout)

    async def _space_free(self, previous: asyncio.Task[None]) -> bool:
        """Wait until the space's last container is gone (it may still be being killed, or
        wait for the engine to be removed); False once the engine has been down too long."""
        while not previous.done():
            if self.health.given_up:
                return False
            # Not cancelled on timeout (nor when this run is): the cleanup must finish.
            await asyncio.wait({previous}, timeout=1.0)
        return True

    async def _image_gone(
        self, run: ActiveRun, client: docker.DockerClient, image: str
    ) -> RunResult | None:
        """The image to run is not on the engine; None once the run's container is created.

        A derived image is rebuilt in the background while the run goes on the agent image.
        The agent image itself has no stand-in: it is rebuilt, once for every run that
        finds it gone, and those runs go back to the queue until it is there again.
        """
        req = run.request
        base = self.images.base_image
        if image != base:
            if req.image is None or image == self.images.derived_image:
                self.images.rebuild()
            log.warning("image.missing", image=image, fallback=base, run_id=req.run_id)
            try:
                await self._create(run, client, self._spec(run, base))
                return None
            except docker.errors.ImageNotFound:
                pass  # the agent image is gone too
            except _ENGINE_ERRORS as exc:
                return self._call_failed(run, f"create failed on {base}", exc)
        if self.images.restore() is not None:
            return self._result(
                run,
                RunReason.CRASHED,
                error=f"not started: image {base} not found on the engine; rebuilding it",
                retry=True,
            )
        failed = self.images.restore_error
        why = f"rebuilding it failed: {failed}" if failed else "build it: mercury image build"
        return self._result(
            run, RunReason.CRASHED, error=f"image {base} not found on the engine ({why})"
        )

    def _call_failed(self, run: ActiveRun, what: str, exc: BaseException) -> RunResult:
        """A create or start that failed: the job's to retry if the engine is down."""
        down = self.health.report(exc)
        return self._result(run, RunReason.CRASHED, error=f"{what}: {short_error(exc)}", retry=down)

    def _spec(self, run: ActiveRun, image: str) -> ContainerSpec:
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
            masked=self.images.masked_for(image, req.extensions),
            user=self.identity.user,
            env=req.env,
            memory=req.memory,
            network=req.network,
        )

    async def _create(
        self, run: ActiveRun, client: docker.DockerClient, spec: ContainerSpec
    ) -> None:
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

    def _result(
        self, run: ActiveRun, reason: RunReason, *, retry: bool = False, **fields: Any
    ) -> RunResult:
        # A run to retry names its container only if it started (RunResult.retry).
        named = run.started_container if retry else run.maybe_created
        return RunResult(
            run_id=run.request.run_id,
            space_id=run.request.space_id,
            reason=reason,
            exit_code=run.exit_code,
            duration_ms=int((time.monotonic() - run.started) * 1000),
            image=run.image,
            container_name=run.name if named else None,
            retry=retry,
            **fields,
        )

    # ------------------------------------------------------------------ cleanup

    def _schedule_cleanup(self, run: ActiveRun) -> None:
        task = asyncio.get_running_loop().create_task(self._cleanup(run))
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)
        space = run.request.space_id
        self._space_cleanups[space] = task

        def _forget(done: asyncio.Task[None]) -> None:
            if self._space_cleanups.get(space) is done:
                del self._space_cleanups[space]

        task.add_done_callback(_forget)

    async def _cleanup(self, run: ActiveRun) -> None:
        """Remove the container (killing it if needed) and the io dir."""
        pending = [f for f in run.inflight if not f.done()]
        if pending:
            # A create still in its thread may yet make the container we must remove.
            await asyncio.wait([asyncio.wrap_future(f) for f in pending])
        if run.maybe_created:
            await self._reaper.remove(run.name, run.request.run_id)
        if run.io_dir is not None:
            await self._call(remove_io_dir, run.io_dir)

    # ------------------------------------------------------------------ plumbing

    async def _ping(self) -> None:
        client = await self._engine()
        await self._call(client.ping)

    async def _engine(self) -> docker.DockerClient:
        if self._client is None:
            async with self._client_lock:
                if self._client is None:
                    client, _info = await self._call(connect_engine)
                    self._client = client
        return self._client

    def _read_result(self, io_dir: Path) -> ResultFile | None:
        # Resolved in this module at each call, on the pool's thread (through _call): tests
        # spy on mercury.sandbox.runner.read_result to see that parsing is off the loop.
        return read_result(io_dir)

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking call on the runner's pool."""
        fut = self._pool.submit(functools.partial(fn, *args, **kwargs))
        return await asyncio.wrap_future(fut)

    async def _call_run(self, run: ActiveRun, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Like _call, but tracked on the run so cleanup can wait for it."""
        fut = self._pool.submit(functools.partial(fn, *args, **kwargs))
        run.inflight = [f for f in run.inflight if not f.done()]
        run.inflight.append(fut)
        return await asyncio.wrap_future(fut)
