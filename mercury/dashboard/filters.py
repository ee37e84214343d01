"""Small formatting rules every page shares, as pure functions (also jinja2 filters).

Pages show times in UTC with their age, durations in words an operator reads at a
glance, and counts with thousands separators; one definition each keeps them alike.
"""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["FILTERS", "ago", "duration", "number", "usd", "when"]


def when(value: datetime | None) -> str:
    """`2026-01-10 14:03 UTC`, or an em dash for no value."""
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def duration(seconds: float | None) -> str:
    """`850 ms`, `42 s`, `3 min 5 s`, `2 h 10 min`, `3 d 4 h`; an em dash for None."""
    if seconds is None:
        return "—"
    if seconds < 1:
        return f"{round(seconds * 1000)} ms"
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    minutes, s = divmod(s, 60)
    if minutes < 60:
        return f"{minutes} min {s} s" if s else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def ago(value: datetime | None, now: datetime | None = None) -> str:
    """How long ago: `just now`, `5 min ago`, `2 h ago`; an em dash for None."""
    if value is None:
        return "—"
    delta = ((now or datetime.now(UTC)) - value).total_seconds()
    if delta < 0:
        return "in " + duration(-delta)
    if delta < 10:
        return "just now"
    text = duration(delta)
    # The coarsest unit is enough for an age: "3 min ago", not "3 min 5 s ago".
    return text.split(" ", 2)[0] + " " + text.split(" ", 2)[1] + " ago"


def number(value: float | None) -> str:
    """`12,345` (whole numbers) or `1,234.5`; an em dash for None."""
    if value is None:
        return "—"
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.1f}"


def usd(value: float | None) -> str:
    """`$0.0123` below a dollar (token costs are small), `$12.34` above."""
    if value is None:
        return "—"
    return f"${value:,.4f}" if abs(value) < 1 else f"${value:,.2f}"


FILTERS = {"when": when, "duration": duration, "ago": ago, "number": number, "usd": usd}
