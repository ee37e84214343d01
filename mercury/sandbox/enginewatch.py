"""Whether the Docker engine answers, and waiting for it to come back when it does not.

An engine that restarts (an upgrade, a crash, an operator's `systemctl restart docker`)
refuses connections for seconds; a message must not be lost to that. So a Docker call
that cannot reach the engine at all — connection refused, socket gone, connection dropped
— marks it down, and from then on one task pings it with backoff (0.5 s doubling up to
5 s) until it answers. Meanwhile the runner starts nothing and the dispatcher claims
nothing (`hold_reason`), a run the outage may have cut short goes back to the queue, and
container removals wait for the engine instead of giving up.

Waiting is bounded: once an outage is longer than `container.engine_outage_limit`, the
hold is lifted and waiting messages fail with a notice for the operator (`given_up`);
probing goes on, so runs work again as soon as the engine answers.

Errors the engine itself returns (a 4xx/5xx answer) say nothing about its being down and
are not counted here; neither is a slow answer (a read timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable

import requests.exceptions

from mercury.logging import get_logger, scrub_text
from mercury.sandbox.engine import EngineUnavailable

log = get_logger("mercury.sandbox.engine")

FIRST_PROBE_S = 0.5
MAX_PROBE_S = 5.0

# Raised by the Docker SDK (through requests) when the engine cannot be reached or went
# away mid-call: refused, no socket, connection reset or aborted, a cut build stream.
_DOWN = (
    EngineUnavailable,
    requests.exceptions.ConnectionError,
    requests.exceptions.ChunkedEncodingError,
    ConnectionRefusedError,
    ConnectionResetError,
)


def engine_down_error(exc: BaseException) -> bool:
    """Whether `exc` (or what it was raised from) means the engine cannot be reached."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, _DOWN):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def short_error(exc: BaseException) -> str:
    """One scrubbed line of an exception, for logs and run errors."""
    text = getattr(exc, "explanation", None) or str(exc) or type(exc).__name__
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return scrub_text(str(text).splitlines()[0][:300]) if text else type(exc).__name__


class EngineHealth:
    """The engine's state as the runner sees it; `ping` is one round trip to the engine."""

    def __init__(
        self,
        ping: Callable[[], Awaitable[object]],
        outage_limit: float,
        *,
        first_probe: float = FIRST_PROBE_S,
        max_probe: float = MAX_PROBE_S,
    ) -> None:
        self._ping = ping
        self.outage_limit = outage_limit
        # How long a run in flight waits for an engine that stopped answering before it
        # is handed back to the queue, unrun as far as the user knows. A single process
        # waits out the whole outage limit; a worker (docs/scale-out.md) hands it back
        # soon, since another worker's engine can run it now.
        self.run_give_up = math.inf
        self.first_probe = first_probe
        self.max_probe = max_probe
        self.down_since: float | None = None  # time.monotonic()
        self.error: str | None = None
        # Outages seen so far: a run that spans one may have lost its container to it.
        self.outages = 0
        self._up = asyncio.Event()
        self._up.set()
        self._task: asyncio.Task[None] | None = None

    @property
    def down(self) -> bool:
        return self.down_since is not None

    @property
    def given_up(self) -> bool:
        """Down for longer than the limit: stop holding messages, tell their authors."""
        return self.down_since is not None and self.outage_s() > self.outage_limit

    @property
    def run_given_up(self) -> bool:
        """Down for longer than a run in flight waits (`run_give_up`) or than the limit."""
        return self.given_up or (self.down_since is not None and self.outage_s() > self.run_give_up)

    def outage_s(self) -> float:
        return 0.0 if self.down_since is None else time.monotonic() - self.down_since

    def hold_reason(self) -> str | None:
        """Why nothing may start now (the engine is down, within the limit), or None."""
        if self.down and not self.given_up:
            return "the Docker engine does not answer; waiting for it to come back"
        return None

    def report(self, exc: BaseException) -> bool:
        """Note a failed Docker call; True if it means the engine is down."""
        if not engine_down_error(exc):
            return False
        self.mark_down(short_error(exc))
        return True

    def mark_down(self, why: str) -> None:
        if self.down_since is not None:
            return
        self.down_since = time.monotonic()
        self.error = why
        self.outages += 1
        self._up.clear()
        log.error(
            "docker engine unreachable",
            error=why,
            outage_limit_s=self.outage_limit,
            meanwhile="messages wait in the queue; runs cut short by it are run again",
        )
        self._task = asyncio.get_running_loop().create_task(self._probe_until_up())

    async def wait_up(self) -> None:
        await self._up.wait()

    async def recheck(self) -> bool:
        """Ping now rather than at the next probe; whether the engine answers. For a message
        about to fail because the engine was given up on: it may just be back."""
        if not self.down:
            return True
        try:
            await self._ping()
        except Exception as exc:
            self.error = short_error(exc)
            return False
        self._mark_up()
        return True

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _probe_until_up(self) -> None:
        delay = self.first_probe
        warned = False
        while True:
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.max_probe)
            if self.given_up and not warned:
                warned = True
                log.error(
                    "docker engine down longer than container.engine_outage_limit",
                    outage_limit_s=self.outage_limit,
                    error=self.error,
                    meanwhile="messages fail with a notice until the engine answers again",
                )
            try:
                await self._ping()
            except Exception as exc:  # still down (or not yet able to answer)
                self.error = short_error(exc)
                continue
            self._mark_up()
            return

    def _mark_up(self) -> None:
        if self.down_since is None:
            return
        log.warning("docker engine answers again", outage_s=round(self.outage_s(), 1))
        self.down_since = None
        self.error = None
        self._up.set()
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()  # recheck() saw it first: the probing is over
