"""Spending caps as people read and write them: /budget, `mercury budget`, the host API.

Pure: what a setting such as "day $5" means (`parse_setting`), the caps text that /budget
and `mercury budget show` print (`caps_text`), and the JSON form the host API and
`--json` give (`status_json`). One text for both, so a chat and a terminal never disagree
about what is in force. The caller reads the caps and the spend (pipeline/budget.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from mercury.core.budget import (
    SPACE_SCOPES,
    Cap,
    CapError,
    Scope,
    Spent,
    format_usd,
    parse_cap,
    reached,
    share,
)
from mercury.core.timefmt import as_utc, format_clock, format_wait


class CapLine(Protocol):
    """One cap in force (pipeline.budget.CapStatus has this shape)."""

    @property
    def scope(self) -> Scope: ...
    @property
    def cap(self) -> Cap | None: ...
    @property
    def spent(self) -> Spent: ...
    @property
    def resets_at(self) -> datetime | None: ...
    @property
    def source(self) -> str: ...


# What a person may type for a scope, besides its config key (space_day) and space-day.
_SCOPE_WORDS: dict[str, Scope] = {
    "day": Scope.SPACE_DAY,
    "daily": Scope.SPACE_DAY,
    "month": Scope.SPACE_MONTH,
    "monthly": Scope.SPACE_MONTH,
    "user": Scope.USER_DAY,
    "person": Scope.USER_DAY,
    "task": Scope.TASK_RUN,
    "instance": Scope.INSTANCE_DAY,
}
_RESET_WORDS = ("default", "config", "reset")
SCOPE_HELP = "space_day (day), space_month (month), user_day (user) or task_run (task)"
VALUE_HELP = '"$5", "500k tokens", "$5 or 2m tokens", "off" (no cap) or "default"'
INSTANCE_REFUSAL = (
    "instance_day is the operator's cap for all spaces: set budgets.instance_day in mercury.yaml"
)


@dataclass(frozen=True, slots=True)
class BudgetSetting:
    """A space's own cap to store: `cap` None = no cap; `reset` = follow the config again."""

    scope: Scope
    cap: Cap | None = None
    reset: bool = False


def parse_scope(text: str) -> Scope:
    """A scope from its config key (space_day), with dashes, or a short word (day)."""
    key = text.strip().lower().replace("-", "_")
    scope = _SCOPE_WORDS.get(key)
    if scope is None:
        try:
            scope = Scope(key)
        except ValueError:
            shown = text.strip()[:40]
            raise CapError(f'unknown cap "{shown}": expected {SCOPE_HELP}') from None
    if scope not in SPACE_SCOPES:
        raise CapError(INSTANCE_REFUSAL)
    return scope


def parse_setting(scope_text: str, value: object) -> BudgetSetting:
    """`scope_text` and `value` as typed (chat, CLI) or sent (host API); CapError when
    either is unusable, with one line naming what is expected."""
    scope = parse_scope(scope_text)
    if value is None:
        return BudgetSetting(scope)  # JSON null: no cap
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise CapError(f"{scope.value}: a value is needed: {VALUE_HELP}")
        if text.lower() in _RESET_WORDS:
            return BudgetSetting(scope, reset=True)
        value = text
    try:
        return BudgetSetting(scope, parse_cap(value))
    except CapError as exc:
        raise CapError(f"{scope.value}: {exc}") from None


# --------------------------------------------------------------------------- text

_LABEL = {
    Scope.INSTANCE_DAY: "All spaces, per day",
    Scope.SPACE_MONTH: "This space, per month",
    Scope.SPACE_DAY: "This space, per day",
    Scope.USER_DAY: "Each person, per day",
    Scope.TASK_RUN: "Each run of a scheduled task",
}
_NAME = {
    Scope.INSTANCE_DAY: "Mercury's daily cap for all spaces",
    Scope.SPACE_MONTH: "This space's monthly cap",
    Scope.SPACE_DAY: "This space's daily cap",
    Scope.USER_DAY: "The daily cap per person in this space",
    Scope.TASK_RUN: "The cap per run of a scheduled task here",
}


def spent_text(cap: Cap | None, spent: Spent) -> str:
    """What was spent, in the cap's own units ("$1.20", "35,000 tokens" or both)."""
    if cap is not None and cap.tokens is None:
        return format_usd(spent.usd)
    if cap is not None and cap.usd is None:
        return f"{spent.tokens:,} tokens"
    return f"{format_usd(spent.usd)} and {spent.tokens:,} tokens"


def _when(resets: datetime, now: datetime) -> str:
    wait = format_wait((as_utc(resets) - as_utc(now)).total_seconds())
    return f"resets {format_clock(resets, now)} (in {wait})"


def cap_line(status: CapLine, now: datetime, *, user_known: bool = True) -> str:
    """One cap: its value and where it comes from, what is used, when it resets."""
    value = status.cap.describe() if status.cap is not None else "no cap"
    if status.source == "space":
        value += " (set for this space)"
    parts = [f"{_LABEL[status.scope]}: {value}"]
    if status.scope is Scope.TASK_RUN:
        pass  # counted per run: nothing is used ahead of one
    elif status.scope is Scope.USER_DAY and not user_known:
        pass  # the reader is nobody in particular (the CLI without --user)
    else:
        used = f"{spent_text(status.cap, status.spent)} used"
        if status.scope is Scope.USER_DAY:
            used = f"you: {used}"
        if status.cap is not None and reached(status.cap, status.spent):
            used += ", REACHED"
        parts.append(used)
        if status.cap is not None and status.resets_at is not None:
            parts.append(_when(status.resets_at, now))
    return " — ".join(parts)


def caps_text(
    statuses: Sequence[CapLine],
    now: datetime,
    *,
    user_known: bool = True,
    how_to_set: str = "/budget",
) -> str:
    """The caps in force and what is used, one line each, then how to change them.

    `user_known`: whether USER_DAY's spend is the reader's own; `how_to_set`: the command
    that changes a cap where this is shown (/budget in chat, `mercury budget set` in a
    terminal)."""
    lines = ["Spending caps (days and months are UTC):"]
    lines += [f"• {cap_line(s, now, user_known=user_known)}" for s in statuses]
    if how_to_set == "/budget":
        lines.append(
            "An admin changes this space's caps with /budget <cap> <value>, e.g. "
            "/budget day $5, /budget user 200k tokens, /budget task off, /budget day default."
        )
    else:
        lines.append(f"Change a cap of this space with: {how_to_set} <cap> <value>.")
    return "\n".join(lines)


def setting_text(setting: BudgetSetting, in_force: Cap | None) -> str:
    """The chat's (and the CLI's) answer to a change: what is in force now."""
    name = _NAME[setting.scope]
    value = in_force.describe() if in_force is not None else "no cap"
    if setting.reset:
        return f"{name} follows mercury.yaml again: {value}."
    return f"{name} is now {value}."


def status_json(status: CapLine, now: datetime, *, user_known: bool = True) -> dict[str, Any]:
    """One cap as JSON (host API, `--json`): value, source, spent, share used, reset time."""
    cap = status.cap
    counted = status.scope is not Scope.TASK_RUN and (
        status.scope is not Scope.USER_DAY or user_known
    )
    return {
        "scope": status.scope.value,
        "cap": None
        if cap is None
        else {"usd": cap.usd, "tokens": cap.tokens, "text": cap.to_text()},
        "source": status.source,
        "spent": {"usd": round(status.spent.usd, 6), "tokens": status.spent.tokens}
        if counted
        else None,
        "used": round(share(cap, status.spent), 4) if cap is not None and counted else None,
        "reached": bool(cap is not None and counted and reached(cap, status.spent)),
        "resets_at": as_utc(status.resets_at).isoformat() if status.resets_at else None,
    }


__all__ = [
    "INSTANCE_REFUSAL",
    "SCOPE_HELP",
    "VALUE_HELP",
    "BudgetSetting",
    "CapLine",
    "cap_line",
    "caps_text",
    "parse_scope",
    "parse_setting",
    "setting_text",
    "spent_text",
    "status_json",
]
