"""Plain-word task times (core/when.py) at fixed moments, in fixed zones, across DST changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from mercury.core.when import (
    TIMEZONE_PREF,
    WhenError,
    format_both,
    format_local,
    future_when,
    next_cron_in_zone,
    parse_when,
    space_timezone,
    zone_named,
)

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
# Saturday 2024-03-30, 13:00 in Berlin (CET, +01:00); Berlin's clocks go forward on Sunday
# 2024-03-31 at 02:00 (to 03:00 CEST, +02:00).
SAT_NOON_UTC = datetime(2024, 3, 30, 12, 0, tzinfo=UTC)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("in 2h", utc(2024, 3, 30, 14, 0)),
        ("in 30m", utc(2024, 3, 30, 12, 30)),
        ("in 1d 2h", utc(2024, 3, 31, 14, 0)),  # elapsed time: 24 h + 2 h across the change
        ("In 90 min", utc(2024, 3, 30, 13, 30)),
        ("2h", utc(2024, 3, 30, 14, 0)),  # a bare duration, as the host API always read it
        # The next 14:00 on Berlin's clock is today (now is 13:00 there).
        ("14:00", utc(2024, 3, 30, 13, 0)),
        ("2pm", utc(2024, 3, 30, 13, 0)),
        # 09:00 has passed today: tomorrow, which is already summer time (+02:00).
        ("09:00", utc(2024, 3, 31, 7, 0)),
        ("9am", utc(2024, 3, 31, 7, 0)),
        ("9 AM", utc(2024, 3, 31, 7, 0)),
        ("9:00", utc(2024, 3, 31, 7, 0)),
        ("noon", utc(2024, 3, 31, 10, 0)),
        ("12am", utc(2024, 3, 30, 23, 0)),  # midnight tonight, still winter time
        ("tomorrow 09:00", utc(2024, 3, 31, 7, 0)),
        ("tomorrow at 9am", utc(2024, 3, 31, 7, 0)),
        ("9am tomorrow", utc(2024, 3, 31, 7, 0)),
        ("today 18:30", utc(2024, 3, 30, 17, 30)),
        ("today 5:30pm", utc(2024, 3, 30, 16, 30)),
        ("monday 9:00", utc(2024, 4, 1, 7, 0)),
        ("mon 9am", utc(2024, 4, 1, 7, 0)),
        ("Monday, 9am", utc(2024, 4, 1, 7, 0)),
        # Today is Saturday: 14:00 is still ahead, 9am has passed (so: next week's).
        ("sat 14:00", utc(2024, 3, 30, 13, 0)),
        ("saturday 9am", utc(2024, 4, 6, 7, 0)),
        ("sun 9am", utc(2024, 3, 31, 7, 0)),
        ("2024-04-01T09:00", utc(2024, 4, 1, 7, 0)),  # no offset: the zone's
        ("2024-04-01 09:00", utc(2024, 4, 1, 7, 0)),
        ("2024-04-01 9pm", utc(2024, 4, 1, 19, 0)),
        ("2024-04-01T09:00:00+00:00", utc(2024, 4, 1, 9, 0)),
        ("2024-04-01T09:00Z", utc(2024, 4, 1, 9, 0)),
        ("2024-04-01T09:00:00-05:00", utc(2024, 4, 1, 14, 0)),
        ("2024-04-01", utc(2024, 3, 31, 22, 0)),  # a bare date: its midnight
    ],
)
def test_plain_words_in_berlin(text: str, expected: datetime) -> None:
    got = parse_when(text, SAT_NOON_UTC, BERLIN)
    assert got == expected
    assert got.tzinfo is UTC


def test_the_same_words_in_another_zone_are_another_instant() -> None:
    # 08:00 in New York (EDT, -04:00) is 12:00 UTC; 09:00 is an hour ahead.
    assert parse_when("09:00", SAT_NOON_UTC, NEW_YORK) == utc(2024, 3, 30, 13, 0)
    assert parse_when("09:00", SAT_NOON_UTC, UTC) == utc(2024, 3, 31, 9, 0)
    assert parse_when("tomorrow 09:00", SAT_NOON_UTC, NEW_YORK) == utc(2024, 3, 31, 13, 0)
    # "today" is the zone's today: at 23:30 UTC on the 30th it is already the 31st in
    # Berlin, still the 30th in New York.
    late = utc(2024, 3, 30, 23, 30)
    assert parse_when("today 20:00", late, BERLIN) == utc(2024, 3, 31, 18, 0)
    assert parse_when("today 20:00", late, NEW_YORK) == utc(2024, 3, 31, 0, 0)


def test_a_naive_now_is_utc() -> None:
    assert parse_when("in 1h", datetime(2024, 3, 30, 12, 0), UTC) == utc(2024, 3, 30, 13, 0)


def test_wall_clock_times_keep_their_hour_across_a_dst_change() -> None:
    # Friday before the spring change: 09:00 each day is 08:00 UTC, then 07:00 UTC.
    friday = utc(2024, 3, 29, 12, 0)
    assert parse_when("sat 9:00", friday, BERLIN) == utc(2024, 3, 30, 8, 0)
    assert parse_when("sun 9:00", friday, BERLIN) == utc(2024, 3, 31, 7, 0)
    # Autumn (2024-10-27, 03:00 CEST -> 02:00 CET): 09:00 becomes 08:00 UTC again.
    assert parse_when("tomorrow 9:00", utc(2024, 10, 26, 12, 0), BERLIN) == utc(2024, 10, 27, 8, 0)


def test_a_skipped_wall_time_is_read_an_hour_later_and_a_repeated_one_first() -> None:
    # 02:30 does not happen in Berlin on 2024-03-31: read with the winter offset, i.e.
    # 01:30 UTC, which the clock shows as 03:30.
    skipped = parse_when("tomorrow 02:30", SAT_NOON_UTC, BERLIN)
    assert skipped == utc(2024, 3, 31, 1, 30)
    assert format_local(skipped, BERLIN) == "2024-03-31 03:30 CEST"
    # 02:30 happens twice on 2024-10-27: the first (CEST, 00:30 UTC).
    assert parse_when("tomorrow 02:30", utc(2024, 10, 26, 12, 0), BERLIN) == utc(
        2024, 10, 27, 0, 30
    )


@pytest.mark.parametrize(
    "text",
    ["", "   ", "soon", "9", "25:00", "9:75", "13pm", "0am", "in soon", "in", "mon tue 9am",
     "9am 10am", "next week", "2024-02-30 09:00", "mo 9am", "-2h"],
)  # fmt: skip
def test_unreadable_times_name_the_accepted_forms(text: str) -> None:
    with pytest.raises(WhenError) as err:
        parse_when(text, SAT_NOON_UTC, BERLIN)
    message = str(err.value)
    assert "in 2h" in message and "tomorrow 09:00" in message and "ISO" in message
    assert "Europe/Berlin" in message


def test_a_day_without_a_time_asks_for_one() -> None:
    with pytest.raises(WhenError, match=r"'tomorrow' needs a time of day too.*tomorrow 09:00"):
        parse_when("tomorrow", SAT_NOON_UTC, BERLIN)


def test_future_when_refuses_the_past_and_says_when_that_was() -> None:
    with pytest.raises(WhenError, match=r"'today 08:00' is in the past \(2024-03-30 08:00 CET\)"):
        future_when("today 08:00", SAT_NOON_UTC, BERLIN)
    with pytest.raises(WhenError, match="in the past"):
        future_when("2001-01-01T00:00:00Z", SAT_NOON_UTC, BERLIN)
    assert future_when("today 18:00", SAT_NOON_UTC, BERLIN) == utc(2024, 3, 30, 17, 0)


# --------------------------------------------------------------------------- zones


def test_zone_named_accepts_iana_names_and_refuses_the_rest() -> None:
    assert zone_named("Europe/Berlin") == BERLIN
    assert zone_named(" UTC ").key == "UTC"
    for bad in ("europe/berlin", "Mars/Olympus", "", "../../etc/passwd", "/etc/localtime"):
        with pytest.raises(WhenError, match=r"unknown time zone.*IANA name like Europe/Berlin"):
            zone_named(bad)


def test_space_timezone_is_the_space_own_else_the_default() -> None:
    assert space_timezone({}, "Europe/Berlin") == BERLIN
    assert space_timezone({TIMEZONE_PREF: "America/New_York"}, "Europe/Berlin") == NEW_YORK
    assert space_timezone({}).key == "UTC"
    # A stored zone the zone database no longer knows falls back to the default.
    assert space_timezone({TIMEZONE_PREF: "Gone/Zone"}, "Europe/Berlin") == BERLIN


# --------------------------------------------------------------------------- cron in a zone


def test_cron_is_read_on_the_zone_wall_clock_across_dst() -> None:
    daily = "0 9 * * *"
    assert next_cron_in_zone(daily, SAT_NOON_UTC, BERLIN) == utc(2024, 3, 31, 7, 0)
    assert next_cron_in_zone(daily, utc(2024, 3, 29, 12, 0), BERLIN) == utc(2024, 3, 30, 8, 0)
    assert next_cron_in_zone(daily, SAT_NOON_UTC, UTC) == utc(2024, 3, 31, 9, 0)
    weekdays = "0 9 * * 1-5"
    assert next_cron_in_zone(weekdays, SAT_NOON_UTC, NEW_YORK) == utc(2024, 4, 1, 13, 0)


def test_cron_slots_skipped_or_repeated_by_a_clock_change_run_once() -> None:
    at_0230 = "30 2 * * *"
    # Spring: 02:30 does not exist; it runs at 03:30 CEST (01:30 UTC).
    assert next_cron_in_zone(at_0230, SAT_NOON_UTC, BERLIN) == utc(2024, 3, 31, 1, 30)
    # Autumn: 02:30 happens twice; it runs on the first pass, then the next day.
    first = next_cron_in_zone(at_0230, utc(2024, 10, 26, 12, 0), BERLIN)
    assert first == utc(2024, 10, 27, 0, 30)
    assert next_cron_in_zone(at_0230, first, BERLIN) == utc(2024, 10, 28, 1, 30)
    # Started during the second pass, a half-hourly task still runs in it.
    half_hourly = "*/30 * * * *"
    assert next_cron_in_zone(half_hourly, utc(2024, 10, 27, 1, 10), BERLIN) == utc(
        2024, 10, 27, 1, 30
    )


# --------------------------------------------------------------------------- showing


def test_times_are_shown_on_the_space_clock_and_in_utc() -> None:
    when = utc(2024, 4, 1, 7, 0)
    assert format_local(when, BERLIN) == "2024-04-01 09:00 CEST"
    assert format_both(when, BERLIN) == "2024-04-01 09:00 CEST (07:00 UTC)"
    assert format_both(when, UTC) == "2024-04-01 07:00 UTC"
    assert format_both(utc(2024, 4, 1, 2, 0), NEW_YORK) == (
        "2024-03-31 22:00 EDT (2024-04-01 02:00 UTC)"
    )
    assert format_both(when + timedelta(seconds=59), zone_named("UTC")) == "2024-04-01 07:00 UTC"
