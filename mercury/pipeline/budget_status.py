"""The caps in force for one space and what is used, as /budget, the host API and
`mercury budget` show them.

One gathering step for the three, so they never disagree: the config's caps (the
running `BudgetBook`'s, when there is one), the space's own overrides, and the spend of
the current UTC day and month, live from the book's counters in `mercury run`, from the
`model_calls` table in a process that keeps none (the CLI).
"""

from __future__ import annotations

from datetime import datetime

from mercury.core.budget import Caps
from mercury.pipeline.budget import (
    BudgetBook,
    CapStatus,
    cap_statuses,
    read_overrides,
    spent_from_db,
)
from mercury.storage import Store


async def budget_statuses(
    store: Store,
    base: Caps,
    space_id: str,
    user_key: str | None,
    now: datetime,
    *,
    book: BudgetBook | None = None,
) -> list[CapStatus]:
    """Every cap kind of `space_id` with its value, source, spend and reset time.

    `user_key`: whose user_day spend to count (None: nobody's, shown as nothing used)."""
    overrides = await read_overrides(store, space_id)
    if book is not None:
        spent = book.spent(space_id, user_key)
    else:
        spent = await spent_from_db(store, space_id, user_key, now)
    return cap_statuses(base, overrides, spent, now)


__all__ = ["budget_statuses"]
