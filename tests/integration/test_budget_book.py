"""The spending counts behind the caps, on both databases, with a controllable clock.

`BudgetBook` counts each metered model call at once and stores it (model_calls); a new
book - Mercury restarted - reads the stored calls back, so a cap survives restarts.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from mercury.api.usage import MeteredCall
from mercury.config import Config
from mercury.core.budget import Cap, Scope, Spent
from mercury.pipeline.budget import (
    BudgetBook,
    cap_statuses,
    read_overrides,
    spent_from_db,
    write_override,
)
from mercury.storage import Database, get_or_create_space
from mercury.storage.spend import spend_by_space, task_run_spend
from tests.integration.test_storage import db, db_url, postgres_server_url

__all__ = ["db", "db_url", "postgres_server_url"]  # fixtures shared with test_storage.py

T0 = datetime(2026, 12, 31, 23, 50, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def config(**budgets: object) -> Config:
    return Config.model_validate({"budgets": budgets})


def call(
    space: str,
    tokens: int,
    usd: float | None,
    *,
    user: str | None = None,
    run: str = "run-1",
    task: int | None = None,
) -> MeteredCall:
    return MeteredCall(
        run_id=run,
        space_id=space,
        provider="anthropic",
        model="claude-test",
        input_tokens=tokens // 2,
        output_tokens=tokens - tokens // 2,
        cost_usd=usd,
        status=200,
        user_key=user,
        task_id=task,
    )


async def spend(book: BudgetBook, *calls: MeteredCall) -> None:
    for c in calls:
        book.count(c)
    await book.drain()


async def test_spend_is_counted_at_once_and_survives_a_restart(db: Database) -> None:
    await get_or_create_space(db, "a")
    await get_or_create_space(db, "b")
    clock = Clock(T0)
    cfg = config(space_day="$1", instance_day="$3")
    book = BudgetBook(cfg, db, clock=clock)
    await book.load()
    assert (await book.check("a", "slack:U1")).allowed

    book.count(call("a", 100, 0.6, user="slack:U1"))
    book.count(call("a", 100, 0.5, user="slack:U2"))
    # Counted before the stores finished: the next check already refuses.
    verdict = await book.check("a", "slack:U1")
    assert (verdict.allowed, verdict.scope) == (False, Scope.SPACE_DAY)
    assert verdict.spent == Spent(1.1, 200)
    await book.drain()
    assert (await book.check("b")).allowed

    restarted = BudgetBook(cfg, db, clock=clock)
    await restarted.load()
    assert restarted.spent("a", "slack:U1")[Scope.SPACE_DAY].usd == 1.1
    assert restarted.spent("a", "slack:U1")[Scope.USER_DAY] == Spent(0.6, 100)
    assert restarted.spent("b")[Scope.INSTANCE_DAY].usd == 1.1
    assert not (await restarted.check("a")).allowed
    # The CLI, which keeps no counters, reads the same from the database.
    assert (await spent_from_db(db, "a", "slack:U2", clock()))[Scope.USER_DAY] == Spent(0.5, 100)


async def test_a_new_utc_day_starts_at_zero_but_the_month_goes_on(db: Database) -> None:
    await get_or_create_space(db, "a")
    clock = Clock(T0)
    cfg = config(space_day="1000 tokens", space_month="1500 tokens")
    book = BudgetBook(cfg, db, clock=clock)
    await book.load()
    await spend(book, call("a", 1000, None))
    assert (await book.check("a")).scope is Scope.SPACE_DAY

    clock.now = T0 + timedelta(minutes=20)  # 00:10 on the 1st of January
    assert (await book.check("a")).allowed  # the day and the month are new
    assert book.spent("a")[Scope.SPACE_MONTH] == Spent()

    clock.now = T0 - timedelta(days=10)  # earlier in December: the same month
    again = BudgetBook(cfg, db, clock=clock)
    await again.load()
    assert again.spent("a")[Scope.SPACE_MONTH].tokens == 1000
    await spend(again, call("a", 600, None))
    assert (await again.check("a")).scope is Scope.SPACE_MONTH


async def test_users_and_task_runs_have_caps_of_their_own(db: Database) -> None:
    await get_or_create_space(db, "a")
    book = BudgetBook(config(user_day="$1", task_run="$0.50"), db, clock=Clock(T0))
    await book.load()
    await spend(book, call("a", 10, 1.2, user="telegram:7"))
    assert (await book.check("a", "telegram:7")).scope is Scope.USER_DAY
    assert (await book.check("a", "telegram:8")).allowed
    assert (await book.check("a")).allowed  # no user: the user cap does not apply

    book.begin_run("task-run-1")
    await spend(book, call("a", 10, 0.3, run="task-run-1", task=5))
    assert (await book.check("a", task_id=5, run_id="task-run-1")).allowed
    await spend(book, call("a", 10, 0.3, run="task-run-1", task=5))
    verdict = await book.check("a", task_id=5, run_id="task-run-1")
    assert verdict.scope is Scope.TASK_RUN
    assert book.end_run("task-run-1") is None  # no call was refused
    # The next run of the task starts afresh; an estimate above the cap stops it.
    book.begin_run("task-run-2")
    assert (await book.check("a", task_id=5, run_id="task-run-2")).allowed
    over = await book.check("a", task_id=5, estimate=Spent(0.6, 20))
    assert over.scope is Scope.TASK_RUN
    assert [round(usd, 2) for usd, _ in await task_run_spend(db, 5)] == [0.6]


async def test_a_space_sets_its_own_caps_and_can_go_back_to_the_config(db: Database) -> None:
    await get_or_create_space(db, "a")
    clock = Clock(T0)
    book = BudgetBook(config(space_day="$5", instance_day="$50"), db, clock=clock)
    await book.load()
    await spend(book, call("a", 10, 2.0))
    assert (await book.check("a")).allowed

    await write_override(db, "a", Scope.SPACE_DAY, Cap(usd=1.5))
    book.forget_overrides("a")
    assert (await book.check("a")).scope is Scope.SPACE_DAY
    statuses = {
        s.scope: s
        for s in cap_statuses(book.base, await read_overrides(db, "a"), book.spent("a"), clock())
    }
    assert statuses[Scope.SPACE_DAY].source == "space"
    assert statuses[Scope.SPACE_DAY].cap == Cap(usd=1.5)
    assert statuses[Scope.INSTANCE_DAY].source == "config"

    await write_override(db, "a", Scope.SPACE_DAY, None)  # explicitly no cap
    book.forget_overrides("a")
    assert (await book.check("a")).allowed
    await write_override(db, "a", Scope.SPACE_DAY, None, reset=True)  # the config's again
    book.forget_overrides("a")
    assert await read_overrides(db, "a") == {}
    assert (await book.caps_for("a")).space_day == Cap(usd=5)


async def test_admins_are_warned_once_per_cap_and_day_even_across_restarts(db: Database) -> None:
    await get_or_create_space(db, "a")
    clock = Clock(T0)
    cfg = config(space_day="$1", user_day="$1")
    book = BudgetBook(cfg, db, clock=clock)
    await book.load()
    await spend(book, call("a", 10, 0.5, user="web:admin"))
    assert await book.warnings("a", "web:admin") == []
    await spend(book, call("a", 10, 0.35, user="web:admin"))
    texts = await book.warnings("a", "web:admin", who="Ada")
    assert len(texts) == 2
    assert "this space's daily spending cap" in texts[0]
    assert "the daily spending cap of Ada" in texts[1]
    assert await book.warnings("a", "web:admin") == []

    restarted = BudgetBook(cfg, db, clock=clock)
    await restarted.load()
    assert await restarted.warnings("a", "web:admin") == []
    clock.now = T0 + timedelta(days=1)  # a new day: a new warning when it is due again
    await spend(restarted, call("a", 10, 0.9, user="web:admin"))
    assert len(await restarted.warnings("a", "web:admin")) == 2


async def test_old_calls_are_pruned_at_start(db: Database) -> None:
    await get_or_create_space(db, "a")
    clock = Clock(T0 - timedelta(days=90))
    book = BudgetBook(config(), db, clock=clock)
    await spend(book, call("a", 10, 1.0))
    clock.now = T0
    fresh = BudgetBook(config(), db, clock=clock)
    await fresh.load()
    assert await spend_by_space(db, T0 - timedelta(days=365)) == []
