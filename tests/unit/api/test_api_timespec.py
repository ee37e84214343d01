"""How the host API reads "when": durations, times and cron expressions (no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from mercury.api.routes.timespec import parse_duration, parse_time, validate_cron

NOW = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1h30m", timedelta(minutes=90)), ("2D", timedelta(days=2)), ("1.5h", timedelta(hours=1.5))],
)
def test_durations_use_the_one_grammar(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "0m", "1.5x", "h", "10 m z", "-1h"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2h", datetime(2030, 1, 1, 2, tzinfo=UTC)),  # a duration counts from now
        ("2030-01-02T10:00:00", datetime(2030, 1, 2, 10, tzinfo=UTC)),  # naive is UTC
        ("2030-01-02T10:00:00+02:00", datetime(2030, 1, 2, 8, tzinfo=UTC)),
    ],
)
def test_times_are_iso_or_a_duration_from_now(text: str, expected: datetime) -> None:
    assert parse_time(text, now=NOW) == expected


def test_a_time_that_is_neither_names_the_forms() -> None:
    with pytest.raises(ValueError, match=r"cannot read 'next tuesday' as a time: .*in 2h.*ISO"):
        parse_time("next tuesday", now=NOW)


def test_times_are_read_in_the_zone_given() -> None:
    # Plain words and offset-less ISO times are the space's clock (core/when.py).
    berlin = ZoneInfo("Europe/Berlin")
    assert parse_time("tomorrow 09:00", now=NOW, zone=berlin) == datetime(2030, 1, 2, 8, tzinfo=UTC)
    assert parse_time("2030-01-02T10:00", now=NOW, zone=berlin) == datetime(
        2030, 1, 2, 9, tzinfo=UTC
    )


def test_cron_is_normalised() -> None:
    assert validate_cron("*/15 0-6,22 1 jan-mar 0,7") == "*/15 0-6,22 1 jan-mar 0,7"
    assert validate_cron("  0   9 * *  mon ") == "0 9 * * mon"


@pytest.mark.parametrize(
    ("expr", "fragment"),
    [
        ("* * * * * *", "5 fields"),
        ("5-1 * * * *", "low to high"),
        ("* 24 * * *", "outside 0-23"),
        ("* * 0 * *", "outside 1-31"),
        ("a b c d e", "not a number"),
        ("*/0 * * * *", "positive"),
    ],
)
def test_bad_cron_names_the_problem(expr: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        validate_cron(expr)
