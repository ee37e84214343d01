"""The Usage page's pure parts: the chart's layers, the query parameters, the CSV."""

from __future__ import annotations

import csv
import io
from datetime import date

import pytest

from mercury.dashboard.pages.usage import (
    DEFAULT_DAYS,
    build_series,
    csv_cell,
    parse_days,
    parse_metric,
    usage_csv,
)
from mercury.dashboard.svgchart import OTHER_COLOR
from mercury.storage.stats import SpaceDayUsage, UsageTotals
from mercury.storage.usage_views import DayUsage

D1, D2, D3 = date(2026, 3, 1), date(2026, 3, 2), date(2026, 3, 3)


def t(i: int = 0, o: int = 0, c: float = 0.0) -> UsageTotals:
    return UsageTotals(input_tokens=i, output_tokens=o, cost_usd=c, runs=1)


def test_top_spaces_then_other_as_the_rest_of_each_day() -> None:
    points = [
        SpaceDayUsage("a", D1, t(100, 50, 0.5)),
        SpaceDayUsage("b", D1, t(10, 0, 0.1)),
        SpaceDayUsage("a", D3, t(1, 1, 0.01)),
    ]
    per_day = [DayUsage(D1, t(200, 60, 0.7)), DayUsage(D3, t(2, 2, 0.01))]
    series = build_series([D1, D2, D3], ["a", "b"], points, per_day, {"a": "Alpha"}, "tokens")
    assert [(s.label, s.values) for s in series] == [
        ("Alpha", (150.0, 0.0, 2.0)),
        ("b", (10.0, 0.0, 0.0)),  # no name known: the id
        ("other spaces", (100.0, 0.0, 2.0)),
    ]
    assert series[-1].color == OTHER_COLOR
    cost = build_series([D1, D2, D3], ["a", "b"], points, per_day, {}, "cost")
    assert [s.label for s in cost] == ["a", "b", "other spaces"]
    assert cost[2].values[0] == pytest.approx(0.1)
    # 0.01 - 0.01 leaves no "other" that day, not a rounding crumb.
    assert cost[2].values[2] == 0.0


def test_no_other_layer_when_the_top_spaces_are_everything() -> None:
    points = [SpaceDayUsage("a", D1, t(5, 5))]
    series = build_series([D1], ["a"], points, [DayUsage(D1, t(5, 5))], {}, "tokens")
    assert [s.label for s in series] == ["a"]


def test_query_parameters_fall_back_to_defaults() -> None:
    assert parse_days("7") == 7
    assert parse_days("365") == 365
    assert parse_days("8") == DEFAULT_DAYS
    assert parse_days("x") == DEFAULT_DAYS
    assert parse_days(None) == DEFAULT_DAYS
    assert parse_metric("cost") == "cost"
    assert parse_metric("evil") == "tokens"


def test_csv_rows_and_formula_guard() -> None:
    rows = [
        SpaceDayUsage("web:1", D1, UsageTotals(10, 20, 0.123456789, 2)),
        SpaceDayUsage("=cmd", D2, UsageTotals(1, 2, 0.0, 1)),
    ]
    text = usage_csv(rows, {"web:1": "+SUM(A1)", "=cmd": "plain"})
    parsed = list(csv.reader(io.StringIO(text)))
    assert parsed[0] == [
        "date",
        "space",
        "space_name",
        "input_tokens",
        "output_tokens",
        "cost_usd",
        "runs",
    ]
    assert parsed[1] == ["2026-03-01", "web:1", "'+SUM(A1)", "10", "20", "0.123457", "2"]
    assert parsed[2] == ["2026-03-02", "'=cmd", "plain", "1", "2", "0.000000", "1"]
    assert csv_cell("@x") == "'@x" and csv_cell("-1") == "'-1" and csv_cell("ok") == "ok"
