"""The running Mercury's heartbeat: its own row and its adapters' state, written to the
database every few seconds for `mercury status` (storage/adapter_status.py).

Why a loop of its own: the status command is another process and can only tell "alive"
from "dead or stuck" by how old the last write is, so the write must keep coming whatever
else the process is busy with. A failing write (database locked, PostgreSQL restarting)
is logged and tried again next tick: a heartbeat never stops Mercury. A clean stop
writes one last row with `stopped_at`, so status can say "stopped" rather than "silent".
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from mercury import __version__
from mercury.logging import first_line, get_logger
from mercury.storage import Database
from mercury.storage.adapter_status import (
    AdapterStatus,
    ProcessInfo,
    prune_processes,
    write_heartbeat,
)
from mercury.storage.models import utcnow

log = get_logger("mercury.pipeline.heartbeat")

# Seconds between writes. `mercury status` calls a process silent for a few of its own
# intervals (core/attention.py) not running.
HEARTBEAT_INTERVAL_S = 15.0
# Tests (and the impatient) may shorten it; not a config key, as nobody should need to.
INTERVAL_ENV = "MERCURY_HEARTBEAT_INTERVAL"


def interval_from_env(env: Mapping[str, str] | None = None) -> float:
    """HEARTBEAT_INTERVAL_S, or MERCURY_HEARTBEAT_INTERVAL seconds (0.1 .. 3600) when set."""
    raw = (os.environ if env is None else env).get(INTERVAL_ENV, "").strip()
    try:
        value = float(raw) if raw else HEARTBEAT_INTERVAL_S
    except ValueError:
        log.warning("not a number of seconds; using the default", variable=INTERVAL_ENV)
        return HEARTBEAT_INTERVAL_S
    return min(max(value, 0.1), 3600.0)


def adapter_statuses(adapters: Mapping[str, Any]) -> dict[str, AdapterStatus]:
    """Each adapter's AdapterState snapshot as the row to write (an unreadable one is
    written as disconnected with the reason, not left out)."""
    found: dict[str, AdapterStatus] = {}
    for name, adapter in adapters.items():
        try:
            st = adapter.state
            found[name] = AdapterStatus(
                adapter=name,
                connected=bool(st.connected),
                last_event_at=st.last_event_at,
                last_error=st.last_error,
                last_error_at=st.last_error_at,
            )
        except Exception as exc:  # an adapter's property must not stop the heartbeat
            found[name] = AdapterStatus(
                adapter=name, connected=False, last_error=f"state unreadable: {type(exc).__name__}"
            )
    return found


class Heartbeat:
    """Writes this process's row every `interval` seconds from `start()` to `stop()`."""

    def __init__(
        self,
        db: Database,
        *,
        process_id: str,
        instance: str,
        adapters: Mapping[str, Any],
        interval: float | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.adapters = adapters
        self.interval = interval if interval is not None else interval_from_env()
        self.clock = clock
        self.process = ProcessInfo(
            id=process_id,
            instance=instance,
            host=socket.gethostname(),
            pid=os.getpid(),
            version=__version__,
            interval_s=self.interval,
            started_at=clock(),
        )
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self.writes = 0  # successful writes, for tests and logs

    async def beat(self, *, stopped: bool = False) -> bool:
        """One write; False (logged once per failing stretch) when it did not go through."""
        try:
            await write_heartbeat(
                self.db,
                self.process,
                adapter_statuses(self.adapters),
                now=self.clock(),
                stopped=stopped,
            )
        except Exception as exc:
            if not self._failing:
                log.warning("heartbeat not written; trying again", error=first_line(exc))
            self._failing = True
            return False
        if self._failing:
            log.info("heartbeat written again")
        self._failing = False
        self.writes += 1
        return True

    async def start(self) -> None:
        """Prune long-silent processes, write the first beat, then keep beating."""
        try:
            await prune_processes(self.db, now=self.clock(), keep=self.process.id)
        except Exception as exc:
            log.warning("old heartbeats not pruned", error=first_line(exc))
        await self.beat()
        self._task = asyncio.create_task(self._loop(), name="heartbeat")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.beat()

    async def stop(self) -> None:
        """Stop the loop and write the last beat, marked stopped (best effort)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.beat(stopped=True)


__all__ = ["HEARTBEAT_INTERVAL_S", "Heartbeat", "adapter_statuses", "interval_from_env"]
