"""Guarding against a lost database: an emptied one at start, a deleted one while running.

Everything durable (history, the queue, roles, runs) is in the database, while the
spaces' files are on disk. A database deleted or replaced under a running Mercury would
otherwise go unnoticed (SQLite keeps writing to the unlinked file) and the next start
would silently begin empty. So: start refuses an empty database while spaces exist on
disk (unless the operator says so), and a running Mercury fails its health check and logs
an error as soon as its database file is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

from mercury.logging import get_logger
from mercury.sandbox.spaces import spaces_root
from mercury.storage import Database, repo

log = get_logger("mercury.dbguard")

ACCEPT_FLAG = "--accept-empty-database"
CHECK_EVERY_S = 2.0
REPEAT_LOG_S = 60.0


async def emptied_database(db: Database, data_dir: Path) -> str | None:
    """Why starting on this database would lose data (no spaces in it, some on disk)."""
    if await repo.list_spaces(db):
        return None
    root = spaces_root(data_dir)
    on_disk = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not on_disk:
        return None
    return (
        f"database_url: the database ({db.safe_url}) has no spaces, but {root} holds "
        f"{len(on_disk)}: the database was probably deleted or replaced. Restore it from a "
        f"backup, or start with `mercury run {ACCEPT_FLAG}` to begin with an empty one "
        "(history, queue and roles start empty; the spaces' files are kept)."
    )


class DatabaseWatch:
    """Checks every few seconds that the database file is still the one Mercury opened."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.problem: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._logged_at = 0.0

    def start(self) -> None:
        self.db.pin_file()
        if self.db.file is not None:
            self._task = asyncio.get_running_loop().create_task(self._watch())

    def health(self) -> str | None:
        """For /healthz: the problem, checked now (monitors poll at their own pace)."""
        self.problem = self.db.file_problem()
        return self.problem

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(CHECK_EVERY_S)
            problem = self.health()
            now = time.monotonic()
            if problem and now - self._logged_at >= REPEAT_LOG_S:
                self._logged_at = now
                log.error(
                    "THE DATABASE IS GONE: nothing Mercury records from now on will survive "
                    "a restart",
                    problem=problem,
                    database=self.db.safe_url,
                    fix="stop Mercury, restore the database file from a backup, start again",
                )
            elif not problem:
                self._logged_at = 0.0
