"""Spending caps, kept: what each space, user, task and the instance spent, and the checks.

The decisions are `core.budget`'s (pure); this module keeps the counts and does the I/O.

- Every metered model call (`UsageMeter` hook `count`) is added to in-memory counters at
  once and stored in the `model_calls` table; `load` seeds the counters from that table at
  start, so caps survive restarts.
- The model proxy asks `refuse_call` before forwarding each call (`RunHost`'s call guard):
  a run that streams, retries or fails over to another leg makes a new call each time, and
  each is refused once a cap is reached. The run then ends with reason "budget".
- The router asks `check` before accepting a message; the executor before starting a run.
- A space's admin may set its own space_*, user_day and task_run caps: stored as the
  space preference `_budget` (JSON {scope: cap text or null}; a key left out follows the
  config). Overrides are cached for `OVERRIDE_TTL_S`, so one set by `mercury budget` in
  another process applies within seconds.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from mercury.api.tokens import RunGrant
from mercury.api.usage import MeteredCall
from mercury.config import Config
from mercury.core.budget import (
    ALLOWED,
    SCOPES,
    SPACE_SCOPES,
    BudgetVerdict,
    Cap,
    CapError,
    Caps,
    Scope,
    Spent,
    budget_notice,
    check,
    crossed_warning,
    parse_cap,
    period_start,
    resets_at,
    warning_notice,
)
from mercury.logging import get_logger
from mercury.storage import Database, Store, repo, utcnow
from mercury.storage.spend import (
    add_model_call,
    note_budget_alert,
    prune_model_calls,
    spend_by_space,
    spend_by_user,
)

log = get_logger("mercury.budget")

BUDGET_PREF = "_budget"
OVERRIDE_TTL_S = 2.0
# model_calls rows older than this are pruned at start: the longest cap period is a month.
KEEP_CALLS = timedelta(days=62)


# --------------------------------------------------------------------------- overrides


def overrides_from_prefs(prefs: Mapping[str, str]) -> dict[Scope, Cap | None]:
    """A space's own caps from its preferences; an unreadable entry is logged and ignored."""
    raw = prefs.get(BUDGET_PREF)
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        log.warning("space budget preference is not JSON; ignored")
        return {}
    out: dict[Scope, Cap | None] = {}
    if not isinstance(data, dict):
        return out
    for key, value in data.items():
        try:
            scope = Scope(key)
            if scope in SPACE_SCOPES:
                out[scope] = parse_cap(value)
        except (ValueError, CapError):
            log.warning("space budget preference entry ignored", key=str(key)[:40])
    return out


async def read_overrides(store: Store, space_id: str) -> dict[Scope, Cap | None]:
    """The space's own caps (scope -> cap, None = explicitly no cap)."""
    return overrides_from_prefs(await repo.get_preferences(store, space_id))


async def write_override(
    store: Store, space_id: str, scope: Scope, cap: Cap | None, *, reset: bool = False
) -> dict[Scope, Cap | None]:
    """Set the space's own cap for `scope` (None = no cap), or with `reset` follow the
    config again. Returns the space's overrides after the change."""
    if scope not in SPACE_SCOPES:
        raise CapError(f"{scope.value} is set in mercury.yaml only, not per space")
    current = await read_overrides(store, space_id)
    if reset:
        current.pop(scope, None)
    else:
        current[scope] = cap
    if current:
        data = {s.value: (c.to_text() if c is not None else None) for s, c in current.items()}
        await repo.set_preference(store, space_id, BUDGET_PREF, json.dumps(data, sort_keys=True))
    else:
        await repo.delete_preference(store, space_id, BUDGET_PREF)
    return current


# --------------------------------------------------------------------------- status


@dataclass(frozen=True, slots=True)
class CapStatus:
    """One cap as /budget, the host API and `mercury budget` show it."""

    scope: Scope
    cap: Cap | None
    spent: Spent
    resets_at: datetime | None
    source: str  # "config" or "space" (the space's own value)


def cap_statuses(
    base: Caps,
    overrides: Mapping[Scope, Cap | None],
    spent: Mapping[Scope, Spent],
    now: datetime,
) -> list[CapStatus]:
    """Every cap kind, with the value in force, what was spent and where it comes from."""
    caps = base.with_overrides(overrides)
    return [
        CapStatus(
            scope=s,
            cap=caps.get(s),
            spent=spent.get(s, Spent()),
            resets_at=resets_at(s, now),
            source="space" if s in overrides else "config",
        )
        for s in SCOPES
    ]


async def spent_from_db(
    store: Store, space_id: str, user_key: str | None, now: datetime
) -> dict[Scope, Spent]:
    """What was spent in the current periods, read from the database (for a process, such as
    the CLI, that keeps no counters)."""
    day = period_start(Scope.SPACE_DAY, now)
    month = period_start(Scope.SPACE_MONTH, now)
    assert day is not None and month is not None
    by_space_day = await spend_by_space(store, day)
    by_space_month = await spend_by_space(store, month)
    out = {
        Scope.INSTANCE_DAY: sum((Spent(r.usd, r.tokens) for r in by_space_day), Spent()),
        Scope.SPACE_DAY: next(
            (Spent(r.usd, r.tokens) for r in by_space_day if r.space_id == space_id), Spent()
        ),
        Scope.SPACE_MONTH: next(
            (Spent(r.usd, r.tokens) for r in by_space_month if r.space_id == space_id), Spent()
        ),
    }
    if user_key is not None:
        out[Scope.USER_DAY] = next(
            (
                Spent(r.usd, r.tokens)
                for r in await spend_by_user(store, day)
                if r.space_id == space_id and r.user_key == user_key
            ),
            Spent(),
        )
    return out


# --------------------------------------------------------------------------- the book


class BudgetBook:
    """The running counts and the checks every spending path asks (one per process)."""

    def __init__(
        self, config: Config, db: Database, *, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self.db = db
        self.base = config.budgets.caps()
        self.clock = clock
        self._day = period_start(Scope.SPACE_DAY, clock())
        self._month = period_start(Scope.SPACE_MONTH, clock())
        self._instance_day = Spent()
        self._space_day: dict[str, Spent] = {}
        self._space_month: dict[str, Spent] = {}
        self._user_day: dict[tuple[str, str], Spent] = {}
        self._runs: dict[str, Spent] = {}  # live runs' spend, for a task's per-run cap
        self._stopped: dict[str, BudgetVerdict] = {}  # run_id -> the cap that refused it
        self._overrides: dict[str, tuple[float, dict[Scope, Cap | None]]] = {}
        self._writes: set[asyncio.Task[None]] = set()
        self._during: list[MeteredCall] | None = None  # calls counted while resync reads

    @property
    def enabled(self) -> bool:
        """Whether any cap is configured (a space may still set its own)."""
        return any(self.base.get(s) is not None for s in SCOPES)

    async def load(self) -> None:
        """Seed the counters from the stored calls of this UTC day and month."""
        now = self.clock()
        self._roll(now)
        assert self._day is not None and self._month is not None
        pruned = await prune_model_calls(self.db, now - KEEP_CALLS)
        await self._read_counters()
        log.info(
            "spending counters loaded",
            instance_day_usd=round(self._instance_day.usd, 4),
            instance_day_tokens=self._instance_day.tokens,
            pruned_calls=pruned,
        )

    async def _read_counters(self) -> None:
        """Set the counters to what the stored calls of this day and month add up to."""
        assert self._day is not None and self._month is not None
        space_month: dict[str, Spent] = {}
        space_day: dict[str, Spent] = {}
        user_day: dict[tuple[str, str], Spent] = {}
        instance_day = Spent()
        for row in await spend_by_space(self.db, self._month):
            space_month[row.space_id] = Spent(row.usd, row.tokens)
        for row in await spend_by_user(self.db, self._day):
            spent = Spent(row.usd, row.tokens)
            space_day[row.space_id] = space_day.get(row.space_id, Spent()) + spent
            instance_day += spent
            if row.user_key is not None:
                user_day[(row.space_id, row.user_key)] = spent
        self._space_month, self._space_day = space_month, space_day
        self._user_day, self._instance_day = user_day, instance_day

    async def resync(self) -> None:
        """Count what other processes spent (a gateway and workers share the caps,
        docs/scale-out.md): wait for this process's own writes, then re-read the stored
        calls. A call counted here while the read runs is counted again on top, so a cap
        errs on the safe side until the next resync."""
        await self.drain()
        self._roll(self.clock())
        during: list[MeteredCall] = []
        self._during = during
        try:
            await self._read_counters()
        finally:
            self._during = None
        for call in during:
            self._add(call, run=False)  # a live run's own count was never re-read

    def _roll(self, now: datetime) -> None:
        """Start new periods at UTC midnight and on the 1st: their counters start at zero."""
        day = period_start(Scope.SPACE_DAY, now)
        if day != self._day:
            self._day = day
            self._instance_day = Spent()
            self._space_day.clear()
            self._user_day.clear()
        month = period_start(Scope.SPACE_MONTH, now)
        if month != self._month:
            self._month = month
            self._space_month.clear()

    # ------------------------------------------------------------------ counting

    def count(self, call: MeteredCall) -> asyncio.Future[None] | None:
        """The usage meter's hook: count `call` now, store it in the background.

        Counted synchronously, so the next call's check already sees it; the returned
        task is the database write (the proxy's close_run waits for it)."""
        now = self.clock()
        self._roll(now)
        self._add(call)
        if self._during is not None:
            self._during.append(call)
        task = asyncio.get_running_loop().create_task(self._store(call, now))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)
        return task

    def _add(self, call: MeteredCall, *, run: bool = True) -> None:
        spent = Spent(call.cost_usd or 0.0, call.input_tokens + call.output_tokens)
        space = call.space_id
        self._instance_day += spent
        self._space_day[space] = self._space_day.get(space, Spent()) + spent
        self._space_month[space] = self._space_month.get(space, Spent()) + spent
        if call.user_key is not None:
            key = (space, call.user_key)
            self._user_day[key] = self._user_day.get(key, Spent()) + spent
        if run and call.run_id in self._runs:
            self._runs[call.run_id] += spent

    async def _store(self, call: MeteredCall, now: datetime) -> None:
        try:
            await add_model_call(
                self.db,
                space_id=call.space_id,
                run_id=call.run_id,
                provider=call.provider,
                model=call.model,
                input_tokens=call.input_tokens,
                output_tokens=call.output_tokens,
                cost_usd=call.cost_usd,
                status=call.status,
                incomplete=call.incomplete,
                user_key=call.user_key,
                task_id=call.task_id,
                at=now,
            )
        except Exception as exc:
            # Counted in memory still; only a restart before the run's record loses it.
            log.error("a model call could not be stored for spending caps", error=str(exc))

    async def drain(self) -> None:
        """Wait for the stores of calls counted so far (before shutdown)."""
        while self._writes:
            await asyncio.gather(*list(self._writes), return_exceptions=True)

    # ------------------------------------------------------------------ checking

    async def caps_for(self, space_id: str, prefs: Mapping[str, str] | None = None) -> Caps:
        """The caps in force for a space: the config's, with the space's own in place.

        `prefs`: the space's preferences when the caller just read them (no extra read)."""
        cached = self._overrides.get(space_id)
        if prefs is not None:
            cached = (time.monotonic(), overrides_from_prefs(prefs))
            self._overrides[space_id] = cached
        elif cached is None or time.monotonic() - cached[0] > OVERRIDE_TTL_S:
            cached = (time.monotonic(), await read_overrides(self.db, space_id))
            self._overrides[space_id] = cached
        return self.base.with_overrides(cached[1])

    def forget_overrides(self, space_id: str) -> None:
        """Read the space's own caps afresh at the next check (after they were changed)."""
        self._overrides.pop(space_id, None)

    def spent(
        self, space_id: str, user_key: str | None = None, run_id: str | None = None
    ) -> dict[Scope, Spent]:
        """What was spent in the current periods (and by the run, when given)."""
        self._roll(self.clock())
        out = {
            Scope.INSTANCE_DAY: self._instance_day,
            Scope.SPACE_DAY: self._space_day.get(space_id, Spent()),
            Scope.SPACE_MONTH: self._space_month.get(space_id, Spent()),
        }
        if user_key is not None:
            out[Scope.USER_DAY] = self._user_day.get((space_id, user_key), Spent())
        if run_id is not None:
            out[Scope.TASK_RUN] = self._runs.get(run_id, Spent())
        return out

    async def check(
        self,
        space_id: str,
        user_key: str | None = None,
        *,
        task_id: int | None = None,
        run_id: str | None = None,
        estimate: Spent | None = None,
        prefs: Mapping[str, str] | None = None,
    ) -> BudgetVerdict:
        """May this space/user/task spend (`estimate` more)? The first cap reached, if any.

        A task's per-run cap applies with `task_id` (and `run_id` for the run's own spend,
        or `estimate` for what a run of the task is expected to cost)."""
        caps = await self.caps_for(space_id, prefs)
        if task_id is None:
            caps = caps.with_overrides({Scope.TASK_RUN: None})
        if user_key is None:
            caps = caps.with_overrides({Scope.USER_DAY: None})
        if caps == Caps():
            return ALLOWED
        return check(caps, self.spent(space_id, user_key, run_id), self.clock(), estimate=estimate)

    def notice(self, verdict: BudgetVerdict) -> str:
        """The chat's one line for a refusal."""
        return budget_notice(verdict, self.clock())

    # ------------------------------------------------------------------ runs

    def begin_run(self, run_id: str) -> None:
        """Count the run's own spend from now (a task's per-run cap)."""
        self._runs[run_id] = Spent()

    async def refuse_call(self, grant: RunGrant) -> str | None:
        """The model proxy's guard: why this run may not call a model now, or None."""
        verdict = await self.check(
            grant.space_id, grant.user_key, task_id=grant.task_id, run_id=grant.run_id
        )
        if verdict.allowed:
            return None
        if grant.run_id not in self._stopped:
            log.warning(
                "model call refused: spending cap reached",
                run_id=grant.run_id,
                space_id=grant.space_id,
                scope=verdict.scope.value if verdict.scope else None,
                cap=verdict.cap.describe() if verdict.cap else None,
            )
        self._stopped[grant.run_id] = verdict
        return self.notice(verdict)

    def end_run(self, run_id: str) -> BudgetVerdict | None:
        """Forget the run; the cap that refused one of its calls, if one did."""
        self._runs.pop(run_id, None)
        return self._stopped.pop(run_id, None)

    async def warnings(
        self, space_id: str, user_key: str | None, who: str | None = None
    ) -> list[str]:
        """Heads-ups for caps of this space/user past 80 %, each given once per period
        (`who`: the user's name, for their cap's heads-up)."""
        caps = (await self.caps_for(space_id)).with_overrides({Scope.TASK_RUN: None})
        if user_key is None:
            caps = caps.with_overrides({Scope.USER_DAY: None})
        now = self.clock()
        spent = self.spent(space_id, user_key)
        texts = []
        for scope in crossed_warning(caps, spent):
            cap = caps.get(scope)
            start = period_start(scope, now)
            if cap is None or start is None:
                continue
            subject = {
                Scope.INSTANCE_DAY: "*",
                Scope.USER_DAY: f"{space_id} {user_key}",
            }.get(scope, space_id)
            try:
                first = await note_budget_alert(self.db, scope.value, subject, start.date())
            except Exception as exc:
                log.error("a budget warning could not be recorded", error=str(exc))
                continue
            if first:
                log.warning(
                    "spending cap nearly reached",
                    scope=scope.value,
                    space_id=space_id,
                    cap=cap.describe(),
                    spent_usd=round(spent[scope].usd, 4),
                    spent_tokens=spent[scope].tokens,
                )
                texts.append(warning_notice(scope, cap, spent[scope], now, who=who or "a user"))
        return texts


__all__ = [
    "BUDGET_PREF",
    "BudgetBook",
    "CapStatus",
    "cap_statuses",
    "overrides_from_prefs",
    "read_overrides",
    "spent_from_db",
    "write_override",
]
