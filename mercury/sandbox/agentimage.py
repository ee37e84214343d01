"""`mercury run`'s builds of the agent image: at start when the engine lacks it, and again
when a run finds it gone (ImageBuildState.restore).

It is the build `mercury image build` makes (images.plan_build / run_build): the
configured `container.image` FROM `container.base_image`, for container.user's account.
It runs on a connection of its own, in a daemon thread: a build can take minutes, and
stopping Mercury must not wait for it (the engine drops a build whose client is gone).
Its steps go to the log as progress lines; a failure goes to the log with the last lines
of the build, for the operator.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import docker

from mercury.config import ContainerConfig
from mercury.logging import get_logger
from mercury.sandbox.engine import connect_engine
from mercury.sandbox.enginewatch import engine_down_error, short_error
from mercury.sandbox.images import ImageBuildError, image_id, plan_build, run_build
from mercury.sandbox.imagestate import ImageBuildState

log = get_logger("mercury.sandbox.images")

T = TypeVar("T")

STEP_CHARS = 200  # a progress line shows this much of a Dockerfile step
LOG_TAIL_LINES = 20  # build log lines logged with a failure


class AgentImageBuilder:
    """Builds the configured agent image; the `restorer` of ImageBuildState."""

    def __init__(self, container: ContainerConfig) -> None:
        self.container = container

    async def __call__(self) -> str:
        """Build it; the image id. Logs progress, and the failure before raising it."""
        container = self.container
        log.warning(
            "agent image missing; building it", image=container.image, base=container.base_image
        )
        started = time.monotonic()

        def on_event(line: str) -> None:
            # Called in the build's daemon thread, which may outlive Mercury's stop: a log
            # line then must not turn into a logging-error traceback.
            with contextlib.suppress(Exception):
                if line.startswith("Step "):
                    log.info("agent image build", image=container.image, step=line[:STEP_CHARS])
                else:
                    log.debug("agent image build", image=container.image, line=line[:STEP_CHARS])

        def build() -> str:
            client, _info = connect_engine()
            try:
                return run_build(client, plan, on_event=on_event)
            finally:
                client.close()

        try:
            # A missing source tree (an installed wheel) fails here, before any build.
            plan = plan_build(container)
            image = await in_daemon_thread(build)
        except Exception as exc:
            if engine_down_error(exc):
                raise  # not the build's fault: ImageBuildState waits for the engine
            tail = exc.log_tail[-LOG_TAIL_LINES:] if isinstance(exc, ImageBuildError) else None
            log.error(
                "agent image build failed",
                image=container.image,
                base=container.base_image,
                error=short_error(exc),
                log_tail=tail,
                fix="fix the cause, then run `mercury image build` (messages fail until then)",
            )
            raise
        log.info(
            "agent image built",
            image=container.image,
            id=image,
            seconds=round(time.monotonic() - started, 1),
        )
        return image


async def ensure_agent_image(client: docker.DockerClient, images: ImageBuildState) -> bool:
    """At start: when the engine lacks the agent image, start building it (in the
    background: messages are accepted and wait in the queue meanwhile). Whether it was
    missing."""
    if await asyncio.to_thread(image_id, client, images.base_image) is not None:
        return False
    if images.restore() is None:
        log.error(
            "agent image missing",
            image=images.base_image,
            fix="mercury image build",
        )
    return True


async def in_daemon_thread(fn: Callable[[], T]) -> T:
    """`fn()` in a daemon thread: unlike the default executor's threads, the process does
    not wait for it at exit."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if done.done():
            return  # the waiter was cancelled
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)  # type: ignore[arg-type]

    def work() -> None:
        try:
            result = fn()
        except BaseException as exc:
            outcome: tuple[T | None, BaseException | None] = (None, exc)
        else:
            outcome = (result, None)
        # The loop may be closed, or the interpreter finalizing (Mercury stopped while the
        # build ran): nobody waits any more, and a traceback on stderr would only alarm.
        with contextlib.suppress(BaseException):
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=work, name="mercury-image-build", daemon=True).start()
    return await done
