"""A task's schedule in words, on its space's clock (the Tasks page's schedule column).

Pure: a cron expression, an interval or a one-time moment -> what an operator reads.
"""

from __future__ import annotations

import re
from datetime import UTC, tzinfo

from mercury.core.when import format_both, zone_name
from mercury.dashboard.filters import duration
from mercury.storage.tasks import TaskRecord

__all__ = ["describe_cron", "describe_schedule"]

_DAYS = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_DAY_NAMES = {d[:3].lower(): i for i, d in enumerate(_DAYS[:7])}
_NUMBER = re.compile(r"\d{1,2}")


def _day(token: str) -> str | None:
    token = token.lower()
    if token in _DAY_NAMES:
        return _DAYS[_DAY_NAMES[token]]
    if _NUMBER.fullmatch(token) and int(token) <= 7:
        return _DAYS[int(token)]
    return None


def _days(field: str) -> str | None:
    """A day-of-week field in words: `1-5` -> weekdays, `1,3` -> Mondays and Wednesdays."""
    if field == "*":
        return "every day"
    if field.lower() in ("1-5", "mon-fri"):
        return "weekdays"
    if field.lower() in ("0,6", "6,0", "sat,sun", "sun,sat"):
        return "weekends"
    names = [_day(t) for t in field.split(",")]
    if any(n is None for n in names):
        return None
    return " and ".join(f"{n}s" for n in names if n is not None)


def describe_cron(expr: str, zone: tzinfo = UTC) -> str | None:
    """Common cron shapes in words (`weekdays at 09:00 Europe/Berlin`, on the space's
    clock); None for anything else."""
    fields = expr.split()
    if len(fields) != 5:
        return None
    minute, hour, dom, month, dow = fields
    if dom != "*" or month != "*":
        return None
    if hour == "*" and dow == "*":
        if minute == "*":
            return "every minute"
        if minute.startswith("*/") and minute[2:].isdigit():
            return f"every {int(minute[2:])} min"
        if _NUMBER.fullmatch(minute):
            return f"hourly at :{int(minute):02d}"
        return None
    if not (_NUMBER.fullmatch(minute) and _NUMBER.fullmatch(hour)):
        return None
    days = _days(dow)
    if days is None:
        return None
    return f"{days} at {int(hour):02d}:{int(minute):02d} {zone_name(zone)}"


def describe_schedule(task: TaskRecord, zone: tzinfo = UTC) -> str:
    """A task's schedule as an operator reads it: `every 1 h 30 min`, `once at …`."""
    if task.cron is not None:
        words = describe_cron(task.cron, zone)
        return f"{words} (cron {task.cron})" if words else f"cron {task.cron}"
    if task.interval_s is not None:
        return f"every {duration(task.interval_s)}"
    if task.run_at is not None:
        return f"once at {format_both(task.run_at, zone)}"
    return "no schedule"
