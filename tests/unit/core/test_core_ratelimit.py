from __future__ import annotations

from datetime import UTC, datetime, timedelta

from mercury.core.ratelimit import RateLedger, RateRule, RateVerdict, check_rate
from mercury.core.timefmt import format_wait

NOW = datetime(2024, 5, 1, 18, 56, 30, tzinfo=UTC)
RULE = RateRule(burst=3, burst_window_s=60, daily={"admin": None, "member": 5, "vip": 50})


def ago(*seconds: float) -> list[datetime]:
    return [NOW - timedelta(seconds=s) for s in seconds]


def test_under_limits() -> None:
    v = check_rate(ago(10, 20), 4, "member", RULE, NOW)
    assert v.allowed and v.limit is None and v.retry_after_s is None


def test_burst_window_slides() -> None:
    v = check_rate(ago(18, 30, 50), 0, "member", RULE, NOW)
    assert not v.allowed and v.limit == "burst"
    # The oldest (50 s ago) leaves the window in 10 s.
    assert v.retry_after_s == 10
    assert "try again in 10 s" in v.message
    # Entries outside the window do not count.
    assert check_rate(ago(10, 20, 60, 300), 0, "member", RULE, NOW).allowed
    # 10 s later the same history is fine.
    later = NOW + timedelta(seconds=10)
    assert check_rate(ago(18, 30, 50), 0, "member", RULE, later).allowed


def test_burst_applies_to_admins_too() -> None:
    assert not check_rate(ago(1, 2, 3), 0, "admin", RULE, NOW).allowed


def test_daily_cap_per_role() -> None:
    v = check_rate([], 5, "member", RULE, NOW)
    assert not v.allowed and v.limit == "daily"
    # 18:56:30 -> midnight is 5 h 3 m 30 s away; rounded up to the minute in text.
    assert v.retry_after_s == 5 * 3600 + 3 * 60 + 30
    assert v.message == "Daily limit of 5 runs reached; resets at 00:00 UTC (in 5 h 4 m)."
    assert check_rate([], 5, "vip", RULE, NOW).allowed
    assert not check_rate([], 50, "vip", RULE, NOW).allowed


def test_unlimited_and_unlisted_roles() -> None:
    assert check_rate([], 10_000, "admin", RULE, NOW).allowed
    # Unlisted custom roles are capped like members.
    assert not check_rate([], 5, "helper", RULE, NOW).allowed
    assert check_rate([], 10_000, "helper", RateRule(daily={"admin": None}), NOW).allowed


def test_daily_checked_before_burst() -> None:
    assert check_rate(ago(1, 2, 3), 5, "member", RULE, NOW).limit == "daily"


def test_naive_timestamps_are_utc() -> None:
    naive = [t.replace(tzinfo=None) for t in ago(1, 2, 3)]
    assert not check_rate(naive, 0, "member", RULE, NOW).allowed


def test_format_wait() -> None:
    assert format_wait(41.2) == "42 s"
    assert format_wait(60) == "1 m"
    assert format_wait(185) == "3 m 5 s"
    assert format_wait(5 * 3600 + 180) == "5 h 3 m"
    assert format_wait(5 * 3600 + 181) == "5 h 4 m"
    assert format_wait(86399) == "1 d"
    assert format_wait(2 * 86400 + 3 * 3600) == "2 d 3 h"


def acquire(ledger: RateLedger, space: str, user: str, role: str, now: datetime) -> RateVerdict:
    """What the inbound handler does: check, and record only an accepted request."""
    verdict = ledger.check(space, user, role, now)
    if verdict.allowed:
        ledger.record(space, user, now)
    return verdict


def test_ledger_burst_refusal_does_not_consume_daily_quota() -> None:
    ledger = RateLedger(RateRule(burst=2, burst_window_s=60, daily={"member": 3}))
    t = NOW.replace(hour=10)
    results = []
    # Hammer: 10 requests within 10 s; only 2 accepted.
    for i in range(10):
        results.append(acquire(ledger, "s1", "slack:U1", "member", t + timedelta(seconds=i)))
    assert sum(v.allowed for v in results) == 2
    assert {v.limit for v in results if not v.allowed} == {"burst"}
    assert ledger.used_today("slack:U1", t) == 2
    # After the window, exactly one more run of the daily 3 is left.
    t2 = t + timedelta(minutes=5)
    assert acquire(ledger, "s1", "slack:U1", "member", t2).allowed
    v = acquire(ledger, "s1", "slack:U1", "member", t2 + timedelta(minutes=5))
    assert not v.allowed and v.limit == "daily"


def test_ledger_scopes() -> None:
    ledger = RateLedger(RateRule(burst=1, burst_window_s=60, daily={"member": 2}))
    assert acquire(ledger, "s1", "u", "member", NOW).allowed
    # Burst is per space; daily is per user across spaces.
    assert acquire(ledger, "s2", "u", "member", NOW).allowed
    assert ledger.check("s3", "u", "member", NOW).limit == "daily"
    assert acquire(ledger, "s1", "other", "member", NOW).allowed
    # A new UTC day resets the count.
    tomorrow = NOW + timedelta(days=1)
    assert acquire(ledger, "s3", "u", "member", tomorrow).allowed


def test_ledger_seed_and_prune() -> None:
    ledger = RateLedger(RateRule(burst=2, burst_window_s=60, daily={"member": 10}))
    ledger.seed([("s", "u", NOW - timedelta(seconds=5)), ("s", "u", NOW - timedelta(seconds=30))])
    ledger.record("s", "u", NOW - timedelta(days=1))
    assert len(ledger.recent("s", "u", NOW)) == 2
    assert ledger.used_today("u", NOW) == 2
    v = ledger.check("s", "u", "member", NOW)
    assert not v.allowed and v.retry_after_s == 30
    assert ledger.recent("s", "u", NOW + timedelta(minutes=2)) == ()


def test_a_new_day_sweeps_what_can_no_longer_matter() -> None:
    """Kept for years, the ledger holds only today's users: the first request of a UTC day
    drops past days' counts and every user's expired burst window."""
    ledger = RateLedger(RateRule(burst=5, burst_window_s=60, daily={"member": 10}))
    for n in range(50):
        ledger.record("s", f"user{n}", NOW - timedelta(days=1, seconds=n))
    assert len(ledger._daily) == 50 and len(ledger._recent) == 50
    ledger.record("s", "today", NOW)
    assert list(ledger._daily) == [("today", NOW.date())]
    assert list(ledger._recent) == [("s", "today")]
    assert ledger.used_today("user1", NOW - timedelta(days=1)) == 0
