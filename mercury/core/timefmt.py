"""Small time helpers shared by the core's user-facing texts (pure, no clock of their own)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta


def as_utc(dt: datetime) -> datetime:
    """Treat naive datetimes as UTC (SQLite hands them back naive) and convert aware ones."""
    if dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def next_utc_midnight(now: datetime) -> datetime:
    """The start of the next UTC day: when daily quotas reset."""
    day = as_utc(now).date() + timedelta(days=1)
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def format_wait(seconds: float) -> str:
    """A short human wait: "42 s", "3 m 5 s", "5 h 3 m", "2 d 3 h".

    Rounded up, so "try again in N" is never too early.
    """
    total = max(0, math.ceil(seconds))
    if total < 60:
        return f"{total} s"
    if total < 3600:
        minutes, secs = divmod(total, 60)
        return f"{minutes} m {secs} s" if secs else f"{minutes} m"
    if total < 86400:
        # Seconds no longer matter at this scale; round up to the minute shown.
        hours, minutes = divmod(math.ceil(total / 60), 60)
        if hours == 24:
            return "1 d"
        return f"{hours} h {minutes} m" if minutes else f"{hours} h"
    days, hours = divmod(math.ceil(total / 3600), 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def format_clock(when: datetime, now: datetime) -> str:
    """ "14:30 UTC" when `when` is today (UTC), else "2024-05-02 14:30 UTC"."""
    w = as_utc(when)
    if w.date() == as_utc(now).date():
        return w.strftime("%H:%M UTC")
    return w.strftime("%Y-%m-%d %H:%M UTC")
