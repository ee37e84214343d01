"""What needs an operator's attention, decided from plain facts: `mercury status`'s verdict.

Why pure: the status command gathers facts from the database and the disk (ops/status.py);
the rules that turn them into "fine" or a list of short lines are decided here, without
I/O and with `now` passed in, so each rule is tested on its own and a monitoring check
(exit code 1 when the list is not empty) means the same thing everywhere.

Whether Mercury runs at all is read from heartbeats: each process rewrites its row every
`interval_s` seconds (pipeline/heartbeat.py). A process that stopped cleanly says so; one
silent for `Thresholds.stale_beats` of its intervals (at least `min_stale_s`) has crashed,
hung or lost its database. Either way nothing answers messages, which needs attention
first; the other rules (adapters, overdue runs) only look at live processes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from mercury.core.timefmt import as_utc, format_clock, format_wait

# Run reasons that are no failure of the host: the user stopped the run, a cap refused it
# (the caps rule reports caps).
NOT_FAILURES = frozenset({"aborted", "budget"})


class Liveness(StrEnum):
    """Whether the configured instance runs, read from its processes' heartbeats."""

    RUNNING = "running"  # at least one process with a fresh heartbeat
    STOPPED = "stopped"  # its newest process stopped cleanly
    SILENT = "silent"  # its newest process stopped writing (crashed, hung, cut off)
    NEVER = "never"  # no heartbeat of this instance in this database


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Where "fine" ends; the defaults suit a small install (`mercury status` flags)."""

    stale_beats: float = 4.0  # heartbeat intervals of silence before "not running"
    min_stale_s: float = 60.0
    recent_error: timedelta = timedelta(minutes=15)  # an adapter error this recent counts
    queue_deep: int = 20  # queued jobs in one space
    failures: int = 3  # failed runs in the last hour (not counting NOT_FAILURES)
    overdue_factor: float = 1.5  # a run going past timeout * this (and a minute) is stuck
    disk_warn_factor: float = 2.0  # free disk under disk.min_free * this is "getting low"
    cap_share: float = 0.8  # a spending cap used to this share (core/budget.py WARN_AT)


@dataclass(frozen=True, slots=True)
class AdapterFacts:
    name: str
    connected: bool
    last_event_at: datetime | None = None
    last_error: str | None = None
    last_error_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ProcessFacts:
    id: str
    instance: str
    host: str
    pid: int
    interval_s: float
    started_at: datetime
    updated_at: datetime
    stopped_at: datetime | None = None
    adapters: tuple[AdapterFacts, ...] = ()


@dataclass(frozen=True, slots=True)
class RunningFacts:
    """A job in state running: its space, since when, and the process that claimed it."""

    space_id: str
    started_at: datetime | None
    owner: str | None = None


@dataclass(frozen=True, slots=True)
class CapFacts:
    """A spending cap and how much of it is used (share 1.0 = reached)."""

    name: str  # e.g. "budgets.instance_day" or "space_day of space abc"
    share: float
    used: str  # e.g. "$4.10 of $5.00"


@dataclass(frozen=True, slots=True)
class Facts:
    """Everything the rules look at; gathered by ops/status.py."""

    now: datetime
    instance: str
    processes: Sequence[ProcessFacts]  # of `instance`, any order
    run_timeout_s: float
    running: Sequence[RunningFacts] = ()
    queue: Mapping[str, int] = field(default_factory=dict)
    failures: Mapping[str, int] = field(default_factory=dict)  # last hour, by reason
    free_bytes: int | None = None  # None: could not be read
    min_free: int = 0
    caps: Sequence[CapFacts] = ()


@dataclass(frozen=True, slots=True)
class Concern:
    """One thing that needs attention: a stable `kind` for scripts, a short line for people."""

    kind: str
    text: str


def is_fresh(p: ProcessFacts, now: datetime, th: Thresholds = Thresholds()) -> bool:
    """Whether the process wrote its heartbeat recently enough to count as running."""
    if p.stopped_at is not None:
        return False
    limit = max(th.min_stale_s, p.interval_s * th.stale_beats)
    return (as_utc(now) - as_utc(p.updated_at)).total_seconds() <= limit


def outlived(p: ProcessFacts, newest: datetime, th: Thresholds = Thresholds()) -> bool:
    """Whether another process of the instance wrote `stale_beats` of p's intervals after p
    went quiet: p is dead even before `min_stale_s` passes (a crash, then a restart).
    Processes that run side by side never fall that far behind one another."""
    return (as_utc(newest) - as_utc(p.updated_at)).total_seconds() > p.interval_s * th.stale_beats


def liveness(
    processes: Sequence[ProcessFacts], now: datetime, th: Thresholds = Thresholds()
) -> tuple[Liveness, list[ProcessFacts]]:
    """The instance's state and its live processes (newest heartbeat first)."""
    ordered = sorted(processes, key=lambda p: as_utc(p.updated_at), reverse=True)
    newest = ordered[0].updated_at if ordered else now
    live = [p for p in ordered if is_fresh(p, now, th) and not outlived(p, newest, th)]
    if live:
        return Liveness.RUNNING, live
    if not ordered:
        return Liveness.NEVER, []
    return (Liveness.STOPPED if ordered[0].stopped_at is not None else Liveness.SILENT), []


def _ago(when: datetime, now: datetime) -> str:
    return f"{format_wait((as_utc(now) - as_utc(when)).total_seconds())} ago"


def _not_running(state: Liveness, facts: Facts) -> Concern:
    name = f"Mercury (instance {facts.instance})"
    if state is Liveness.NEVER:
        return Concern(
            "not_running",
            f"{name} has never written a heartbeat to this database: it is not running "
            "here, or it uses another database_url",
        )
    last = max(facts.processes, key=lambda p: as_utc(p.updated_at))
    where = f"pid {last.pid} on {last.host}"
    if state is Liveness.STOPPED and last.stopped_at is not None:
        return Concern(
            "not_running",
            f"{name} is not running: it stopped at {format_clock(last.stopped_at, facts.now)} "
            f"({where})",
        )
    return Concern(
        "not_running",
        f"{name} is not running or is stuck: no heartbeat for "
        f"{_ago(last.updated_at, facts.now).removesuffix(' ago')} ({where}, last at "
        f"{format_clock(last.updated_at, facts.now)})",
    )


def adapter_concerns(
    live: Sequence[ProcessFacts], now: datetime, th: Thresholds = Thresholds()
) -> list[Concern]:
    """Adapters of live processes that are disconnected or failed recently."""
    found: list[Concern] = []
    for p in live:
        for a in p.adapters:
            error = f": {a.last_error}" if a.last_error else ""
            if not a.connected:
                found.append(
                    Concern("adapter_disconnected", f"adapter {a.name} is not connected{error}")
                )
            elif (
                a.last_error_at is not None
                and as_utc(now) - as_utc(a.last_error_at) <= th.recent_error
            ):
                found.append(
                    Concern(
                        "adapter_error",
                        f"adapter {a.name} failed {_ago(a.last_error_at, now)}{error}",
                    )
                )
    return found


def overdue_runs(facts: Facts, th: Thresholds = Thresholds()) -> list[Concern]:
    """Runs going far past container.timeout: the runner should have killed them."""
    limit = facts.run_timeout_s * th.overdue_factor + 60
    found = []
    for r in facts.running:
        if r.started_at is None:
            continue
        age = (as_utc(facts.now) - as_utc(r.started_at)).total_seconds()
        if age > limit:
            found.append(
                Concern(
                    "run_overdue",
                    f"a run in space {r.space_id} has been going for {format_wait(age)}, far "
                    f"past container.timeout ({format_wait(facts.run_timeout_s)})",
                )
            )
    return found


def queue_concerns(queue: Mapping[str, int], th: Thresholds = Thresholds()) -> list[Concern]:
    return [
        Concern("queue_deep", f"{n} messages wait in space {space} (at least {th.queue_deep})")
        for space, n in sorted(queue.items(), key=lambda kv: (-kv[1], kv[0]))
        if n >= th.queue_deep
    ]


def failure_concerns(failures: Mapping[str, int], th: Thresholds = Thresholds()) -> list[Concern]:
    counted = {r: n for r, n in failures.items() if r not in NOT_FAILURES and n > 0}
    total = sum(counted.values())
    if total < th.failures:
        return []
    reasons = ", ".join(f"{n} {r}" for r, n in sorted(counted.items(), key=lambda kv: -kv[1]))
    return [Concern("failures", f"{total} runs failed in the last hour ({reasons})")]


def disk_concerns(free: int | None, min_free: int, th: Thresholds = Thresholds()) -> list[Concern]:
    if free is None:
        return [Concern("disk_unknown", "free disk of data_dir could not be read")]
    gib = free / 1024**3
    floor = min_free / 1024**3
    if free < min_free:
        return [
            Concern(
                "disk_low",
                f"only {gib:.1f} GiB free in data_dir, under disk.min_free ({floor:.1f} GiB): "
                "no run starts until there is more",
            )
        ]
    if free < min_free * th.disk_warn_factor:
        return [
            Concern(
                "disk_low",
                f"only {gib:.1f} GiB free in data_dir, close to disk.min_free ({floor:.1f} "
                "GiB), where runs stop starting",
            )
        ]
    return []


def cap_concerns(caps: Sequence[CapFacts], th: Thresholds = Thresholds()) -> list[Concern]:
    found = []
    for c in caps:
        if c.share >= 1.0:
            found.append(
                Concern("cap_reached", f"{c.name} is reached ({c.used}): runs are refused")
            )
        elif c.share >= th.cap_share:
            found.append(Concern("cap_near", f"{c.name} is {c.share:.0%} used ({c.used})"))
    return found


def attention(facts: Facts, th: Thresholds = Thresholds()) -> tuple[Liveness, list[Concern]]:
    """The instance's liveness and every concern, the most pressing first (empty: fine)."""
    state, live = liveness(facts.processes, facts.now, th)
    found: list[Concern] = []
    if state is not Liveness.RUNNING:
        found.append(_not_running(state, facts))
    found += adapter_concerns(live, facts.now, th)
    if state is Liveness.RUNNING:
        found += overdue_runs(facts, th)
    found += disk_concerns(facts.free_bytes, facts.min_free, th)
    found += failure_concerns(facts.failures, th)
    found += queue_concerns(facts.queue, th)
    found += cap_concerns(facts.caps, th)
    return state, found


__all__ = [
    "NOT_FAILURES",
    "AdapterFacts",
    "CapFacts",
    "Concern",
    "Facts",
    "Liveness",
    "ProcessFacts",
    "RunningFacts",
    "Thresholds",
    "adapter_concerns",
    "attention",
    "cap_concerns",
    "disk_concerns",
    "failure_concerns",
    "is_fresh",
    "liveness",
    "outlived",
    "overdue_runs",
    "queue_concerns",
]
