"""Removing run containers: after every run, and what a previous process left behind.

A removal that fails because the engine is down is not given up: it waits for the engine
(EngineHealth) and is tried again as soon as it answers, so a container stranded or killed
by an outage goes without waiting for the next start — and a space's next run, which waits
for its last container to be gone, starts right after. Other failures (e.g. 409 while the
engine still tears a killed container down) are retried a few times, then left to
`orphans()` at the next start, with a warning. `close()` stops the waiting: at shutdown,
whatever the engine could not remove is the next start's to remove.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests.exceptions

from mercury.config import Config
from mercury.logging import get_logger
from mercury.sandbox.enginewatch import EngineHealth, short_error
from mercury.sandbox.hardening import LABEL_INSTANCE, LABEL_MANAGED, LABEL_RUN
from mercury.sandbox.iodir import io_root, remove_io_dir
from mercury.sandbox.outputs import outputs_root

log = get_logger("mercury.sandbox.runner")

# What a Docker call raises when the engine refuses or cannot be reached: the SDK wraps
# HTTP errors, but a dropped connection surfaces as a bare requests exception.
ENGINE_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException)

# A blocking call run on the runner's thread pool.
Call = Callable[..., Awaitable[Any]]


class Reaper:
    """Removes containers of this instance by name, waiting out engine outages."""

    def __init__(
        self,
        config: Config,
        health: EngineHealth,
        call: Call,
        client: Callable[[], docker.DockerClient | None],
    ) -> None:
        self.config = config
        self.health = health
        self._call = call
        self._client = client
        self._closing = asyncio.Event()

    def close(self) -> None:
        """Stop waiting for the engine: pending removals are left to the next start."""
        self._closing.set()

    async def remove(self, name: str, run_id: str, attempts: int = 3) -> None:
        """Remove (force) the container `name`; gone already is fine."""
        failures = 0
        waited = False
        while True:
            client = self._client()
            if client is None:
                return
            try:
                await self._call(client.api.remove_container, name, force=True, v=True)
                if waited:
                    log.info("run.removed_after_outage", run_id=run_id, container=name)
                return
            except docker.errors.NotFound:
                return  # never created, or already gone
            except ENGINE_ERRORS as exc:
                if self.health.report(exc) or self.health.down:
                    if not waited:
                        log.warning("run.remove_waits_for_engine", run_id=run_id, container=name)
                    waited = True
                    if not await self._wait_engine():
                        log.warning(
                            "run.remove_failed",
                            run_id=run_id,
                            container=name,
                            error=short_error(exc),
                            hint="the engine is down at shutdown; the next start removes it",
                        )
                        return
                    continue
                failures += 1
                if failures >= attempts:
                    log.warning(
                        "run.remove_failed",
                        run_id=run_id,
                        container=name,
                        error=short_error(exc),
                        hint="cleanup_orphans() at the next start removes it",
                    )
                    return
                await asyncio.sleep(0.2 * failures)

    async def orphans(
        self,
        client: docker.DockerClient,
        active: set[str],
        spare: Callable[[str], bool] = lambda run_id: False,
    ) -> int:
        """Remove this instance's leftover containers and io dirs; containers removed.

        Only containers labelled mercury.managed=true and mercury.instance=<this instance>
        are touched, so other installs on the same engine keep theirs; `active` run ids
        are spared, and so is any run `spare` names (another live process's).
        """
        instance = self.config.instance
        found = await self._call(
            client.api.containers,
            all=True,
            filters={"label": [f"{LABEL_MANAGED}=true", f"{LABEL_INSTANCE}={instance}"]},
        )
        removed = 0
        for info in found:
            labels = info.get("Labels") or {}
            # Double-check: the filter is the engine's, the promise is ours.
            if labels.get(LABEL_MANAGED) != "true" or labels.get(LABEL_INSTANCE) != instance:
                continue
            run_id = labels.get(LABEL_RUN) or ""
            if run_id in active or spare(run_id):
                continue
            try:
                await self._call(client.api.remove_container, info["Id"], force=True, v=True)
                removed += 1
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                log.warning(
                    "orphan.remove_failed", container=info["Id"][:12], error=short_error(exc)
                )
        stale: list[Path] = []
        for root in (io_root(self.config.data_dir), outputs_root(self.config.data_dir)):
            if root.is_dir():
                stale += [p for p in root.iterdir() if p.name not in active and not spare(p.name)]
        for path in stale:
            if path.is_dir() and not path.is_symlink():
                await self._call(remove_io_dir, path)
            else:
                path.unlink(missing_ok=True)
        if removed or stale:
            log.info("orphans.removed", containers=removed, io_dirs=len(stale))
        return removed

    async def _wait_engine(self) -> bool:
        """Until the engine answers (True) or close() (False)."""
        up = asyncio.ensure_future(self.health.wait_up())
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            await asyncio.wait({up, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            up.cancel()
            closing.cancel()
        return not self._closing.is_set()
