"""Usage, one aggregate: tokens, cost and run count per space, UTC day and model.

Counters are added to in SQL (INSERT ... ON CONFLICT DO UPDATE SET n = n + excluded.n),
never read-modified-written, so runs finishing at the same time cannot lose an update.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from sqlalchemy import select

from mercury.storage.models import Usage, utcnow
from mercury.storage.session import Store, conflict_insert, to_record, tx


@dataclass(frozen=True, slots=True)
class UsageRecord:
    space_id: str
    day: date
    model: str
    input_tokens: int
    output_tokens: int
    cost_usd: float
    runs: int


async def add_usage(
    store: Store,
    space_id: str,
    *,
    model: str,
    input_tokens: int = 0,
    output_tokens: int = 0,
    cost_usd: float = 0.0,
    runs: int = 1,
    day: date | None = None,
) -> None:
    """Add to the (space, UTC day, model) counters, creating the row on first use."""
    day = day or utcnow().date()
    async with tx(store) as s:
        stmt = conflict_insert(s, Usage).values(
            space_id=space_id,
            day=day,
            model=model,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost_usd=cost_usd,
            runs=runs,
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["space_id", "day", "model"],
            set_={
                "input_tokens": Usage.input_tokens + stmt.excluded.input_tokens,
                "output_tokens": Usage.output_tokens + stmt.excluded.output_tokens,
                "cost_usd": Usage.cost_usd + stmt.excluded.cost_usd,
                "runs": Usage.runs + stmt.excluded.runs,
            },
        )
        await s.execute(stmt)


async def usage_for_space(
    store: Store, space_id: str, *, since: date | None = None
) -> list[UsageRecord]:
    """Usage rows of a space by day then model, from `since` (inclusive) on."""
    q = select(Usage).where(Usage.space_id == space_id)
    if since is not None:
        q = q.where(Usage.day >= since)
    async with tx(store) as s:
        rows = await s.scalars(q.order_by(Usage.day, Usage.model))
        return [to_record(UsageRecord, u) for u in rows]


__all__ = ["UsageRecord", "add_usage", "usage_for_space"]
