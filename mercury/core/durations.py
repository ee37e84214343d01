"""The one duration grammar: config values, `/pause 30m` and the host API all read it.

A duration is one or more `<number><unit>` parts, optionally separated by spaces, in any
case: `30s`, `10m`, `1.5h`, `1h30m`, `90 min`, `2 weeks`, `250ms`. Units: ms; s, sec,
second; m, min, minute; h, hr, hour; d, day; w, week (plurals too). A plain positive
number is seconds. The total must be above zero. Three parsers used to disagree (`1.5h`
worked for /pause but not the host API, `1w` for /pause but not the config): there is
now only this one.
"""

from __future__ import annotations

import re

_UNIT_S: dict[str, float] = {
    "ms": 0.001,
    "s": 1,
    "m": 60,
    "h": 3600,
    "d": 86400,
    "w": 604800,
}
_ALIASES = {
    "sec": "s", "secs": "s", "second": "s", "seconds": "s",
    "min": "m", "mins": "m", "minute": "m", "minutes": "m",
    "hr": "h", "hrs": "h", "hour": "h", "hours": "h",
    "day": "d", "days": "d",
    "week": "w", "weeks": "w",
}  # fmt: skip
_PART = re.compile(r"(\d+(?:\.\d+)?)([a-z]+)")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")

EXAMPLES = "30s, 10m, 1.5h, 1h30m, 2d or 1w"


class DurationError(ValueError):
    """Not a duration; the message quotes the input and gives examples."""

    def __init__(self, value: object) -> None:
        super().__init__(f"not a duration: {value!r} (use e.g. {EXAMPLES})")
        self.value = value


def parse_duration(value: str | int | float) -> float:
    """A duration (see the module docstring) -> seconds, > 0. Raises DurationError."""
    if isinstance(value, bool):
        raise DurationError(value)
    if isinstance(value, int | float):
        if value > 0:
            return float(value)
        raise DurationError(value)
    if not isinstance(value, str):
        raise DurationError(value)
    text = value.strip().lower().replace(" ", "")
    if _NUMBER.fullmatch(text):
        seconds = float(text)
    else:
        seconds = 0.0
        pos = 0
        for m in _PART.finditer(text):
            unit = _ALIASES.get(m.group(2), m.group(2))
            if m.start() != pos or unit not in _UNIT_S:
                raise DurationError(value)
            seconds += float(m.group(1)) * _UNIT_S[unit]
            pos = m.end()
        if not text or pos != len(text):
            raise DurationError(value)
    if seconds <= 0:
        raise DurationError(value)
    return seconds


def is_duration(value: str) -> bool:
    try:
        parse_duration(value)
    except DurationError:
        return False
    return True
