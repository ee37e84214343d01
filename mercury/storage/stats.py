"""Read-only aggregates for the dashboard and /metrics: counted by the database, bounded.

Why its own module: the Overview, Spaces, Usage pages and the Prometheus scrape all ask
"how many, how much, when last" over runs, jobs, usage and messages. Each answer here is
one SQL aggregate (GROUP BY, COUNT, SUM, MAX) whose result has at most one row per hour,
day, reason or space, so a page never loads a table into Python and stays fast with
10,000 runs. Time buckets are computed from the epoch in SQL (`_epoch_bucket`), the one
expression that differs between SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Integer, case, cast, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from mercury.storage.models import Job, JobStatus, Message, Run, RunReason, Space, Usage, utcnow
from mercury.storage.session import Store, aggregate_time, tx

# Run-duration histogram bounds in seconds (Prometheus `le`); +Inf is added by the reader.
DURATION_BUCKETS_S: tuple[float, ...] = (1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
MAX_HOURS = 24 * 31  # runs_per_hour answers at most a month of hours
MAX_DAYS = 366


@dataclass(frozen=True, slots=True)
class HourCount:
    """Runs that started in one UTC hour, and how many of them did not end ok."""

    hour: datetime
    runs: int
    failed: int


@dataclass(frozen=True, slots=True)
class UsageTotals:
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    runs: int = 0

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True, slots=True)
class SpaceUsage:
    """A space's usage over a span of days, all models together."""

    space_id: str
    totals: UsageTotals


@dataclass(frozen=True, slots=True)
class SpaceDayUsage:
    """A space's usage on one UTC day, all models together (a chart point, a CSV row)."""

    space_id: str
    day: date
    totals: UsageTotals


@dataclass(frozen=True, slots=True)
class TodayUsage:
    """Tokens and cost of the current UTC day: the total, and the top spaces."""

    day: date
    total: UsageTotals
    spaces: list[SpaceUsage]


@dataclass(frozen=True, slots=True)
class ReasonSummary:
    """Runs that ended for one reason: how many, and their summed duration."""

    reason: RunReason
    count: int
    duration_s: float


@dataclass(frozen=True, slots=True)
class RunSummary:
    """Every stored run (or those since a time) by reason, plus a duration histogram.

    `buckets` pairs each bound of DURATION_BUCKETS_S with how many timed runs took at
    most that long (cumulative, as Prometheus wants); `timed` counts runs with a
    duration, `duration_s` sums them.
    """

    by_reason: list[ReasonSummary]
    buckets: list[tuple[float, int]]
    timed: int
    duration_s: float


# --------------------------------------------------------------------------- helpers


def _dialect(session: AsyncSession) -> str:
    return session.get_bind().dialect.name


def _epoch_bucket(session: AsyncSession, column: Any, seconds: int) -> ColumnElement[Any]:
    """The integer `floor(epoch(column) / seconds)`: an hour or day bucket, in SQL."""
    if _dialect(session) == "postgresql":
        return cast(func.floor(func.extract("epoch", column) / seconds), Integer)
    # SQLite keeps naive UTC text; strftime('%s') reads it as UTC.
    return cast(func.strftime("%s", column), Integer) // seconds


def _totals(row: Any) -> UsageTotals:
    return UsageTotals(
        input_tokens=int(row.input_tokens or 0),
        output_tokens=int(row.output_tokens or 0),
        cost_usd=float(row.cost_usd or 0.0),
        runs=int(row.runs or 0),
    )


_USAGE_SUMS = (
    func.sum(Usage.input_tokens).label("input_tokens"),
    func.sum(Usage.output_tokens).label("output_tokens"),
    func.sum(Usage.cost_usd).label("cost_usd"),
    func.sum(Usage.runs).label("runs"),
)


def _day_range(since: date | None, until: date | None) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    if since is not None:
        where.append(Usage.day >= since)
    if until is not None:
        where.append(Usage.day <= until)
    return where


# --------------------------------------------------------------------------- runs


async def runs_per_hour(
    store: Store, *, hours: int = 24, now: datetime | None = None
) -> list[HourCount]:
    """One entry per UTC hour of the last `hours` (the current hour last), zeros included."""
    hours = max(1, min(hours, MAX_HOURS))
    now = (now or utcnow()).astimezone(UTC)
    current = int(now.timestamp()) // 3600
    first = current - hours + 1
    since = datetime.fromtimestamp(first * 3600, UTC)
    async with tx(store) as s:
        bucket = _epoch_bucket(s, Run.started_at, 3600).label("bucket")
        failed = func.sum(case((Run.reason != RunReason.OK, 1), else_=0)).label("failed")
        q = (
            select(bucket, func.count().label("runs"), failed)
            .where(Run.started_at >= since)
            .group_by(bucket)
        )
        found = {int(r.bucket): (int(r.runs), int(r.failed or 0)) for r in await s.execute(q)}
    return [
        HourCount(datetime.fromtimestamp(h * 3600, UTC), *found.get(h, (0, 0)))
        for h in range(first, current + 1)
    ]


async def failures_by_reason(
    store: Store, *, since: datetime, space_id: str | None = None
) -> dict[RunReason, int]:
    """How many runs started since `since` ended other than ok, per reason (most first)."""
    q = select(Run.reason, func.count().label("n")).where(
        Run.started_at >= since, Run.reason != RunReason.OK
    )
    if space_id is not None:
        q = q.where(Run.space_id == space_id)
    async with tx(store) as s:
        rows = (await s.execute(q.group_by(Run.reason))).all()
    return {RunReason(r.reason): int(r.n) for r in sorted(rows, key=lambda r: (-r.n, r.reason))}


async def run_summary(store: Store, *, since: datetime | None = None) -> RunSummary:
    """Runs by reason with summed durations, and the cumulative duration histogram."""
    duration_s = Run.duration_ms / 1000.0
    bucket_cols = [
        func.sum(case((Run.duration_ms <= int(bound * 1000), 1), else_=0)).label(f"le{i}")
        for i, bound in enumerate(DURATION_BUCKETS_S)
    ]
    where = [] if since is None else [Run.started_at >= since]
    by_reason_q = select(
        Run.reason, func.count().label("n"), func.sum(duration_s).label("secs")
    ).where(*where)
    histogram_q = select(
        func.count(Run.duration_ms).label("timed"),
        func.sum(duration_s).label("secs"),
        *bucket_cols,
    ).where(Run.duration_ms.is_not(None), *where)
    async with tx(store) as s:
        reasons = (await s.execute(by_reason_q.group_by(Run.reason))).all()
        hist = (await s.execute(histogram_q)).one()
    return RunSummary(
        by_reason=[
            ReasonSummary(RunReason(r.reason), int(r.n), float(r.secs or 0.0))
            for r in sorted(reasons, key=lambda r: r.reason)
        ],
        buckets=[
            (bound, int(getattr(hist, f"le{i}") or 0)) for i, bound in enumerate(DURATION_BUCKETS_S)
        ],
        timed=int(hist.timed or 0),
        duration_s=float(hist.secs or 0.0),
    )


# --------------------------------------------------------------------------- usage


async def usage_total(
    store: Store, *, since: date | None = None, until: date | None = None
) -> UsageTotals:
    """Tokens, cost and runs of every space over the days `since`..`until` (inclusive)."""
    async with tx(store) as s:
        row = (await s.execute(select(*_USAGE_SUMS).where(*_day_range(since, until)))).one()
    return _totals(row)


async def usage_by_space(
    store: Store,
    *,
    since: date | None = None,
    until: date | None = None,
    limit: int = 1000,
) -> list[SpaceUsage]:
    """Each space's totals over the days `since`..`until`, costliest first (then by id)."""
    q = (
        select(Usage.space_id, *_USAGE_SUMS)
        .where(*_day_range(since, until))
        .group_by(Usage.space_id)
        .order_by(func.sum(Usage.cost_usd).desc(), Usage.space_id)
        .limit(limit)
    )
    async with tx(store) as s:
        return [SpaceUsage(r.space_id, _totals(r)) for r in await s.execute(q)]


async def usage_today(store: Store, *, today: date | None = None, top: int = 10) -> TodayUsage:
    """The current UTC day's total and its `top` spaces by cost."""
    day = today or utcnow().date()
    return TodayUsage(
        day=day,
        total=await usage_total(store, since=day, until=day),
        spaces=await usage_by_space(store, since=day, until=day, limit=top),
    )


async def usage_per_space_per_day(
    store: Store,
    *,
    days: int = 30,
    today: date | None = None,
    space_ids: Collection[str] | None = None,
    limit: int = 20_000,
) -> list[SpaceDayUsage]:
    """Usage per space per UTC day over the last `days` days (today included), by day
    then space: the usage chart's points and the CSV's rows. Days without usage are absent.
    """
    days = max(1, min(days, MAX_DAYS))
    last = today or utcnow().date()
    first = last - timedelta(days=days - 1)
    q = select(Usage.space_id, Usage.day, *_USAGE_SUMS).where(*_day_range(first, last))
    if space_ids is not None:
        q = q.where(Usage.space_id.in_(list(space_ids)))
    q = q.group_by(Usage.space_id, Usage.day).order_by(Usage.day, Usage.space_id).limit(limit)
    async with tx(store) as s:
        return [SpaceDayUsage(r.space_id, r.day, _totals(r)) for r in await s.execute(q)]


# --------------------------------------------------------------------------- spaces


async def queue_depth(store: Store, *, limit: int = 1000) -> dict[str, int]:
    """Queued jobs per space (spaces with none are absent), deepest first."""
    n = func.count().label("n")
    q = (
        select(Job.space_id, n)
        .where(Job.status == JobStatus.QUEUED)
        .group_by(Job.space_id)
        .order_by(n.desc(), Job.space_id)
        .limit(limit)
    )
    async with tx(store) as s:
        return {r.space_id: int(r.n) for r in await s.execute(q)}


async def last_activity(
    store: Store, *, space_ids: Sequence[str] | None = None, limit: int = 1000
) -> dict[str, datetime | None]:
    """The latest message time of each space (None: no message yet).

    One correlated MAX per space, which the (space_id, created_at) index answers with a
    single lookup each, instead of grouping the whole messages table.
    """
    latest = (
        select(func.max(Message.created_at))
        .where(Message.space_id == Space.id)
        .correlate(Space)
        .scalar_subquery()
    )
    q = select(Space.id, latest.label("latest")).order_by(Space.id).limit(limit)
    if space_ids is not None:
        q = q.where(Space.id.in_(list(space_ids)))
    async with tx(store) as s:
        rows = (await s.execute(q)).all()
    return {r.id: aggregate_time(r.latest) for r in rows}


__all__ = [
    "DURATION_BUCKETS_S",
    "HourCount",
    "ReasonSummary",
    "RunSummary",
    "SpaceDayUsage",
    "SpaceUsage",
    "TodayUsage",
    "UsageTotals",
    "failures_by_reason",
    "last_activity",
    "queue_depth",
    "run_summary",
    "runs_per_hour",
    "usage_by_space",
    "usage_per_space_per_day",
    "usage_today",
    "usage_total",
]
