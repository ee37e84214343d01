"""Which agent image runs use, and the builds that keep it on the engine.

Two kinds of build, both in the background:

- `builder` builds a derived image (e.g. with extensions' tools). Runs use the base agent
  image until it is built, so a slow build never holds up a message; a run that finds the
  derived image gone starts a rebuild and runs on the base meanwhile.
- `restorer` (re)builds the base agent image itself (`container.image`), which nothing can
  stand in for: `mercury run` calls it at start when the engine lacks the image, and a run
  that finds it gone calls it again. Every run that asks while a build goes shares that one
  build; meanwhile `hold_reason` keeps jobs queued. A build that fails is logged for the
  operator by the restorer, and for `retry_after` seconds the image counts as `broken`, so
  messages fail at once with a notice instead of waiting or spinning; after that, the next
  run that finds the image missing tries one more build.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping

from mercury.logging import get_logger
from mercury.sandbox.enginewatch import engine_down_error, short_error

log = get_logger("mercury.sandbox.images")

# How long a failed rebuild of the agent image is not tried again.
RESTORE_RETRY_S = 300.0


class ImageBuildState:
    """The agent image (`base_image`), an optional derived image, and their builds."""

    def __init__(
        self,
        base_image: str,
        builder: Callable[[], Awaitable[str]] | None = None,
        derived_image: str | None = None,
        *,
        restorer: Callable[[], Awaitable[str]] | None = None,
        retry_after: float = RESTORE_RETRY_S,
        packaged: Mapping[str, str] | None = None,
    ) -> None:
        self.base_image = base_image
        self.derived_image = derived_image
        # Extension name -> the folder of its own packages in the derived image.
        self.packaged = dict(packaged or {})
        self._builder = builder
        self._task: asyncio.Task[str | None] | None = None
        self.last_error: str | None = None
        self.rebuilds = 0
        self._restorer = restorer
        self._restore_task: asyncio.Task[bool] | None = None
        self.retry_after = retry_after
        self.restores = 0
        self.restore_error: str | None = None
        self._restore_failed_at: float | None = None

    def current_image(self) -> str:
        return self.derived_image or self.base_image

    def masked_for(self, image: str, granted: Iterable[str] = ()) -> tuple[str, ...]:
        """The package folders a run on `image` must not see: on the derived image, those
        of every extension the run is not granted; none on any other image."""
        if not self.packaged or image != self.derived_image:
            return ()
        keep = set(granted)
        return tuple(path for name, path in sorted(self.packaged.items()) if name not in keep)

    # ------------------------------------------------------------------ derived image

    @property
    def building(self) -> bool:
        return self._task is not None and not self._task.done()

    def rebuild(self) -> asyncio.Task[str | None] | None:
        """Start a background rebuild (one at a time); runs use the base image meanwhile."""
        if self._builder is None:
            return None
        if self.building:
            return self._task
        self.derived_image = None
        self.rebuilds += 1
        self._task = asyncio.get_running_loop().create_task(self._build())
        return self._task

    async def _build(self) -> str | None:
        assert self._builder is not None
        try:
            tag = await self._builder()
        except Exception as exc:  # the base image keeps serving; the operator sees why
            self.last_error = f"{type(exc).__name__}: {exc}"
            return None
        self.derived_image = tag
        self.last_error = None
        return tag

    def build_status(self) -> object | None:
        """The derived image builder's own account of its build (ext_image.ExtImageStatus:
        state, tag, current step, error), for the dashboard; None without one."""
        status = getattr(self._builder, "status", None)
        return status() if callable(status) else None

    async def wait(self) -> str | None:
        if self._task is None:
            return self.derived_image
        return await self._task

    # ------------------------------------------------------------------ the agent image

    @property
    def restoring(self) -> bool:
        return self._restore_task is not None and not self._restore_task.done()

    @property
    def broken(self) -> bool:
        """The last rebuild of the agent image failed, recently: runs cannot work."""
        failed = self._restore_failed_at
        return failed is not None and time.monotonic() - failed < self.retry_after

    def can_restore(self) -> bool:
        return self._restorer is not None and (self.restoring or not self.broken)

    def restore(self) -> asyncio.Task[bool] | None:
        """Build the agent image again (one build for every caller); None if it cannot be."""
        if not self.can_restore():
            return None
        if self._restore_task is None or self._restore_task.done():
            self.restores += 1
            self._restore_task = asyncio.get_running_loop().create_task(self._restore())
        return self._restore_task

    def hold_reason(self) -> str | None:
        """Why no run may start now (the agent image is being built), or None."""
        if self.restoring:
            return f"building the agent image {self.base_image}"
        return None

    def found(self) -> None:
        """The agent image is on the engine again (e.g. the operator built it)."""
        if self._restore_failed_at is not None:
            log.info("agent image found again", image=self.base_image)
        self._restore_failed_at = None
        self.restore_error = None

    async def wait_restored(self) -> bool:
        """Wait for the build in progress, if any; whether the image is there after it."""
        if self._restore_task is None:
            return not self.broken
        return await asyncio.shield(self._restore_task)

    async def aclose(self) -> None:
        for task in (self._task, self._restore_task):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _restore(self) -> bool:
        assert self._restorer is not None
        try:
            await self._restorer()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if engine_down_error(exc):
                # Not the image's fault: the next run after the engine is back tries again.
                log.warning("agent image build cut short by the engine", error=short_error(exc))
                return False
            self.restore_error = short_error(exc)
            self._restore_failed_at = time.monotonic()
            log.error(
                "agent image unavailable",
                image=self.base_image,
                error=self.restore_error,
                meanwhile=f"messages fail with a notice; another build is tried after "
                f"{self.retry_after:g}s, or as soon as the image is there",
            )
            return False
        self.found()
        if self._builder is not None and self.derived_image is None and not self.building:
            # The derived image is built FROM this one: a build tried while it was missing
            # failed, so try again now that it is there.
            self.rebuild()
        return True
