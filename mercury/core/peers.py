"""Which other Mercury processes on this database are alive: decided from heartbeat facts.

Why it matters: a running job names the process that claimed it (`owner`, the id its
heartbeat row carries). At start a process recovers at once the jobs of owners that are
not alive (a restarted `mercury run` must not wait a lease to requeue what its crashed
predecessor held), and leaves alone the jobs of live processes (other workers on one
PostgreSQL). On SQLite only one process may run, so a live other process refuses start.

Pure: the caller reads the `processes` rows and, for rows of this host, whether their pid
exists (`pid_alive`); `now` is passed in. A process is alive when it has not stopped
cleanly, its heartbeat is fresh (core/attention.py's rule, the one `mercury status` uses)
and, on this host, its pid exists and is not our own pid (a process restarted in a
container often gets its predecessor's pid: that predecessor is us, so it is gone).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from mercury.core.attention import ProcessFacts, Thresholds, is_fresh
from mercury.core.timefmt import as_utc

MOVING_TO_POSTGRESQL = "docs/operations.md#moving-to-postgresql"
# How silent a heartbeat may be and still count as alive: the rule of `mercury status`.
FRESHNESS = Thresholds()


@dataclass(frozen=True, slots=True)
class Peer:
    """A process as its heartbeat row shows it, plus whether its pid exists (this host only)."""

    id: str
    host: str
    pid: int
    interval_s: float
    started_at: datetime
    updated_at: datetime
    stopped_at: datetime | None = None
    pid_alive: bool | None = None  # None: on another host, where it cannot be checked


@dataclass(frozen=True, slots=True)
class Here:
    """This process: its id (the dispatcher's owner, if known yet), host name and pid."""

    host: str
    pid: int
    process_id: str | None = None


def is_alive(peer: Peer, now: datetime, here: Here, th: Thresholds = FRESHNESS) -> bool:
    """Whether `peer` is a live process (see the module docstring for the rule)."""
    if here.process_id is not None and peer.id == here.process_id:
        return True
    facts = ProcessFacts(
        id=peer.id,
        instance="",
        host=peer.host,
        pid=peer.pid,
        interval_s=peer.interval_s,
        started_at=peer.started_at,
        updated_at=peer.updated_at,
        stopped_at=peer.stopped_at,
    )
    if not is_fresh(facts, now, th):
        return False
    if peer.host == here.host:
        return peer.pid != here.pid and peer.pid_alive is True
    return True


def live_process_ids(
    peers: Iterable[Peer], now: datetime, here: Here, th: Thresholds = FRESHNESS
) -> set[str]:
    """The ids of the live processes: the owners whose running jobs are not recovered at start."""
    return {p.id for p in peers if is_alive(p, now, here, th)}


def sqlite_refusal(
    peers: Iterable[Peer], now: datetime, here: Here, th: Thresholds = FRESHNESS
) -> str | None:
    """Why this process may not start on SQLite (another live process uses the file), or None.

    A crashed process (pid gone, or heartbeat silent) never blocks a restart."""
    others = [
        p
        for p in peers
        if p.id != here.process_id
        and not (p.host == here.host and p.pid == here.pid)
        and is_alive(p, now, here, th)
    ]
    if not others:
        return None
    p = max(others, key=lambda q: as_utc(q.updated_at))
    seen = max(0, int((as_utc(now) - as_utc(p.updated_at)).total_seconds()))
    return (
        "SQLite serves one Mercury process and another is running "
        f"(pid {p.pid} on {p.host}, seen {seen}s ago): stop it, or move to PostgreSQL "
        f"to run several ({MOVING_TO_POSTGRESQL})"
    )


__all__ = ["MOVING_TO_POSTGRESQL", "Here", "Peer", "is_alive", "live_process_ids", "sqlite_refusal"]
