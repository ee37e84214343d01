"""Scheduled tasks, the decisions: may a due task run, what is said when it may not, when a
failed run is retried, and what a slot missed while Mercury was down comes to.

Pure: the scheduler (pipeline/scheduler.py) looks up the facts (the space's pause, the
creator's role, mute, rate counts, spending) and acts on the answer (queue the job, record
the outcome, post the notice).

A due task is checked like a message of the user who created it, in this order:

1. the space is paused (an admin's /pause holds tasks too);
2. the creator is muted in the space;
3. the creator's role lacks the `run` permission;
4. a spending cap is reached, or the task's usual cost would pass one;
5. the creator's rate limit (burst or daily) is reached.

Pause comes first because it says the most about the space; a spending cap before the rate
limit, as for messages, so that a refused task uses up no quota.

Who created a task (`tasks.created_by`): a "platform:user_id" user key (a run's sender,
see `Creator`); "operator" (the CLI, the dashboard - stored as "dashboard:<login>" by
older versions) acts as an admin with no user key, so no per-user limit or cap applies;
anything else (None, or "run:<id>" from before creators were recorded) gets the space's
default role and no user key.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from mercury.core.budget import ALLOWED as BUDGET_ALLOWED
from mercury.core.budget import BudgetVerdict, Scope, Spent, format_usd
from mercury.core.permissions import Permission
from mercury.core.ratelimit import ALLOWED as RATE_ALLOWED
from mercury.core.ratelimit import RateVerdict
from mercury.core.timefmt import as_utc, format_clock, format_wait

OPERATOR = "operator"
_OPERATOR_PREFIXES = ("dashboard:",)  # what the dashboard stored before "operator"
_PLATFORMS = ("slack", "discord", "telegram", "web")
# The longest wait between two tries, however many attempts are configured.
MAX_BACKOFF = timedelta(days=1)
LABEL_CHARS = 40


@dataclass(frozen=True, slots=True)
class Creator:
    """Who a task acts for: a user (by key), the operator, or nobody known (legacy)."""

    user_key: str | None = None
    operator: bool = False

    @property
    def known(self) -> bool:
        return self.user_key is not None or self.operator


def creator_of(created_by: str | None) -> Creator:
    """Read `tasks.created_by` (see the module docstring)."""
    value = (created_by or "").strip()
    if value == OPERATOR or value.startswith(_OPERATOR_PREFIXES):
        return Creator(operator=True)
    platform, sep, user_id = value.partition(":")
    if sep and user_id and platform in _PLATFORMS:
        return Creator(user_key=value)
    return Creator()


class RefusalKind(StrEnum):
    """Why a due task did not run; each kind's `detail` starts with its own words."""

    NOWHERE = "nowhere"
    PAUSED = "paused"
    MUTED = "muted"
    PERMISSION = "permission"
    BUDGET = "budget"
    RATE = "rate"


# How each kind's detail begins: a refusal streak is told once per kind (`should_announce`).
_DETAIL_START = {
    RefusalKind.NOWHERE: "no conversation",
    RefusalKind.PAUSED: "the space is paused",
    RefusalKind.MUTED: "the task's creator is muted",
    RefusalKind.PERMISSION: "no permission:",
    RefusalKind.BUDGET: "spending cap:",
    RefusalKind.RATE: "rate limit:",
}


@dataclass(frozen=True, slots=True)
class Refusal:
    """A due task that may not run: `detail` for the record, `why` for the chat."""

    kind: RefusalKind
    detail: str
    why: str


@dataclass(frozen=True, slots=True)
class TaskFacts:
    """What the scheduler looked up for one due task."""

    paused: bool = False
    paused_until: datetime | None = None  # None while paused: until /resume
    role: str = "member"
    permissions: frozenset[str] = frozenset({Permission.RUN})
    muted: bool = False
    budget: BudgetVerdict = BUDGET_ALLOWED
    estimate: Spent | None = None  # the task's usual cost, when it ran before
    rate: RateVerdict = RATE_ALLOWED


NO_CONVERSATION = Refusal(
    RefusalKind.NOWHERE,
    "no conversation to answer in: the space has no linked chat",
    "the space has no chat to answer in",
)


def admit(facts: TaskFacts, now: datetime) -> Refusal | None:
    """None when the task may run now, else why not (checks in the module's order)."""
    if facts.paused:
        if facts.paused_until is None:
            why = "this space is paused until an admin sends /resume"
        else:
            why = f"this space is paused until {format_clock(facts.paused_until, now)}"
        return Refusal(RefusalKind.PAUSED, "the space is paused", why)
    if facts.muted:
        return Refusal(
            RefusalKind.MUTED,
            "the task's creator is muted in this space",
            "the person who created it is muted here",
        )
    if Permission.RUN not in facts.permissions:
        return Refusal(
            RefusalKind.PERMISSION,
            f"no permission: the creator's role ({facts.role}) may not use the agent here",
            f"the role of the person who created it ({facts.role}) may not use me here",
        )
    if not facts.budget.allowed:
        what = budget_words(facts.budget, facts.estimate)
        when = ""
        if facts.budget.resets_at is not None:
            when = f"; it resets at {format_clock(facts.budget.resets_at, now)}"
        return Refusal(RefusalKind.BUDGET, f"spending cap: {what}", f"{what}{when}")
    if not facts.rate.allowed:
        limit = "daily limit of runs" if facts.rate.limit == "daily" else "limit of runs a minute"
        wait = ""
        if facts.rate.retry_after_s is not None:
            wait = f" (free again in {format_wait(facts.rate.retry_after_s)})"
        return Refusal(
            RefusalKind.RATE,
            f"rate limit: the creator's {limit} is reached{wait}",
            f"the person who created it reached their {limit}{wait}",
        )
    return None


_CAP_WHAT = {
    Scope.INSTANCE_DAY: "Mercury's daily spending cap for all spaces",
    Scope.SPACE_MONTH: "this space's monthly spending cap",
    Scope.SPACE_DAY: "this space's daily spending cap",
    Scope.USER_DAY: "the creator's daily spending cap in this space",
    Scope.TASK_RUN: "this task's spending cap per run",
}


def budget_words(verdict: BudgetVerdict, estimate: Spent | None = None) -> str:
    """ "this space's daily spending cap ($5.00) is reached", or would be passed by the
    task's usual cost."""
    if verdict.scope is None or verdict.cap is None:
        return "a spending cap is reached"
    what = f"{_CAP_WHAT[verdict.scope]} ({verdict.cap.describe()})"
    spent = verdict.spent or Spent()
    if estimate is not None and not _reached(verdict, spent):
        cost = (
            format_usd(estimate.usd)
            if verdict.cap.usd is not None
            else (f"{estimate.tokens:,} tokens")
        )
        return f"{what} would be passed by the task's usual cost ({cost})"
    return f"{what} is reached"


def _reached(verdict: BudgetVerdict, spent: Spent) -> bool:
    cap = verdict.cap
    assert cap is not None
    by_usd = cap.usd is not None and spent.usd >= cap.usd
    return by_usd or (cap.tokens is not None and spent.tokens >= cap.tokens)


def refusal_kind(detail: str | None) -> RefusalKind | None:
    """The kind of refusal a stored `last_detail` records, by its opening words."""
    if not detail:
        return None
    for kind, start in _DETAIL_START.items():
        if detail.startswith(start):
            return kind
    return None


def should_announce(last_outcome: str | None, last_detail: str | None, refusal: Refusal) -> bool:
    """Whether the chat is told of this refusal: once per streak of refusals of one kind,
    not at every slot (a paused daily task is told once, not every day)."""
    return last_outcome != "refused" or refusal_kind(last_detail) is not refusal.kind


def task_label(task_id: int, prompt: str) -> str:
    """'Scheduled task 12 ("daily digest")': the prompt's first words name it."""
    words = " ".join(prompt.split())
    if len(words) > LABEL_CHARS:
        words = words[: LABEL_CHARS - 1].rstrip() + "…"
    return f'Scheduled task {task_id} ("{words}")'


def refusal_notice(task_id: int, prompt: str, refusal: Refusal, *, one_shot: bool) -> str:
    """The chat's one line when a due task did not run."""
    text = f"{task_label(task_id, prompt)} did not run: {refusal.why}."
    if one_shot:
        text += " It was due once, so it will not run again."
    return text


def failure_report(task_id: int, prompt: str, notice: str | None, tries: int) -> str:
    """The chat's one report of a task whose run failed every try: the failure notice the
    run would have given, and how many tries were made."""
    times = "1 try" if tries == 1 else f"{tries} tries"
    base = f"{task_label(task_id, prompt)} failed after {times}."
    return f"{base} {notice}" if notice else base


def stopped_notice(task_id: int, prompt: str, notice: str | None) -> str:
    """The chat's line for a task's run ended by a spending cap (not retried)."""
    base = f"{task_label(task_id, prompt)} was stopped."
    return f"{base} {notice}" if notice else base


# --------------------------------------------------------------------------- retries


@dataclass(frozen=True, slots=True)
class RetryRule:
    """`attempts` retries after the first try, the first `backoff_s` later, then doubling."""

    attempts: int = 3
    backoff_s: float = 60.0


@dataclass(frozen=True, slots=True)
class FailureStep:
    """After a failed try: the failed tries so far, and the next try's time (None: the
    tries are used up, and the failure is reported)."""

    failures: int
    retry_at: datetime | None

    @property
    def final(self) -> bool:
        return self.retry_at is None


def retry_delay(rule: RetryRule, failures: int) -> timedelta:
    """The wait after the `failures`-th failed try: backoff, 2x backoff, 4x, ..."""
    seconds = rule.backoff_s * 2 ** max(0, min(failures - 1, 40))
    return min(timedelta(seconds=seconds), MAX_BACKOFF)


def after_failure(rule: RetryRule, failures_before: int, now: datetime) -> FailureStep:
    """What follows a failed try of a run that had failed `failures_before` times."""
    failures = failures_before + 1
    if failures > rule.attempts:
        return FailureStep(failures, None)
    return FailureStep(failures, as_utc(now) + retry_delay(rule, failures))


def retrying_detail(reason: str, step: FailureStep, rule: RetryRule, now: datetime) -> str:
    """The record of a failed try that will be retried."""
    assert step.retry_at is not None
    return (
        f"run failed: {reason}; retry {step.failures} of {rule.attempts} "
        f"at {format_clock(step.retry_at, now)}"
    )


def failed_detail(reason: str, tries: int) -> str:
    """The record of a run that failed every try."""
    return f"run failed: {reason} (after {tries} {'try' if tries == 1 else 'tries'})"


# --------------------------------------------------------------------------- catch-up

MISSED = "missed while Mercury was down"


def missed_while_down(due_at: datetime, started_at: datetime | None) -> bool:
    """Whether a run due at `due_at` fell due before this process started."""
    return started_at is not None and as_utc(due_at) < as_utc(started_at)


def skips_missed(catch_up: str, due_at: datetime, started_at: datetime | None) -> bool:
    """Whether a due run is skipped: missed while down, by a task that skips those.

    Only at start: a run that falls due while Mercury runs always runs. "once" (the
    default) runs a missed slot once, then the schedule goes on from now."""
    return catch_up == "skip" and missed_while_down(due_at, started_at)


__all__ = [
    "MISSED",
    "NO_CONVERSATION",
    "OPERATOR",
    "Creator",
    "FailureStep",
    "Refusal",
    "RefusalKind",
    "RetryRule",
    "TaskFacts",
    "admit",
    "after_failure",
    "budget_words",
    "creator_of",
    "failed_detail",
    "failure_report",
    "missed_while_down",
    "refusal_kind",
    "refusal_notice",
    "retry_delay",
    "retrying_detail",
    "should_announce",
    "skips_missed",
    "stopped_notice",
    "task_label",
]
