"""SpaceRecord's pause answers, a pure decision: no database needed to test it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mercury.storage.spaces import SpaceRecord

NOW = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)


def space(paused_until: datetime | None) -> SpaceRecord:
    return SpaceRecord(
        id="s",
        name="s",
        profile="general",
        created_at=NOW - timedelta(days=1),
        paused_until=paused_until,
        context_reset_at=None,
    )


@pytest.mark.parametrize(
    ("paused_until", "paused", "ends"),
    [
        (None, False, None),
        (NOW + timedelta(minutes=30), True, NOW + timedelta(minutes=30)),
        (NOW, False, NOW),  # over at its end time
        (NOW - timedelta(minutes=1), False, NOW - timedelta(minutes=1)),
        # What /pause without a duration stored before the marker had a name.
        (datetime(9999, 1, 1, tzinfo=UTC), True, None),
        (datetime(9999, 12, 31, tzinfo=UTC), True, None),
    ],
)
def test_is_paused_and_pause_ends(
    paused_until: datetime | None, paused: bool, ends: datetime | None
) -> None:
    record = space(paused_until)
    assert record.is_paused(NOW) is paused
    assert record.pause_ends == ends


def test_a_pause_until_resumed_outlasts_any_clock() -> None:
    record = space(datetime(9999, 1, 1, tzinfo=UTC))
    assert record.is_paused(datetime(9998, 12, 31, tzinfo=UTC))
