"""The one duration grammar, as a table: config, /pause and the host API all agree."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic_core import PydanticCustomError

from mercury.api.routes.timespec import parse_duration as api_duration
from mercury.config import parse_duration as config_duration
from mercury.core.commands import parse_duration as pause_duration
from mercury.core.durations import DurationError, parse_duration

GOOD = [
    ("30s", 30),
    ("10m", 600),
    ("2h", 7200),
    ("1.5h", 5400),
    ("1h30m", 5400),
    ("1h 30m", 5400),
    ("90 min", 5400),
    ("2 weeks", 1209600),
    ("1w", 604800),
    ("1d", 86400),
    ("2D", 172800),
    ("250ms", 0.25),
    ("12.5", 12.5),
    ("10 minutes", 600),
    (45, 45),
]
BAD = ["", "h", "forever", "m10", "-5s", "0m", "0", "1x", "10 m x", "1h-30m", 0, -1]


@pytest.mark.parametrize(("text", "seconds"), GOOD)
def test_every_reader_reads_a_duration_the_same(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)
    assert config_duration(text) == pytest.approx(seconds)
    if isinstance(text, str):
        assert pause_duration(text) == pytest.approx(seconds)
        assert api_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", BAD)
def test_every_reader_refuses_the_same_inputs(text: str | int) -> None:
    with pytest.raises(DurationError):
        parse_duration(text)
    with pytest.raises(PydanticCustomError):
        config_duration(text)
    if isinstance(text, str):
        assert pause_duration(text) is None
        with pytest.raises(ValueError):
            api_duration(text)


def test_booleans_are_not_durations() -> None:
    with pytest.raises(DurationError):
        parse_duration(True)
