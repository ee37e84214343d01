"""Heartbeats, one aggregate: each Mercury process and the state of its adapters (0012).

Why in the database: an adapter's state (connected, last event, last error) lives in the
running process, but `mercury status` is another process, maybe started by cron while
Mercury is down. So the running process writes it here every few seconds
(pipeline/heartbeat.py) and the status command reads it back.

Rows are keyed by the process id made at start (the dispatcher's owner id, so a running
job's `owner` names its process), never by instance alone: several processes on one
database (a gateway and workers, or an old process not yet gone) each keep their own.
A clean stop sets `stopped_at`; a crash leaves `updated_at` to age. Rows of processes
silent for `PRUNE_AFTER` are removed when a process starts, so restarts do not pile up.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import delete, select

from mercury.storage.models import AdapterStatusRow, ProcessRow, utcnow
from mercury.storage.session import Store, tx, upsert

# A process silent this long is history: its rows go when another process starts.
PRUNE_AFTER = timedelta(days=7)
# At most this many processes are read back (newest heartbeat first).
MAX_PROCESSES = 50
ERROR_CHARS = 300


@dataclass(frozen=True, slots=True)
class AdapterStatus:
    """One adapter's state as written by its process (the fields of AdapterState)."""

    adapter: str
    connected: bool
    last_event_at: datetime | None = None
    last_error: str | None = None  # one short line, already scrubbed by the adapter
    last_error_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ProcessStatus:
    """A Mercury process's last heartbeat and its adapters (by name)."""

    id: str
    instance: str
    host: str
    pid: int
    version: str
    interval_s: float
    started_at: datetime
    updated_at: datetime
    stopped_at: datetime | None
    adapters: list[AdapterStatus] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """What a process says of itself in every heartbeat (fixed for its lifetime)."""

    id: str
    instance: str
    host: str
    pid: int
    version: str
    interval_s: float
    started_at: datetime


def _one_line(text: str | None) -> str | None:
    if text is None:
        return None
    lines = text.strip().splitlines()
    return (lines[0] if lines else "error")[:ERROR_CHARS]


async def write_heartbeat(
    store: Store,
    process: ProcessInfo,
    adapters: Mapping[str, AdapterStatus],
    *,
    now: datetime | None = None,
    stopped: bool = False,
) -> None:
    """Upsert the process's row and one row per adapter, in one transaction.

    `stopped`: the process is shutting down cleanly; `stopped_at` is set to `now`.
    """
    now = now or utcnow()
    values = {
        "id": process.id,
        "instance": process.instance,
        "host": process.host[:255],
        "pid": process.pid,
        "version": process.version[:64],
        "interval_s": process.interval_s,
        "started_at": process.started_at,
        "updated_at": now,
        "stopped_at": now if stopped else None,
    }
    changing = {k: values[k] for k in ("updated_at", "stopped_at", "interval_s", "version")}
    async with tx(store) as s:
        await upsert(s, ProcessRow, values, ["id"], changing)
        for name, a in sorted(adapters.items()):
            row = {
                "process_id": process.id,
                "adapter": name[:32],
                "connected": a.connected,
                "last_event_at": a.last_event_at,
                "last_error": _one_line(a.last_error),
                "last_error_at": a.last_error_at,
                "updated_at": now,
            }
            await upsert(
                s,
                AdapterStatusRow,
                row,
                ["process_id", "adapter"],
                {k: v for k, v in row.items() if k not in ("process_id", "adapter")},
            )


async def prune_processes(
    store: Store, *, now: datetime | None = None, keep: str | None = None
) -> int:
    """Remove processes (and their adapters) silent since `now - PRUNE_AFTER`; never `keep`.

    Returns how many processes went."""
    before = (now or utcnow()) - PRUNE_AFTER
    old = select(ProcessRow.id).where(ProcessRow.updated_at < before)
    if keep is not None:
        old = old.where(ProcessRow.id != keep)
    async with tx(store) as s:
        ids = list(await s.scalars(old))
        if not ids:
            return 0
        # Explicit, not only ON DELETE CASCADE: the same on any connection's FK setting.
        await s.execute(delete(AdapterStatusRow).where(AdapterStatusRow.process_id.in_(ids)))
        await s.execute(delete(ProcessRow).where(ProcessRow.id.in_(ids)))
    return len(ids)


async def read_processes(
    store: Store, *, instance: str | None = None, limit: int = MAX_PROCESSES
) -> list[ProcessStatus]:
    """Processes newest heartbeat first (of one `instance`, or all), with their adapters."""
    q = select(ProcessRow).order_by(ProcessRow.updated_at.desc(), ProcessRow.id).limit(limit)
    if instance is not None:
        q = q.where(ProcessRow.instance == instance)
    async with tx(store) as s:
        procs = list(await s.scalars(q))
        ids = [p.id for p in procs]
        rows = (
            list(
                await s.scalars(
                    select(AdapterStatusRow)
                    .where(AdapterStatusRow.process_id.in_(ids))
                    .order_by(AdapterStatusRow.process_id, AdapterStatusRow.adapter)
                )
            )
            if ids
            else []
        )
    by_process: dict[str, list[AdapterStatus]] = {}
    for r in rows:
        by_process.setdefault(r.process_id, []).append(
            AdapterStatus(
                adapter=r.adapter,
                connected=r.connected,
                last_event_at=r.last_event_at,
                last_error=r.last_error,
                last_error_at=r.last_error_at,
                updated_at=r.updated_at,
            )
        )
    return [
        ProcessStatus(
            id=p.id,
            instance=p.instance,
            host=p.host,
            pid=p.pid,
            version=p.version,
            interval_s=p.interval_s,
            started_at=p.started_at,
            updated_at=p.updated_at,
            stopped_at=p.stopped_at,
            adapters=by_process.get(p.id, []),
        )
        for p in procs
    ]


__all__ = [
    "PRUNE_AFTER",
    "AdapterStatus",
    "ProcessInfo",
    "ProcessStatus",
    "prune_processes",
    "read_processes",
    "write_heartbeat",
]
