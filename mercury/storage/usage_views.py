"""Read-only usage views the Usage page needs beyond storage/stats.py: the day totals of
every space together, and the names of a handful of spaces.

Why a module of its own: stats.py answers per space and per space-and-day; the usage chart
stacks its top spaces and draws everyone else as one "other" layer, which is the day's
total minus theirs — one GROUP BY day (at most one row per day) instead of every space's
rows. The chart's legend and the tables show space names, looked up for the listed ids
only, never the whole spaces table.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import date, timedelta

from sqlalchemy import func, select

from mercury.storage.models import Space, Usage, utcnow
from mercury.storage.session import Store, tx
from mercury.storage.stats import MAX_DAYS, UsageTotals

__all__ = ["DayUsage", "space_names", "usage_per_day"]

# More ids than this are looked up in chunks (an IN list stays a reasonable statement).
_NAME_CHUNK = 500


@dataclass(frozen=True, slots=True)
class DayUsage:
    """Every space's usage on one UTC day, all models together."""

    day: date
    totals: UsageTotals


async def usage_per_day(
    store: Store, *, days: int = 30, today: date | None = None
) -> list[DayUsage]:
    """Usage per UTC day over the last `days` days (today included), oldest first.

    Days without usage are absent; at most `days` rows (capped at a year and a day).
    """
    days = max(1, min(days, MAX_DAYS))
    last = today or utcnow().date()
    first = last - timedelta(days=days - 1)
    q = (
        select(
            Usage.day,
            func.sum(Usage.input_tokens).label("input_tokens"),
            func.sum(Usage.output_tokens).label("output_tokens"),
            func.sum(Usage.cost_usd).label("cost_usd"),
            func.sum(Usage.runs).label("runs"),
        )
        .where(Usage.day >= first, Usage.day <= last)
        .group_by(Usage.day)
        .order_by(Usage.day)
    )
    async with tx(store) as s:
        rows = (await s.execute(q)).all()
    return [
        DayUsage(
            r.day,
            UsageTotals(
                input_tokens=int(r.input_tokens or 0),
                output_tokens=int(r.output_tokens or 0),
                cost_usd=float(r.cost_usd or 0.0),
                runs=int(r.runs or 0),
            ),
        )
        for r in rows
    ]


async def space_names(store: Store, space_ids: Collection[str]) -> dict[str, str]:
    """The name of each listed space that exists (unknown ids are absent)."""
    ids = sorted(set(space_ids))
    names: dict[str, str] = {}
    async with tx(store) as s:
        for i in range(0, len(ids), _NAME_CHUNK):
            chunk = ids[i : i + _NAME_CHUNK]
            rows = await s.execute(select(Space.id, Space.name).where(Space.id.in_(chunk)))
            names.update({r.id: r.name for r in rows})
    return names
