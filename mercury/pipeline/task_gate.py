"""Whether a due task may run: checked like a message of the user who created it.

The lookups (the space's pause, the creator's role and mute, the spending book, the rate
ledger) are done here; the decision and its order are core.tasks.admit's (pure). Used by
the scheduler for due tasks and by run-now (the dashboard, `mercury tasks run`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING

from mercury.config import Config
from mercury.core.budget import BudgetVerdict, Scope, Spent, check
from mercury.core.permissions import MEMBER_ROLE
from mercury.core.ratelimit import RateLedger
from mercury.core.tasks import Refusal, TaskFacts, admit, creator_of
from mercury.pipeline.standing import standing_in
from mercury.storage import Database, Store, TaskRecord, repo, utcnow
from mercury.storage.spend import task_run_spend

if TYPE_CHECKING:
    from mercury.pipeline.service import Pipeline

# Asked before a task starts: may this space / creator / task spend the task's usual cost?
# (space_id, creator's user key or None, task_id, estimate) -> the verdict.
BudgetProbe = Callable[[str, str | None, int, Spent | None], Awaitable[BudgetVerdict]]


async def task_cost_estimate(store: Store, task_id: int) -> Spent | None:
    """What a run of the task usually costs: the average of its recent runs' spend (dollars
    and tokens); None when it never called a model."""
    runs = await task_run_spend(store, task_id)
    if not runs:
        return None
    return Spent(
        usd=sum(usd for usd, _ in runs) / len(runs),
        tokens=round(sum(tokens for _, tokens in runs) / len(runs)),
    )


@dataclass(frozen=True, slots=True)
class TaskGate:
    """What a due task is checked against besides storage: the permission settings, the
    inbound handler's rate ledger, the spending caps. Without a ledger no rate limit
    applies; without a budget probe no cap (the executor still checks caps before a run)."""

    admins: frozenset[str] = frozenset()
    default_role: str = MEMBER_ROLE
    ledger: RateLedger | None = None
    budget: BudgetProbe | None = None

    @classmethod
    def for_pipeline(cls, config: Config, pipeline: Pipeline) -> TaskGate:
        """The running Mercury's: its inbound rate ledger and its spending book."""
        book = pipeline.budget

        async def probe(
            space_id: str, key: str | None, task_id: int, estimate: Spent | None
        ) -> BudgetVerdict:
            return await book.check(space_id, key, task_id=task_id, estimate=estimate)

        return cls(
            admins=frozenset(config.permissions.admins),
            default_role=config.permissions.default_role,
            ledger=pipeline.inbound.ledger,
            budget=probe,
        )

    @classmethod
    def from_config(cls, config: Config, db: Database) -> TaskGate:
        """For a process with no pipeline (the CLI): caps checked against the spending the
        database holds; no rate ledger (the running Mercury keeps it in memory)."""
        from mercury.pipeline.budget import read_overrides, spent_from_db

        base = config.budgets.caps()

        async def probe(
            space_id: str, key: str | None, task_id: int, estimate: Spent | None
        ) -> BudgetVerdict:
            now = utcnow()
            caps = base.with_overrides(await read_overrides(db, space_id))
            if key is None:
                caps = caps.with_overrides({Scope.USER_DAY: None})
            return check(caps, await spent_from_db(db, space_id, key, now), now, estimate=estimate)

        return cls(
            admins=frozenset(config.permissions.admins),
            default_role=config.permissions.default_role,
            budget=probe,
        )


@dataclass(frozen=True, slots=True)
class Admission:
    """A due task's check: why it may not run (None: it may), and whom its run acts for."""

    refusal: Refusal | None
    role: str
    user_key: str | None


async def admission(db: Database, gate: TaskGate, task: TaskRecord, now: datetime) -> Admission:
    """Check a due task like a message of its creator (the order is core.tasks.admit's)."""
    creator = creator_of(task.created_by)
    key = creator.user_key
    async with db.transaction() as s:
        space = await repo.get_space(s, task.space_id)
        standing = await standing_in(
            s, task.space_id, key, gate.admins, gate.default_role, operator=creator.operator
        )
        muted = False
        if key is not None:
            platform, _, user_id = key.partition(":")
            muted = await repo.is_muted(s, task.space_id, platform, user_id, now=now)
    facts = TaskFacts(
        paused=space is not None and space.is_paused(now),
        paused_until=space.pause_ends if space is not None else None,
        role=standing.role,
        permissions=standing.permissions,
        muted=muted,
    )
    # The cheap checks first; the caps and the rate limit only for a task that passes them.
    refusal = admit(facts, now)
    if refusal is None and gate.budget is not None:
        estimate = await task_cost_estimate(db, task.id)
        verdict = await gate.budget(task.space_id, key, task.id, estimate)
        facts = replace(facts, budget=verdict, estimate=estimate)
        refusal = admit(facts, now)
    if refusal is None and gate.ledger is not None and key is not None:
        facts = replace(facts, rate=gate.ledger.check(task.space_id, key, standing.role, now))
        refusal = admit(facts, now)
    return Admission(refusal, standing.role, key)


__all__ = ["Admission", "BudgetProbe", "TaskGate", "admission", "task_cost_estimate"]
