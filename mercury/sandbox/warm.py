"""Warm containers: the next run of an active space, already created, started and waiting.

A cold run pays the container's start and the agent's own start-up (Python and the model
SDK's imports, most of a second) before its first model request. While a space is active
the runner keeps its *next* container ready: made exactly like a cold one (same hardening,
the space mounted, its own io dir and host-API socket folder), started with the agent's
waiting mode (`mercury-agent --wait`), which imports everything and then polls for
input.json. The space's next message is handed to it: the run's input.json (with the
run's token) is written into its io dir at that moment, and its host-API socket bound in
its folder. Until then the container holds no message, no token and no secret.

A warm container still serves exactly one run: it is made for one run id, removed after
that run like any other, and the run after it gets another one. So each message still
runs in a container that never served another message.

Bounded: at most `container.warm.max` wait at once (the one idle longest makes room), each
is removed after `container.warm.idle_ttl` unused, when the agent image changed, at
shutdown, and (as a leftover of a dead process) by orphan cleanup at the next start. A
message for a space without one takes the cold path, unchanged.

The decisions are plain functions over plain data (`should_warm`, `expired`); the engine
calls go through the runner, which owns the engine, its thread pool and the reaper.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from docker import errors as docker_errors

from mercury.logging import get_logger
from mercury.sandbox.contract import new_run_id
from mercury.sandbox.hardening import (
    LABEL_INSTANCE,
    LABEL_MANAGED,
    LABEL_RUN,
    LABEL_WARM,
    RUN_CPU_SHARES,
    ContainerSpec,
    container_spec,
)
from mercury.sandbox.iodir import (
    INPUT_NAME,
    empty_io_dir,
    hand_over_input,
    io_root,
    remove_io_dir,
)

if TYPE_CHECKING:
    import docker

    from mercury.config import Config
    from mercury.sandbox.runner import ContainerRunner
    from mercury.sandbox.types import RunRequest
    from mercury.sandbox.watch import ActiveRun

log = get_logger("mercury.sandbox.warm")

# How often waiting containers are checked for their time-to-live, an image change or an
# engine outage since they were made (no engine call unless one is removed).
SWEEP_EVERY_S = 2.0


def waiting_on_engine(client: docker.DockerClient, config: Config) -> tuple[int, int]:
    """Warm containers of this instance waiting now (no input.json handed over yet) and
    the memory they use, in bytes: what `mercury doctor` reports, from another process."""
    found = client.api.containers(
        filters={
            "label": [
                f"{LABEL_MANAGED}=true",
                f"{LABEL_INSTANCE}={config.instance}",
                f"{LABEL_WARM}=true",
            ],
            "status": "running",
        }
    )
    count = used = 0
    for info in found:
        run_id = (info.get("Labels") or {}).get(LABEL_RUN, "")
        # lexists: the io dir is the container's; a link there is not followed.
        if not run_id or os.path.lexists(io_root(config.data_dir) / run_id / INPUT_NAME):
            continue  # handed over: a run now, not a waiting container
        count += 1
        with contextlib.suppress(Exception):
            stats = client.api.stats(info["Id"], stream=False, one_shot=True)
            used += int((stats.get("memory_stats") or {}).get("usage") or 0)
    return count, used


class SocketFolders(Protocol):
    """Where a run's host-API socket will be (the host API owns these folders)."""

    def reserve_folder(self, run_id: str) -> Path: ...

    def release_folder(self, run_id: str) -> None: ...


@dataclass
class WarmSlot:
    """One waiting container, made for one run id."""

    run_id: str
    space_id: str
    name: str
    image: str
    io_dir: Path
    socket_dir: Path
    made_at: float  # time.monotonic() when it was started
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    failed: bool = False
    removed: bool = False  # gone, or being removed (hand_over)
    # EngineHealth.outages when it was made: an engine outage since then likely killed it.
    outages: int = 0
    # Its liveness check, started when a run reserves it (so it overlaps the run's own
    # preparation instead of delaying the hand-over).
    probe: asyncio.Future[dict[str, Any]] | None = None


@dataclass(frozen=True)
class UsualExtensions:
    """The extensions most runs get (those of the default role, set by the App): warm
    containers are made with their folders mounted and their packages unmasked, so the
    runs of the usual caller can still be served warm when extensions are enabled."""

    mounts: Mapping[Path, str] = field(default_factory=dict)
    names: tuple[str, ...] = ()


NO_EXTENSIONS = UsualExtensions()


def plain_request(req: RunRequest, usual: UsualExtensions = NO_EXTENSIONS) -> bool:
    """A run with the config's container (no per-request image, memory, network, env or
    timeout) and the usual extensions: the only kind a warm container, made from the
    config alone, may serve."""
    return (
        req.image is None
        and req.memory is None
        and req.network is None
        and not req.env
        and dict(req.readonly_mounts) == dict(usual.mounts)
        and tuple(req.extensions) == usual.names
        and req.timeout_s is None
    )


def should_warm(*, enabled: bool, limit: int, has_slot: bool, blocked: str | None) -> bool:
    """Whether to make a waiting container for a space that just started a run: not when
    the pool is off, the space has one, or runs are held (low disk, engine down, image
    being built). A full pool makes room (`oldest`)."""
    return enabled and limit > 0 and not has_slot and blocked is None


def expired(made_at: float, now: float, ttl: float) -> bool:
    """Whether a waiting container has been idle past container.warm.idle_ttl."""
    return now - made_at >= ttl


def oldest(slots: dict[str, WarmSlot]) -> str | None:
    """The space whose waiting container is the oldest ready one (it makes room first)."""
    ready = [s for s in slots.values() if s.ready.is_set()]
    return min(ready, key=lambda s: s.made_at).space_id if ready else None


class WarmPool:
    """The runner's waiting containers, one per space at most."""

    def __init__(
        self,
        runner: ContainerRunner,
        folders: SocketFolders | None,
        preload: tuple[str, ...],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        cfg = runner.config.container.warm
        self.runner = runner
        self.folders = folders
        self.preload = preload
        self.enabled = cfg.enabled and folders is not None
        self.limit = cfg.max
        self.ttl = cfg.idle_ttl
        self._clock = clock
        self._slots: dict[str, WarmSlot] = {}  # space id -> its waiting container
        self._taken: dict[str, WarmSlot] = {}  # run id -> a slot handed to a run being set up
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._closed = False
        self.handovers = 0  # runs given to a waiting container (logs, tests, bench)
        self.raised = 0  # of those, raised to a run's CPU weight

    # ------------------------------------------------------------------ counts

    def waiting(self) -> int:
        """Containers waiting for a message now (made or being made)."""
        return len(self._slots)

    def run_ids(self) -> set[str]:
        """Run ids of every container the pool owns (orphan cleanup spares them)."""
        return {s.run_id for s in self._slots.values()} | set(self._taken)

    # ------------------------------------------------------------------ take

    async def take(self, space_id: str) -> str | None:
        """The run id of the space's waiting container, now reserved for its next run; None
        when it has none (the cold path). A container still being made is waited for: it is
        nearer than a cold start."""
        slot = self._slots.get(space_id)
        if slot is None:
            return None
        if not slot.ready.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(slot.ready.wait(), timeout=10.0)
        if self._slots.get(space_id) is not slot or slot.failed or not slot.ready.is_set():
            return None
        del self._slots[space_id]
        if slot.image != self.runner.images.current_image():
            self._discard(slot, "image changed")
            return None
        if slot.outages != self.runner.health.outages:
            self._discard(slot, "the engine was down since it was made")
            return None
        self._taken[slot.run_id] = slot
        slot.probe = asyncio.ensure_future(self._inspect(slot))
        # Read by hand_over; a slot released unused must not log an unread failure.
        slot.probe.add_done_callback(lambda f: f.cancelled() or f.exception())
        return slot.run_id

    async def _inspect(self, slot: WarmSlot) -> dict[str, Any]:
        client = await self.runner._engine()
        return dict(await self.runner._call(client.api.inspect_container, slot.name))

    def release(self, run_id: str) -> None:
        """A reserved container whose run never came: removed."""
        slot = self._taken.pop(run_id, None)
        if slot is not None:
            self._discard(slot, "run not started")

    def claim(self, run_id: str) -> WarmSlot | None:
        """The reserved container of `run_id`, for the runner to hand the run to."""
        return self._taken.pop(run_id, None)

    async def begin(
        self, slot: WarmSlot, run: ActiveRun, client: docker.DockerClient, image: str
    ) -> bool:
        """Give the run its waiting container: True once its input.json is handed over.

        False when the container cannot take it (gone, made from another image, a request
        that overrides the config the container was made from): the container is removed
        first (a cold run of this id reuses its name), and the run goes the cold way."""
        runner = self.runner
        req = run.request
        usable = (
            plain_request(req, runner.usual_extensions)
            and slot.image == image
            and req.api_socket_dir is not None
            and req.api_socket_dir.resolve() == slot.socket_dir.resolve()
        )
        if usable:
            try:
                profile = req.input.get("profile")
                await runner._call(
                    runner.spaces.ensure,
                    req.space_id,
                    profile if isinstance(profile, str) else "general",
                )
                usable = await self.hand_over(slot, run, client, dict(req.input))
            except (OSError, ValueError, TypeError) as exc:
                log.warning("warm.handover_failed", run_id=req.run_id, error=str(exc))
                usable = False
        if not usable and not slot.removed:
            # The engine answers: gone before the cold run of this id reuses its name.
            await runner._reaper.remove(slot.name, req.run_id)
            await runner._call(remove_io_dir, slot.io_dir)
        return usable

    def spec(self, slot: WarmSlot) -> ContainerSpec:
        """A warm container's spec: a cold run's, with the agent's waiting mode."""
        runner = self.runner
        return container_spec(
            runner.config.container,
            instance=runner.config.instance,
            run_id=slot.run_id,
            space_id=slot.space_id,
            image=slot.image,
            data_dir=runner.config.data_dir,
            space_dir=runner.spaces.path(slot.space_id),
            io_dir=slot.io_dir,
            resources_dir=runner.resources_dir,
            api_socket_dir=slot.socket_dir,
            # It serves only runs granted the usual extensions: theirs are mounted, every
            # other extension's packages stay hidden.
            readonly_mounts=runner.usual_extensions.mounts,
            masked=runner.images.masked_for(slot.image, runner.usual_extensions.names),
            user=runner.identity.user,
            wait=True,
            # Its own end, a minute past the pool's: for one whose Mercury was killed.
            wait_timeout=self.ttl + 60,
            preload=self.preload,
        )

    async def hand_over(
        self, slot: WarmSlot, run: ActiveRun, client: docker.DockerClient, payload: object
    ) -> bool:
        """Give the run to its waiting container: True once input.json is in place.

        False when it no longer runs; `slot.removed` says whether it is gone already (or
        goes in the background, when the engine does not answer: the cold run then waits
        for the engine like any other and is put back in the queue, under a new id).
        """
        runner = self.runner
        try:
            probe = slot.probe or asyncio.ensure_future(self._inspect(slot))
            info = await probe
        except docker_errors.NotFound:
            log.warning("warm.lost", run_id=slot.run_id, space_id=slot.space_id, why="gone")
            slot.removed = True
            await runner._call(remove_io_dir, slot.io_dir)
            return False
        except Exception as exc:
            if runner.health.report(exc) or runner.health.down:
                log.warning("warm.lost", run_id=slot.run_id, why="the engine does not answer")
                slot.removed = True
                self._spawn(self._remove(slot, True))
            return False
        if (info.get("State") or {}).get("Status") != "running":
            log.warning("warm.lost", run_id=slot.run_id, space_id=slot.space_id, why="exited")
            return False
        await runner._call(hand_over_input, slot.io_dir, payload, runner.identity)
        self.handovers += 1
        # Now a run: its CPU weight as a cold run's. Off the hand-over's path (the run
        # goes on meanwhile); a failure leaves it at the waiting weight, which is logged.
        self._spawn(self._full_weight(slot))
        log.info(
            "warm.handover",
            run_id=slot.run_id,
            space_id=slot.space_id,
            waited_s=round(self._clock() - slot.made_at, 1),
            waiting=self.waiting(),
        )
        return True

    async def _full_weight(self, slot: WarmSlot) -> None:
        try:
            client = await self.runner._engine()
            await self.runner._call(
                client.api.update_container, slot.name, cpu_shares=RUN_CPU_SHARES
            )
            self.raised += 1
        except Exception as exc:
            log.warning("warm.weight_not_raised", run_id=slot.run_id, error=str(exc)[:200])

    # ------------------------------------------------------------------ make

    def want(self, space_id: str) -> None:
        """A run of `space_id` just started: make its next container, in the background."""
        if self._closed:
            return
        if not should_warm(
            enabled=self.enabled,
            limit=self.limit,
            has_slot=space_id in self._slots,
            blocked=self.runner.hold_reason(),
        ):
            return
        if len(self._slots) >= self.limit:
            victim = oldest(self._slots)
            if victim is None:
                return  # all are still being made: no room now
            self._discard(self._slots.pop(victim), "room for a more recent space")
        run_id = new_run_id(self.runner.run_tag)
        runner = self.runner
        slot = WarmSlot(
            run_id=run_id,
            space_id=space_id,
            name=f"mercury-{runner.config.instance}-{run_id}",
            image=runner.images.current_image(),
            io_dir=io_root(runner.config.data_dir) / run_id,
            socket_dir=Path(),
            made_at=self._clock(),
            outages=runner.health.outages,
        )
        self._slots[space_id] = slot
        self._spawn(self._make(slot))
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def _make(self, slot: WarmSlot) -> None:
        runner = self.runner
        assert self.folders is not None
        created = False
        try:
            slot.socket_dir = self.folders.reserve_folder(slot.run_id)
            await runner._call(
                empty_io_dir, runner.config.data_dir, slot.run_id, runner.identity, replace=True
            )
            spec = self.spec(slot)
            client = await runner._engine()
            host_config = client.api.create_host_config(**spec.host_config)
            created = True
            await runner._call(
                client.api.create_container,
                spec.image,
                command=list(spec.command or ()),
                name=spec.name,
                user=spec.user,
                environment=spec.environment,
                labels=spec.labels,
                host_config=host_config,
                detach=True,
                use_config_proxy=False,
            )
            await runner._call(client.api.start, spec.name)
            slot.made_at = self._clock()
            log.info(
                "warm.ready", space_id=slot.space_id, run_id=slot.run_id, waiting=self.waiting()
            )
        except Exception as exc:
            slot.failed = True
            slot.ready.set()
            if self._slots.get(slot.space_id) is slot:
                del self._slots[slot.space_id]
            log.warning(
                "warm.failed", space_id=slot.space_id, error=f"{type(exc).__name__}: {exc}"[:300]
            )
            await self._remove(slot, created)
        finally:
            slot.ready.set()

    # ------------------------------------------------------------------ remove

    def _discard(self, slot: WarmSlot, why: str) -> None:
        log.info("warm.removed", space_id=slot.space_id, run_id=slot.run_id, why=why)
        self._spawn(self._remove(slot, True))

    async def _remove(self, slot: WarmSlot, created: bool) -> None:
        runner = self.runner
        # A container still being made is removed once its create and start are done.
        await slot.ready.wait()
        try:
            if created:
                await runner._reaper.remove(slot.name, slot.run_id)
            await runner._call(remove_io_dir, slot.io_dir)
        finally:
            if self.folders is not None:
                self.folders.release_folder(slot.run_id)

    async def _sweep(self) -> None:
        """Every few seconds: remove the waiting containers idle past the time-to-live or
        made from an image that is no longer the one runs use."""
        while not self._closed:
            await asyncio.sleep(min(SWEEP_EVERY_S, max(self.ttl / 4, 0.05)))
            now = self._clock()
            current = self.runner.images.current_image()
            for space, slot in list(self._slots.items()):
                if not slot.ready.is_set() or slot.failed:
                    continue
                if expired(slot.made_at, now, self.ttl):
                    del self._slots[space]
                    self._discard(slot, "idle past container.warm.idle_ttl")
                elif slot.image != current:
                    del self._slots[space]
                    self._discard(slot, "image changed")
                elif slot.outages != self.runner.health.outages:
                    del self._slots[space]
                    self._discard(slot, "the engine was down since it was made")

    def _spawn(self, coro: object) -> None:
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        """Remove every waiting container (shutdown)."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for slot in list(self._slots.values()) + list(self._taken.values()):
            self._discard(slot, "shutdown")
        self._slots.clear()
        self._taken.clear()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
