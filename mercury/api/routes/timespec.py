"""When, as the host API accepts it: durations, times and cron expressions (pure, no I/O).

Durations use the one grammar of `core/durations.py`; a time is plain words or ISO 8601
in the space's time zone (`core/when.py`); a cron expression is checked for syntax only
(its runs are computed on the space's clock: core.when.next_cron_in_zone).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo

from mercury.core import durations
from mercury.core.when import parse_when
from mercury.storage import utcnow


def parse_duration(text: str) -> timedelta:
    """A duration in the one grammar (core/durations.py) -> timedelta; ValueError otherwise."""
    return timedelta(seconds=durations.parse_duration(text))


def parse_time(text: str, *, now: datetime | None = None, zone: tzinfo = UTC) -> datetime:
    """A time in plain words or ISO 8601 (core/when.py: "in 2h", "tomorrow 09:00", ...), read
    in `zone` (the space's; an ISO time without an offset too) -> aware UTC datetime.

    ValueError (core.when.WhenError) naming the accepted forms otherwise."""
    return parse_when(text, now or utcnow(), zone)


_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_CRON_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, {m: i + 1 for i, m in enumerate(_MONTHS)}),
    ("day of week", 0, 7, {d: i for i, d in enumerate(_WEEKDAYS)}),  # 0 and 7 are Sunday
)


def validate_cron(expr: str) -> str:
    """Check a 5-field cron expression syntactically; returns it normalised (single spaces).

    Each field is a comma list of `*`, `N`, `N-M`, any of them with `/STEP`; months and
    weekdays may be names (jan, mon). Raises ValueError naming the bad field.
    """
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(
            f"cron needs 5 fields (minute hour day-of-month month day-of-week), "
            f"got {len(fields)}: {expr!r}"
        )
    for text, (name, low, high, names) in zip(fields, _CRON_FIELDS, strict=True):
        for part in text.split(","):
            _check_cron_part(part.lower(), name, low, high, names)
    return " ".join(fields)


def _check_cron_part(part: str, name: str, low: int, high: int, names: dict[str, int]) -> None:
    def bad(why: str) -> ValueError:
        return ValueError(f"bad cron {name} field {part!r}: {why}")

    base, slash, step = part.partition("/")
    if slash and (not step.isdigit() or int(step) == 0):
        raise bad("the step after / must be a positive number")
    if base == "*":
        return

    def value(token: str) -> int:
        if token in names:
            return names[token]
        if not token.isdigit():
            raise bad(f"{token!r} is not a number")
        n = int(token)
        if not low <= n <= high:
            raise bad(f"{n} is outside {low}-{high}")
        return n

    start, dash, end = base.partition("-")
    first = value(start)
    if dash and value(end) < first:
        raise bad("a range must go from low to high")
