"""Rate limits: a burst window per user per space and a daily cap per role.

Accounting contract (the pipeline's side): only ACCEPTED requests are recorded — in the
database and in `RateLedger.record`. A request refused by either limit is not recorded, so
a burst refusal never uses up daily quota and hammering while limited does not extend the
wait. Days are UTC days; the daily count is per user across all spaces.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Literal

from mercury.core.permissions import MEMBER_ROLE
from mercury.core.timefmt import as_utc, format_wait, next_utc_midnight


@dataclass(frozen=True)
class RateRule:
    """Limits; `daily` maps role -> runs per UTC day (None = unlimited).

    A role missing from `daily` gets the member cap (custom roles are limited like members
    unless listed); with no member entry either, it is unlimited.
    """

    burst: int = 5
    burst_window_s: float = 60.0
    daily: Mapping[str, int | None] = field(default_factory=lambda: {"admin": None, "member": 200})

    def daily_cap(self, role: str) -> int | None:
        if role in self.daily:
            return self.daily[role]
        return self.daily.get(MEMBER_ROLE)


@dataclass(frozen=True)
class RateVerdict:
    allowed: bool
    limit: Literal["burst", "daily"] | None = None
    retry_after_s: float | None = None
    message: str = ""


ALLOWED = RateVerdict(True)


def check_rate(
    recent: Sequence[datetime],
    used_today: int,
    role: str,
    rule: RateRule,
    now: datetime,
) -> RateVerdict:
    """May this user start another run now?

    `recent`: this user's accepted triggering requests in this space (any age; older ones
    are ignored). `used_today`: this user's accepted runs in the current UTC day.
    The daily cap is checked first: when both apply, its (longer) wait is the useful one.
    """
    now = as_utc(now)
    cap = rule.daily_cap(role)
    if cap is not None and used_today >= cap:
        reset = next_utc_midnight(now)
        wait = (reset - now).total_seconds()
        return RateVerdict(
            False,
            "daily",
            wait,
            f"Daily limit of {cap} runs reached; resets at 00:00 UTC (in {format_wait(wait)}).",
        )
    window = timedelta(seconds=rule.burst_window_s)
    start = now - window
    in_window = sorted(t for t in map(as_utc, recent) if start < t <= now)
    if len(in_window) >= rule.burst:
        # A slot frees when the request that puts us at the limit leaves the window.
        frees_at = in_window[len(in_window) - rule.burst] + window
        wait = max(0.0, (frees_at - now).total_seconds())
        return RateVerdict(
            False,
            "burst",
            wait,
            f"Too many requests: at most {rule.burst} per {format_wait(rule.burst_window_s)}; "
            f"try again in {format_wait(wait)}.",
        )
    return ALLOWED


class RateLedger:
    """In-memory accepted-request record (no clock of its own: every method takes `now`).

    Holds accepted timestamps per (space, user) pruned to the burst window, and accepted
    run counts per (user, UTC day). The pipeline seeds it from the database on start
    (`record` with the stored times) and records each accepted request.
    """

    def __init__(self, rule: RateRule) -> None:
        self.rule = rule
        self._recent: dict[tuple[str, str], deque[datetime]] = {}
        self._daily: dict[tuple[str, date], int] = {}
        self._swept_on: date | None = None

    def _prune(self, key: tuple[str, str], now: datetime) -> deque[datetime]:
        times = self._recent.get(key)
        if times is None:
            return deque()
        start = now - timedelta(seconds=self.rule.burst_window_s)
        while times and times[0] <= start:
            times.popleft()
        if not times:
            del self._recent[key]
        return times

    def recent(self, space: str, user: str, now: datetime) -> tuple[datetime, ...]:
        return tuple(self._prune((space, user), as_utc(now)))

    def used_today(self, user: str, now: datetime) -> int:
        return self._daily.get((user, as_utc(now).date()), 0)

    def check(self, space: str, user: str, role: str, now: datetime) -> RateVerdict:
        return check_rate(
            self.recent(space, user, now), self.used_today(user, now), role, self.rule, now
        )

    def record(self, space: str, user: str, at: datetime) -> None:
        """Count one accepted request (also used to seed from the database)."""
        at = as_utc(at)
        if self._swept_on is None or at.date() > self._swept_on:
            self._sweep(at)
            self._swept_on = at.date()
        times = self._recent.setdefault((space, user), deque())
        times.append(at)
        if len(times) > 1 and times[-2] > at:
            # Seeding may arrive out of order; keep the deque sorted for pruning.
            self._recent[(space, user)] = deque(sorted(times))
        day_key = (user, at.date())
        self._daily[day_key] = self._daily.get(day_key, 0) + 1

    def seed(self, entries: Iterable[tuple[str, str, datetime]]) -> None:
        """Record many (space, user, accepted_at) rows at once."""
        for space, user, at in entries:
            self.record(space, user, at)

    def _sweep(self, now: datetime) -> None:
        """Drop windows and past days that can no longer matter. Run by `record` once per
        UTC day, so a ledger kept for years holds only today's users."""
        now = as_utc(now)
        for key in list(self._recent):
            self._prune(key, now)
        today = now.date()
        for key in [k for k in self._daily if k[1] < today]:
            del self._daily[key]
