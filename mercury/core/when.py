"""When, in plain words: one-shot task times and the time zone they are read in (pure).

A task's one-shot time is written by people - on the CLI (`mercury tasks add --at`), by the
agent through the host API (POST /spaces/{id}/tasks `at`) - so it is read the way people
write it, in the space's time zone (`scheduler.timezone`, or the space's own, set with
`mercury tasks timezone`):

- `in 2h`, `in 30m`, `in 1d 2h` (the one duration grammar, core/durations.py; a bare
  duration such as `2h` too): that much elapsed time from now;
- `09:00`, `9am`, `5:30pm`, `noon`: the next time the clock shows it;
- `today 18:30`, `tomorrow 09:00`, `monday 9:00`, `mon 9am` (also `9am tomorrow`, `at` is
  optional): that day's time (a weekday means the next such day, today if still ahead);
- ISO 8601: `2030-01-31T09:00`, `2030-01-31 09:00`, `2030-01-31T09:00:00+02:00`,
  `...Z`; without an offset it is read in the zone.

Daylight saving changes are the zone database's (zoneinfo): `09:00` is 09:00 on the wall
clock whatever the offset that day. A wall time that happens twice (clocks going back) is
the first of the two; one that does not happen (clocks going forward) is read with the
offset before the change, i.e. an hour later on the new clock. `in 1d` is 24 hours of
elapsed time, not "the same clock time tomorrow" (that is `tomorrow 09:00`).

Cron expressions of tasks are read in the same zone: `0 9 * * 1-5` means 09:00 on the
space's clock (`next_cron_in_zone`).

Nothing here reads a clock: `now` is passed in, so the rules are tested with fixed times.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from mercury.core import durations

# The space preference that holds a space's own time zone (an IANA name).
TIMEZONE_PREF = "_timezone"
DEFAULT_ZONE = "UTC"

FORMS = (
    '"in 2h", "in 1d 2h", "17:30", "9am", "tomorrow 09:00", "today 18:30", "monday 9am" '
    "or an ISO time like 2030-01-31T09:00"
)

_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_CLOCK = re.compile(r"(?P<h>\d{1,2})(?::(?P<m>\d{2}))?(?P<ampm>am|pm)?")
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


class WhenError(ValueError):
    """A time or zone that cannot be read; the message says which forms are accepted."""


# --------------------------------------------------------------------------- zones


def zone_named(name: str) -> ZoneInfo:
    """The IANA time zone `name` (e.g. Europe/Berlin); WhenError naming it otherwise.

    Names are case-sensitive in the zone database; a wrong case is answered with the right
    spelling rather than a bare "unknown"."""
    text = name.strip() if isinstance(name, str) else ""
    # A path-like or empty name is not a zone (and must not reach the file lookup).
    if text and not text.startswith(("/", ".")) and ".." not in text:
        try:
            return ZoneInfo(text)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            pass
    raise WhenError(
        f"unknown time zone {name!r}: use an IANA name like Europe/Berlin, America/New_York or UTC"
    )


def space_timezone(prefs: Mapping[str, str], default: str = DEFAULT_ZONE) -> ZoneInfo:
    """The zone a space's times are read and shown in: its own (preference `_timezone`),
    else `default` (the config's `scheduler.timezone`, checked when the config loads).

    A stored zone that no longer exists (the zone database changed) falls back to the
    default rather than breaking every task of the space."""
    own = prefs.get(TIMEZONE_PREF)
    if own:
        try:
            return zone_named(own)
        except WhenError:
            pass
    return zone_named(default)


def zone_name(zone: tzinfo) -> str:
    """The name people know a zone by: its IANA key (`Europe/Berlin`), else its str."""
    return getattr(zone, "key", None) or str(zone)


# --------------------------------------------------------------------------- parsing


def _bad(text: str, zone: tzinfo) -> WhenError:
    return WhenError(
        f"cannot read {text!r} as a time: use e.g. {FORMS} (times without an offset are "
        f"in {zone_name(zone)})"
    )


def parse_when(text: str, now: datetime, zone: tzinfo) -> datetime:
    """A time in plain words (see the module docstring) -> an aware UTC datetime.

    `now` is any aware datetime (naive = UTC); `zone` is the space's zone. The result may
    be in the past for explicit dates (`today 08:00` at noon, an old ISO time): callers
    that need a future time use `future_when`. Raises WhenError naming the accepted forms.
    """
    if not isinstance(text, str) or not text.strip():
        raise _bad(str(text), zone)
    now = _utc(now)
    value = " ".join(text.strip().lower().replace(",", " ").split())
    if value.startswith("in "):
        try:
            return now + timedelta(seconds=durations.parse_duration(value[3:]))
        except durations.DurationError:
            raise _bad(text, zone) from None
    # A bare duration is from now too, as the host API always read it; a bare number is
    # not (is "9" nine seconds or nine o'clock?).
    if durations.is_duration(value) and not re.fullmatch(r"[\d.]+", value):
        return now + timedelta(seconds=durations.parse_duration(value))
    iso = _iso(text.strip(), zone)
    if iso is not None:
        return iso
    words = _words(value, now, zone)
    if words is None:
        raise _bad(text, zone)
    return words


def future_when(text: str, now: datetime, zone: tzinfo) -> datetime:
    """`parse_when`, refusing a time that is not after `now` (saying when it was)."""
    when = parse_when(text, now, zone)
    if when <= _utc(now):
        raise WhenError(f"{text.strip()!r} is in the past ({format_local(when, zone)})")
    return when


def _utc(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _iso(text: str, zone: tzinfo) -> datetime | None:
    """An ISO 8601 date-time (a bare date is midnight); None when it is not one."""
    if not _ISO_DATE.match(text):
        return None
    try:
        when = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=zone)
    return when.astimezone(UTC)


def _clock(token: str) -> time | None:
    """`09:00`, `9:00`, `9am`, `5:30pm`, `12am` (midnight), `noon` -> a time of day."""
    if token == "noon":
        return time(12, 0)
    m = _CLOCK.fullmatch(token)
    if m is None:
        return None
    hour, minute = int(m["h"]), int(m["m"] or 0)
    ampm = m["ampm"]
    if ampm is None:
        if m["m"] is None:  # a bare number ("9") is not a time: 9 what?
            return None
        if hour > 23:
            return None
    else:
        if not 1 <= hour <= 12:
            return None
        hour = hour % 12 + (12 if ampm == "pm" else 0)
    if minute > 59:
        return None
    return time(hour, minute)


def _weekday(token: str) -> int | None:
    """`mon`, `tues`, `wednesday` -> 0..6 (Monday first); None for anything else."""
    if len(token) < 3:
        return None
    for i, name in enumerate(_WEEKDAYS):
        if name.startswith(token):
            return i
    return None


def _words(value: str, now: datetime, zone: tzinfo) -> datetime | None:
    """`[day] [at] clock` or `clock [day]` -> UTC; None when it is not that."""
    # "9 am" -> "9am"; "at" is only filler.
    value = re.sub(r"(\d)\s+(am|pm)\b", r"\1\2", value)
    tokens = [t for t in value.split() if t != "at"]
    clock: time | None = None
    day: str | None = None
    for token in tokens:
        as_clock = _clock(token)
        if as_clock is not None and clock is None:
            clock = as_clock
        elif day is None and (
            token in ("today", "tomorrow") or _weekday(token) is not None or _is_date(token)
        ):
            day = token
        else:
            return None
    if clock is None:
        if day is not None:
            raise WhenError(f'{value!r} needs a time of day too, e.g. "{day} 09:00"')
        return None
    local_now = now.astimezone(zone)
    today = local_now.date()
    if day is None:
        when = _at(today, clock, zone)
        return when if when > now else _at(today + timedelta(days=1), clock, zone)
    if day == "today":
        return _at(today, clock, zone)
    if day == "tomorrow":
        return _at(today + timedelta(days=1), clock, zone)
    if _is_date(day):
        return _at(date.fromisoformat(day), clock, zone)
    weekday = _weekday(day)
    assert weekday is not None
    ahead = (weekday - today.weekday()) % 7
    when = _at(today + timedelta(days=ahead), clock, zone)
    return when if when > now else _at(today + timedelta(days=ahead or 7), clock, zone)


def _is_date(token: str) -> bool:
    if not _ISO_DATE.fullmatch(token):
        return False
    try:
        date.fromisoformat(token)
    except ValueError:
        return False
    return True


def _at(day: date, clock: time, zone: tzinfo) -> datetime:
    """That wall-clock time on that day in the zone, in UTC (fold 0: see the docstring)."""
    return datetime.combine(day, clock, tzinfo=zone).astimezone(UTC)


# --------------------------------------------------------------------------- cron, showing


def next_cron_in_zone(expr: str, after: datetime, zone: tzinfo) -> datetime:
    """The first time after `after` that the 5-field cron `expr` matches on the zone's wall
    clock, in UTC.

    The expression is matched against wall-clock times, so `0 9 * * *` stays 09:00 across
    a daylight saving change. A slot the clock skips (02:30 when clocks go forward) is run
    an hour later on the new clock, as `parse_when` reads it; a wall time that happens
    twice (clocks going back) is run on its first pass only (unless `after` is already in
    the second pass)."""
    from croniter import croniter  # here: loading it costs ~50 ms, the config needs none

    after = _utc(after)
    wall = after.astimezone(zone).replace(tzinfo=None)
    slots = croniter(expr, wall)
    # A handful of tries is plenty: only a repeated hour's slots can fall before `after`.
    for _ in range(1000):
        naive = slots.get_next(datetime)
        for fold in (0, 1):
            when = naive.replace(tzinfo=zone, fold=fold).astimezone(UTC)
            if when > after:
                return when
    raise WhenError(f"cron {expr!r} has no next run")  # pragma: no cover - cannot happen


def format_local(when: datetime, zone: tzinfo) -> str:
    """`2030-01-31 09:00 CET`: a time on the space's clock, with the zone's abbreviation
    (UTC times say UTC)."""
    local = _utc(when).astimezone(zone)
    return f"{local:%Y-%m-%d %H:%M} {local.tzname() or zone_name(zone)}"


def format_both(when: datetime, zone: tzinfo) -> str:
    """`2030-01-31 09:00 CET (08:00 UTC)`; only the UTC time when the zone is UTC."""
    utc = _utc(when)
    local = utc.astimezone(zone)
    if local.utcoffset() == timedelta(0) and zone_name(zone) in ("UTC", "Etc/UTC", "Z"):
        return f"{utc:%Y-%m-%d %H:%M} UTC"
    same_day = local.date() == utc.date()
    other = f"{utc:%H:%M} UTC" if same_day else f"{utc:%Y-%m-%d %H:%M} UTC"
    return f"{format_local(utc, zone)} ({other})"


__all__ = [
    "DEFAULT_ZONE",
    "FORMS",
    "TIMEZONE_PREF",
    "WhenError",
    "format_both",
    "format_local",
    "future_when",
    "next_cron_in_zone",
    "parse_when",
    "space_timezone",
    "zone_name",
    "zone_named",
]
