"""`mercury status`'s data: one report gathered from the database and the disk.

Why from the database: the status command runs beside Mercury (or instead of it, when it
is down) and must not need its HTTP server, its login or its memory. The running process
writes its heartbeat and adapters' state (pipeline/heartbeat.py); everything else is
already stored (jobs, runs, usage, model calls). Each read is one short aggregate in its
own transaction (storage/stats.py), so SQLite in WAL mode serves it while Mercury writes.

The verdict (what needs attention) is core/attention.py's, from the plain facts built
here. `report_json` is the `--json` output; its keys are documented in docs/operations.md
and kept stable for scripts.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mercury.core.attention import (
    AdapterFacts,
    CapFacts,
    Concern,
    Facts,
    Liveness,
    ProcessFacts,
    RunningFacts,
    Thresholds,
    attention,
    liveness,
)

if TYPE_CHECKING:
    from mercury.config import Config
    from mercury.storage import Database
    from mercury.storage.adapter_status import ProcessStatus
    from mercury.storage.stats import TodayUsage

# The disk walk of data_dir/spaces stops after this many entries or seconds; the total is
# then "at least" (`complete` false). Free space (statvfs) is always exact.
WALK_MAX_ENTRIES = 500_000
WALK_MAX_SECONDS = 5.0
MAX_RUNNING = 100  # running jobs listed
MAX_CAP_SPACES = 50  # spaces whose own caps are read (the month's biggest spenders)
LARGEST_SPACES = 5


@dataclass
class DiskUse:
    """Free space of data_dir's filesystem and what Mercury's files take."""

    data_dir: str
    free_bytes: int | None
    min_free_bytes: int
    spaces_bytes: int = 0
    complete: bool = True  # False: the walk stopped at its bound, spaces_bytes is a floor
    space_images_bytes: int = 0
    database_bytes: int | None = None  # SQLite file + WAL; None for PostgreSQL
    largest: list[tuple[str, int]] = field(default_factory=list)


@dataclass
class StatusReport:
    """Everything `mercury status` shows, and the verdict."""

    now: datetime
    instance: str
    database: str  # masked URL
    state: Liveness
    concerns: list[Concern]
    processes: list[ProcessStatus]
    fresh: set[str]  # ids of processes with a fresh heartbeat
    running: list[RunningFacts]
    queue: dict[str, int]
    failures: dict[str, int]
    today: TodayUsage
    caps: list[CapFacts]
    disk: DiskUse

    @property
    def ok(self) -> bool:
        return not self.concerns


# --------------------------------------------------------------------------- disk


class _Budget:
    def __init__(self, max_entries: int, max_seconds: float) -> None:
        self.left = max_entries
        self.deadline = time.monotonic() + max_seconds

    def spent(self) -> bool:
        return self.left <= 0 or time.monotonic() > self.deadline


def _walk(path: Path, budget: _Budget) -> Iterator[os.stat_result]:
    """lstat of every entry under `path` (never following a symlink), until the budget ends."""
    stack = [str(path)]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                for entry in it:
                    if budget.spent():
                        return
                    budget.left -= 1
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    yield st
                    if stat.S_ISDIR(st.st_mode):
                        stack.append(entry.path)
        except OSError:
            continue


def disk_use(
    config: Config,
    *,
    max_entries: int = WALK_MAX_ENTRIES,
    max_seconds: float = WALK_MAX_SECONDS,
) -> DiskUse:
    """Free space and the bytes (allocated blocks, like `du`) of spaces, images, database."""
    from mercury.sandbox.space_images import images_root
    from mercury.sandbox.spaces import free_bytes, spaces_root

    data_dir = config.data_dir
    try:
        free: int | None = free_bytes(data_dir if data_dir.exists() else data_dir.parent)
    except OSError:
        free = None
    use = DiskUse(str(data_dir), free, config.disk.min_free)
    budget = _Budget(max_entries, max_seconds)
    per_space: list[tuple[str, int]] = []
    root = spaces_root(data_dir)
    spaces: list[str] = []
    with contextlib.suppress(OSError), os.scandir(root) as it:
        spaces = sorted(e.name for e in it if e.is_dir(follow_symlinks=False))
    for name in spaces:
        size = sum(st.st_blocks * 512 for st in _walk(root / name, budget))
        per_space.append((name, size))
        if budget.spent():
            break
    use.complete = not budget.spent() and len(per_space) == len(spaces)
    use.spaces_bytes = sum(n for _, n in per_space)
    use.largest = sorted(per_space, key=lambda kv: (-kv[1], kv[0]))[:LARGEST_SPACES]
    with contextlib.suppress(OSError), os.scandir(images_root(data_dir)) as it:
        use.space_images_bytes = sum(
            e.stat(follow_symlinks=False).st_blocks * 512
            for e in it
            if e.is_file(follow_symlinks=False)
        )
    if config.database_url is None:  # the default SQLite file in data_dir
        db_file = data_dir / "mercury.db"
        total = 0
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                total += (db_file.parent / (db_file.name + suffix)).stat().st_size
        use.database_bytes = total
    return use


# --------------------------------------------------------------------------- database


def _process_facts(p: ProcessStatus) -> ProcessFacts:
    return ProcessFacts(
        id=p.id,
        instance=p.instance,
        host=p.host,
        pid=p.pid,
        interval_s=p.interval_s,
        started_at=p.started_at,
        updated_at=p.updated_at,
        stopped_at=p.stopped_at,
        adapters=tuple(
            AdapterFacts(a.adapter, a.connected, a.last_event_at, a.last_error, a.last_error_at)
            for a in p.adapters
        ),
    )


async def cap_facts(db: Database, config: Config, now: datetime) -> list[CapFacts]:
    """The instance's daily cap and the spaces' day and month caps that are set, with their
    use: read from model_calls like `mercury budget` (no running book needed)."""
    from mercury.core.budget import Cap, Scope, Spent, format_usd, period_start, share
    from mercury.pipeline.budget import read_overrides
    from mercury.storage.spend import spend_by_space

    base = config.budgets.caps()
    day = period_start(Scope.SPACE_DAY, now)
    month = period_start(Scope.SPACE_MONTH, now)
    assert day is not None and month is not None
    by_day = {r.space_id: Spent(r.usd, r.tokens) for r in await spend_by_space(db, day)}
    by_month = {r.space_id: Spent(r.usd, r.tokens) for r in await spend_by_space(db, month)}

    def fact(name: str, cap: Cap, spent: Spent) -> CapFacts:
        parts = []
        if cap.usd is not None:
            parts.append(f"{format_usd(spent.usd)} of {format_usd(cap.usd)}")
        if cap.tokens is not None:
            parts.append(f"{spent.tokens:,} of {cap.tokens:,} tokens")
        return CapFacts(name, share(cap, spent), ", ".join(parts))

    found: list[CapFacts] = []
    if base.instance_day is not None:
        total = sum(by_day.values(), Spent())
        found.append(fact("budgets.instance_day", base.instance_day, total))
    spenders = sorted(by_month, key=lambda s: (-by_month[s].usd, -by_month[s].tokens, s))
    for space_id in spenders[:MAX_CAP_SPACES]:
        caps = base.with_overrides(await read_overrides(db, space_id))
        for scope, spent in ((Scope.SPACE_DAY, by_day), (Scope.SPACE_MONTH, by_month)):
            cap = caps.get(scope)
            if cap is not None:
                found.append(
                    fact(
                        f"{scope.value} cap of space {space_id}", cap, spent.get(space_id, Spent())
                    )
                )
    return found


async def gather(
    db: Database,
    config: Config,
    *,
    now: datetime,
    thresholds: Thresholds | None = None,
    disk: DiskUse | None = None,
) -> StatusReport:
    """Read every fact (short transactions, reads only) and decide what needs attention."""
    thresholds = thresholds or Thresholds()
    from mercury.storage import JobStatus, list_jobs
    from mercury.storage.adapter_status import read_processes
    from mercury.storage.stats import failures_by_reason, queue_depth, usage_today

    processes = await read_processes(db, instance=config.instance)
    jobs = await list_jobs(db, status=JobStatus.RUNNING, limit=MAX_RUNNING)
    running = [RunningFacts(j.space_id, j.started_at, j.owner) for j in jobs]
    queue = await queue_depth(db)
    failures = {
        r.value: n
        for r, n in (await failures_by_reason(db, since=now - timedelta(hours=1))).items()
    }
    today = await usage_today(db, today=now.date(), top=5)
    caps = await cap_facts(db, config, now)
    disk = disk if disk is not None else disk_use(config)
    facts = Facts(
        now=now,
        instance=config.instance,
        processes=[_process_facts(p) for p in processes],
        run_timeout_s=config.container.timeout,
        running=running,
        queue=queue,
        failures=failures,
        free_bytes=disk.free_bytes,
        min_free=disk.min_free_bytes,
        caps=caps,
    )
    state, concerns = attention(facts, thresholds)
    return StatusReport(
        now=now,
        instance=config.instance,
        database=db.safe_url,
        state=state,
        concerns=concerns,
        processes=processes,
        fresh={p.id for p in liveness(facts.processes, now, thresholds)[1]},
        running=running,
        queue=queue,
        failures=failures,
        today=today,
        caps=caps,
        disk=disk,
    )


# --------------------------------------------------------------------------- JSON


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.isoformat()


def report_json(r: StatusReport) -> dict[str, Any]:
    """The `--json` document (keys documented in docs/operations.md; kept stable)."""
    t = r.today.total
    return {
        "ok": r.ok,
        "state": r.state.value,
        "instance": r.instance,
        "now": _iso(r.now),
        "database": r.database,
        "attention": [{"kind": c.kind, "text": c.text} for c in r.concerns],
        "processes": [
            {
                "id": p.id,
                "host": p.host,
                "pid": p.pid,
                "version": p.version,
                "started_at": _iso(p.started_at),
                "heartbeat_at": _iso(p.updated_at),
                "stopped_at": _iso(p.stopped_at),
                "fresh": p.id in r.fresh,
                "adapters": [
                    {
                        "name": a.adapter,
                        "connected": a.connected,
                        "last_event_at": _iso(a.last_event_at),
                        "last_error": a.last_error,
                        "last_error_at": _iso(a.last_error_at),
                    }
                    for a in p.adapters
                ],
            }
            for p in r.processes
        ],
        "runs_now": [
            {
                "space_id": j.space_id,
                "started_at": _iso(j.started_at),
                "seconds": None
                if j.started_at is None
                else round((r.now - j.started_at).total_seconds(), 1),
                "process_id": j.owner,
            }
            for j in r.running
        ],
        "queue": {"total": sum(r.queue.values()), "spaces": dict(r.queue)},
        "failures_last_hour": {"total": sum(r.failures.values()), "by_reason": dict(r.failures)},
        "today": {
            "day": r.today.day.isoformat(),
            "runs": t.runs,
            "input_tokens": t.input_tokens,
            "output_tokens": t.output_tokens,
            "tokens": t.tokens,
            "cost_usd": round(t.cost_usd, 6),
        },
        "caps": [{"name": c.name, "share": round(c.share, 4), "used": c.used} for c in r.caps],
        "disk": {
            "data_dir": r.disk.data_dir,
            "free_bytes": r.disk.free_bytes,
            "min_free_bytes": r.disk.min_free_bytes,
            "spaces_bytes": r.disk.spaces_bytes,
            "spaces_complete": r.disk.complete,
            "space_images_bytes": r.disk.space_images_bytes,
            "database_bytes": r.disk.database_bytes,
            "largest_spaces": [{"space_id": s, "bytes": n} for s, n in r.disk.largest],
        },
    }


__all__ = [
    "DiskUse",
    "StatusReport",
    "cap_facts",
    "disk_use",
    "gather",
    "report_json",
]
