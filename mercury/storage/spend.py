"""Spend, one aggregate: every metered model call as it ended, and admins' cap warnings.

This is what spending caps count (pipeline/budget.py). A row is written for each call the
host's model proxy forwarded - streamed or not, failed or cut off - with who caused it:
the run's space, its user ("platform:user_id", None for a task) and its task. Sums are
taken by the database, for the current UTC day and month only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import delete, func, select

from mercury.storage.models import BudgetAlert, ModelCall, utcnow
from mercury.storage.session import Store, conflict_insert, rowcount, tx


@dataclass(frozen=True, slots=True)
class SpendSum:
    """Dollars (priced calls only) and tokens (all calls) of one group of calls."""

    space_id: str
    user_key: str | None
    usd: float
    tokens: int


async def add_model_call(
    store: Store,
    *,
    space_id: str,
    run_id: str,
    provider: str,
    model: str | None,
    input_tokens: int,
    output_tokens: int,
    cost_usd: float | None,
    status: int | None,
    incomplete: bool,
    user_key: str | None = None,
    task_id: int | None = None,
    at: datetime | None = None,
) -> None:
    """Store one metered call."""
    async with tx(store) as s:
        s.add(
            ModelCall(
                at=at or utcnow(),
                space_id=space_id,
                user_key=user_key,
                task_id=task_id,
                run_id=run_id,
                provider=provider,
                model=model,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                cost_usd=cost_usd,
                status=status,
                incomplete=incomplete,
            )
        )


def _sums(by_user: bool, since: datetime) -> object:
    cols = [ModelCall.space_id, ModelCall.user_key] if by_user else [ModelCall.space_id]
    return (
        select(
            *cols,
            func.coalesce(func.sum(ModelCall.cost_usd), 0.0),
            func.coalesce(func.sum(ModelCall.input_tokens + ModelCall.output_tokens), 0),
        )
        .where(ModelCall.at >= since)
        .group_by(*cols)
    )


async def spend_by_space(store: Store, since: datetime) -> list[SpendSum]:
    """Each space's spend from `since` on (user_key None: all its users together)."""
    async with tx(store) as s:
        rows = (await s.execute(_sums(False, since))).all()  # type: ignore[call-overload]
    return [SpendSum(space, None, float(usd), int(tokens)) for space, usd, tokens in rows]


async def spend_by_user(store: Store, since: datetime) -> list[SpendSum]:
    """Each (space, user)'s spend from `since` on; calls of tasks have user_key None."""
    async with tx(store) as s:
        rows = (await s.execute(_sums(True, since))).all()  # type: ignore[call-overload]
    return [SpendSum(space, user, float(usd), int(tokens)) for space, user, usd, tokens in rows]


async def task_run_spend(store: Store, task_id: int, *, runs: int = 5) -> list[tuple[float, int]]:
    """(dollars, tokens) of each of the task's last `runs` runs that called a model."""
    q = (
        select(
            ModelCall.run_id,
            func.coalesce(func.sum(ModelCall.cost_usd), 0.0),
            func.coalesce(func.sum(ModelCall.input_tokens + ModelCall.output_tokens), 0),
            func.max(ModelCall.at).label("last"),
        )
        .where(ModelCall.task_id == task_id)
        .group_by(ModelCall.run_id)
        .order_by(func.max(ModelCall.at).desc())
        .limit(runs)
    )
    async with tx(store) as s:
        rows = (await s.execute(q)).all()
    return [(float(usd), int(tokens)) for _, usd, tokens, _ in rows]


async def prune_model_calls(store: Store, before: datetime) -> int:
    """Delete calls older than `before` (the usage table keeps their sums); how many."""
    async with tx(store) as s:
        result = await s.execute(delete(ModelCall).where(ModelCall.at < before))
        return rowcount(result)


async def note_budget_alert(store: Store, scope: str, subject: str, period: date) -> bool:
    """Remember that the (scope, subject, period) warning was given; True the first time.

    Atomic (INSERT ... ON CONFLICT DO NOTHING), so two runs ending together warn once."""
    async with tx(store) as s:
        stmt = (
            conflict_insert(s, BudgetAlert)
            .values(scope=scope, subject=subject, period=period, created_at=utcnow())
            .on_conflict_do_nothing(index_elements=["scope", "subject", "period"])
        )
        result = await s.execute(stmt)
        return bool(rowcount(result))


__all__ = [
    "SpendSum",
    "add_model_call",
    "note_budget_alert",
    "prune_model_calls",
    "spend_by_space",
    "spend_by_user",
    "task_run_spend",
]
