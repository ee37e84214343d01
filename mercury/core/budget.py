"""Spending caps: what a cap is, whether one is reached, and what the chat is told.

Pure: the caller (pipeline/budget.py) keeps what was spent and asks here. A cap is in US
dollars (counted from the price table: only priced calls add to it) or in tokens (input +
output of every call, priced or not) or both; reaching either limit reaches the cap.

Periods are UTC days and months, like the usage table: a daily cap resets at 00:00 UTC, a
monthly one on the 1st at 00:00 UTC, a task's per-run cap with each run.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from mercury.core.timefmt import as_utc, format_wait, next_utc_midnight


class Scope(StrEnum):
    """What a cap bounds. The values are the config keys (budgets.<value>)."""

    INSTANCE_DAY = "instance_day"  # every space together, per UTC day
    SPACE_MONTH = "space_month"
    SPACE_DAY = "space_day"
    USER_DAY = "user_day"  # one person in one space, per UTC day
    TASK_RUN = "task_run"  # one run of a scheduled task


# The order caps are checked in: the widest first, so the notice names the cap an admin of
# the space cannot raise (the instance's) before the ones they can.
SCOPES: tuple[Scope, ...] = (
    Scope.INSTANCE_DAY,
    Scope.SPACE_MONTH,
    Scope.SPACE_DAY,
    Scope.USER_DAY,
    Scope.TASK_RUN,
)
# What an admin of a space may override for that space (/budget, the host API, the CLI).
SPACE_SCOPES: tuple[Scope, ...] = (
    Scope.SPACE_DAY,
    Scope.SPACE_MONTH,
    Scope.USER_DAY,
    Scope.TASK_RUN,
)

# The share of a cap at which an admin is warned (once per cap and period).
WARN_AT = 0.8


class CapError(ValueError):
    """A cap that cannot be read; the message says what is expected."""


@dataclass(frozen=True, slots=True)
class Cap:
    """A limit in dollars, in tokens, or both (whichever is reached first)."""

    usd: float | None = None
    tokens: int | None = None

    def __post_init__(self) -> None:
        if self.usd is None and self.tokens is None:
            raise CapError("a cap needs a dollar amount or a token count")

    def describe(self) -> str:
        """ "$5.00", "200,000 tokens" or "$5.00 or 200,000 tokens"."""
        parts = []
        if self.usd is not None:
            parts.append(format_usd(self.usd))
        if self.tokens is not None:
            parts.append(f"{self.tokens:,} tokens")
        return " or ".join(parts)

    def to_text(self) -> str:
        """The form `parse_cap` reads back (stored per space as an override)."""
        parts = []
        if self.usd is not None:
            parts.append(f"${self.usd:g}")
        if self.tokens is not None:
            parts.append(f"{self.tokens} tokens")
        return " or ".join(parts)


@dataclass(frozen=True, slots=True)
class Spent:
    """What was spent in one scope and period: dollars of priced calls, tokens of all."""

    usd: float = 0.0
    tokens: int = 0

    def __add__(self, other: Spent) -> Spent:
        return Spent(self.usd + other.usd, self.tokens + other.tokens)


_USD_RE = re.compile(r"^\$?\s*(\d+(?:\.\d+)?)\s*(?:\$|usd|dollars?)?$", re.IGNORECASE)
_TOKENS_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([km]?)\s*(?:tokens?|tok)$", re.IGNORECASE)
_CAP_HELP = 'expected a dollar amount like $5 or 2.50, or tokens like "500k tokens"'


def format_usd(value: float) -> str:
    """$5.00; small amounts keep their cents' fractions ($0.004)."""
    if 0 < value < 0.01:
        return f"${value:.4f}".rstrip("0")
    return f"${value:,.2f}"


def parse_cap(value: object) -> Cap | None:
    """A cap from config or chat: a number (dollars), "$5", "5 usd", "500k tokens",
    "$5 or 500k tokens"; None, "", "off", "none" or "unlimited" -> no cap."""
    if value is None:
        return None
    if isinstance(value, Cap):
        return value
    if isinstance(value, bool):
        raise CapError(f"{_CAP_HELP}, got {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise CapError(f"{_CAP_HELP}, got {value!r}")
        return Cap(usd=float(value))
    if not isinstance(value, str):
        raise CapError(f"{_CAP_HELP}, got {type(value).__name__}")
    text = value.strip()
    if text.lower() in ("", "off", "none", "unlimited", "no", "null"):
        return None
    usd: float | None = None
    tokens: int | None = None
    for part in re.split(r"\s+or\s+|\s*,\s*", text):
        m = _USD_RE.match(part.strip())
        if m and usd is None:
            usd = float(m.group(1))
            continue
        m = _TOKENS_RE.match(part.strip())
        if m and tokens is None:
            factor = {"": 1, "k": 1_000, "m": 1_000_000}[m.group(2).lower()]
            tokens = int(float(m.group(1)) * factor)
            continue
        raise CapError(f'{_CAP_HELP}, got "{value}"')
    return Cap(usd=usd, tokens=tokens)


@dataclass(frozen=True, slots=True)
class Caps:
    """The caps that apply to one run: None = no cap of that kind."""

    instance_day: Cap | None = None
    space_month: Cap | None = None
    space_day: Cap | None = None
    user_day: Cap | None = None
    task_run: Cap | None = None

    def get(self, scope: Scope) -> Cap | None:
        cap: Cap | None = getattr(self, scope.value)
        return cap

    def with_overrides(self, overrides: Mapping[Scope, Cap | None]) -> Caps:
        """These caps with a space's own values in place (None there = no cap)."""
        values = {s.value: self.get(s) for s in SCOPES}
        for scope, cap in overrides.items():
            if scope in SPACE_SCOPES:
                values[scope.value] = cap
        return Caps(**values)


def share(cap: Cap, spent: Spent) -> float:
    """How much of `cap` is used: the larger of the dollar and the token share."""
    shares = [0.0]
    if cap.usd is not None:
        shares.append(math.inf if cap.usd == 0 else spent.usd / cap.usd)
    if cap.tokens is not None:
        shares.append(math.inf if cap.tokens == 0 else spent.tokens / cap.tokens)
    return max(shares)


def reached(cap: Cap, spent: Spent) -> bool:
    """Whether nothing more may be spent under `cap`."""
    return share(cap, spent) >= 1.0


def would_pass(cap: Cap, spent: Spent, estimate: Spent) -> bool:
    """Whether spending `estimate` more would go past `cap` (a task's expected cost)."""
    total = spent + estimate
    if cap.usd is not None and total.usd > cap.usd:
        return True
    return cap.tokens is not None and total.tokens > cap.tokens


def period_start(scope: Scope, now: datetime) -> datetime | None:
    """Where the scope's current period began (None: a task's run has no calendar)."""
    now = as_utc(now)
    if scope is Scope.TASK_RUN:
        return None
    if scope is Scope.SPACE_MONTH:
        return datetime(now.year, now.month, 1, tzinfo=UTC)
    return datetime(now.year, now.month, now.day, tzinfo=UTC)


def resets_at(scope: Scope, now: datetime) -> datetime | None:
    """When the scope's cap starts afresh (None for a task's per-run cap)."""
    now = as_utc(now)
    if scope is Scope.TASK_RUN:
        return None
    if scope is Scope.SPACE_MONTH:
        year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
        return datetime(year, month, 1, tzinfo=UTC)
    return next_utc_midnight(now)


@dataclass(frozen=True, slots=True)
class BudgetVerdict:
    """Whether a run (or a model call) may spend; when not, which cap stops it."""

    allowed: bool
    scope: Scope | None = None
    cap: Cap | None = None
    spent: Spent | None = None
    resets_at: datetime | None = None


ALLOWED = BudgetVerdict(True)


def check(
    caps: Caps,
    spent: Mapping[Scope, Spent],
    now: datetime,
    *,
    estimate: Spent | None = None,
) -> BudgetVerdict:
    """The first cap (widest first) that is reached, or that `estimate` would pass."""
    for scope in SCOPES:
        cap = caps.get(scope)
        if cap is None:
            continue
        used = spent.get(scope, Spent())
        if reached(cap, used) or (estimate is not None and would_pass(cap, used, estimate)):
            return BudgetVerdict(False, scope, cap, used, resets_at(scope, now))
    return ALLOWED


def crossed_warning(caps: Caps, spent: Mapping[Scope, Spent]) -> list[Scope]:
    """The calendar caps at or past WARN_AT of their limit (the caller warns once per period)."""
    return [
        scope
        for scope in SCOPES
        # A task's per-run cap starts afresh with every run: nothing to warn about ahead.
        if scope is not Scope.TASK_RUN
        and (cap := caps.get(scope)) is not None
        and share(cap, spent.get(scope, Spent())) >= WARN_AT
    ]


_WHAT = {
    Scope.INSTANCE_DAY: "Mercury's daily spending cap for all spaces",
    Scope.SPACE_MONTH: "this space's monthly spending cap",
    Scope.SPACE_DAY: "this space's daily spending cap",
    Scope.USER_DAY: "your daily spending cap in this space",
    Scope.TASK_RUN: "this task's spending cap per run",
}
_WHO = {
    Scope.INSTANCE_DAY: "The operator can raise it (budgets.instance_day in mercury.yaml).",
    Scope.SPACE_MONTH: "An admin of this space can raise it with /budget.",
    Scope.SPACE_DAY: "An admin of this space can raise it with /budget.",
    Scope.USER_DAY: "An admin of this space can raise it with /budget.",
    Scope.TASK_RUN: "An admin of this space can raise it with /budget.",
}


def _reset_clock(when: datetime, now: datetime) -> str:
    """ "00:00 UTC" within a day (the wait is said next to it), else with the date."""
    when = as_utc(when)
    if when - as_utc(now) <= timedelta(days=1):
        return when.strftime("%H:%M UTC")
    return when.strftime("%Y-%m-%d %H:%M UTC")


def budget_notice(verdict: BudgetVerdict, now: datetime) -> str:
    """One plain line: which cap was reached, when it resets, and who can raise it."""
    scope = verdict.scope
    if verdict.allowed or scope is None or verdict.cap is None:
        return "Sorry — a spending cap was reached, so I stopped."
    what = f"{_WHAT[scope]} ({verdict.cap.describe()})"
    if verdict.resets_at is None:
        when = "It applies to each run of the task."
    else:
        wait = format_wait((as_utc(verdict.resets_at) - as_utc(now)).total_seconds())
        when = f"It resets at {_reset_clock(verdict.resets_at, now)} (in {wait})."
    return f"Sorry — {what} is reached, so I can't spend more on this. {when} {_WHO[scope]}"


# The heads-up is for the space's admins, so a user's cap is named in the third person.
_WARN_WHAT = {**_WHAT, Scope.USER_DAY: "the daily spending cap of {who} in this space"}


def warning_notice(
    scope: Scope, cap: Cap, spent: Spent, now: datetime, *, who: str = "a user"
) -> str:
    """The one-time heads-up to admins at WARN_AT of a cap (`who`: the user, by name)."""
    amount = format_usd(spent.usd) if cap.usd is not None else f"{spent.tokens:,} tokens"
    reset = resets_at(scope, now)
    when = f" It resets at {_reset_clock(reset, now)}." if reset is not None else ""
    what = _WARN_WHAT[scope].format(who=who)
    if reached(cap, spent):
        # Passed in one go (a single run spent the last 20 % and more).
        head = f"Heads-up for admins: {what} ({cap.describe()}) is used up ({amount})."
    else:
        used = f"{share(cap, spent):.0%}"
        head = f"Heads-up for admins: {used} of {what} ({cap.describe()}) is used ({amount})."
    return f"{head}{when} /budget shows the caps; an admin can raise them."


__all__ = [
    "ALLOWED",
    "SCOPES",
    "SPACE_SCOPES",
    "WARN_AT",
    "BudgetVerdict",
    "Cap",
    "CapError",
    "Caps",
    "Scope",
    "Spent",
    "budget_notice",
    "check",
    "crossed_warning",
    "format_usd",
    "parse_cap",
    "period_start",
    "reached",
    "resets_at",
    "share",
    "warning_notice",
    "would_pass",
]
