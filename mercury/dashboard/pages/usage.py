"""The Usage page: tokens and cost per space per day, as a chart and tables, and as CSV.

Why it is built this way: with 100 spaces a chart of every space is unreadable and a
table of every space and day is thousands of rows. So the chart stacks the period's top
spaces (by the chosen measure) and draws the rest as one "other" layer — the day's total
minus theirs — and the tables show each space's totals and each day's totals. Every
number comes from an SQL aggregate (storage/stats.py, storage/usage_views.py) with at most
one row per day or space. The full per-space-per-day detail is the CSV download.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Literal

from aiohttp import web

from mercury.dashboard.deps import deps
from mercury.dashboard.filters import number, usd
from mercury.dashboard.render import page, render
from mercury.dashboard.svgchart import OTHER_COLOR, Chart, Series, compact, stacked_bars
from mercury.storage.models import utcnow
from mercury.storage.stats import (
    SpaceDayUsage,
    SpaceUsage,
    UsageTotals,
    usage_by_space,
    usage_per_space_per_day,
)
from mercury.storage.usage_views import DayUsage, space_names, usage_per_day

__all__ = [
    "PERIODS",
    "Metric",
    "build_series",
    "csv_cell",
    "metric_value",
    "parse_days",
    "parse_metric",
    "routes",
    "usage_csv",
]

routes = web.RouteTableDef()

Metric = Literal["tokens", "cost"]
PERIODS: tuple[int, ...] = (7, 30, 90, 365)
DEFAULT_DAYS = 30
TOP_SPACES = 6  # layers in the chart; the rest is "other"
TABLE_ROWS = 100  # spaces listed in the table (the CSV has them all)
SPACE_SCAN = 1000  # spaces summed for the ranking (one row each)
CSV_ROWS = 200_000  # a year of 500 spaces; the download says when it was cut short


def parse_days(raw: str | None) -> int:
    """The period asked for in `?days=`: one of PERIODS, else the default."""
    try:
        days = int(raw or "")
    except ValueError:
        return DEFAULT_DAYS
    return days if days in PERIODS else DEFAULT_DAYS


def parse_metric(raw: str | None) -> Metric:
    """`?metric=cost` charts dollars; anything else charts tokens."""
    return "cost" if raw == "cost" else "tokens"


def metric_value(totals: UsageTotals, metric: Metric) -> float:
    return totals.cost_usd if metric == "cost" else float(totals.tokens)


def build_series(
    days: Sequence[date],
    top: Sequence[str],
    points: Sequence[SpaceDayUsage],
    per_day: Sequence[DayUsage],
    names: Mapping[str, str],
    metric: Metric,
) -> list[Series]:
    """The chart's layers: one per space in `top` (in that order), then "other".

    "other" is each day's total (`per_day`) minus the top spaces' values that day; it is
    left out when it is zero on every day.
    """
    index = {d: i for i, d in enumerate(days)}
    values = {space: [0.0] * len(days) for space in top}
    for p in points:
        i = index.get(p.day)
        if i is not None and p.space_id in values:
            values[p.space_id][i] += metric_value(p.totals, metric)
    other = [0.0] * len(days)
    for d in per_day:
        i = index.get(d.day)
        if i is not None:
            other[i] = metric_value(d.totals, metric)
    for row in values.values():
        for i, v in enumerate(row):
            other[i] -= v
    # Floating sums of costs leave crumbs like 1e-17: that is no "other" usage.
    other = [v if v > 1e-9 else 0.0 for v in other]
    series = [Series(names.get(s, s), tuple(values[s])) for s in top]
    if any(other):
        series.append(Series("other spaces", tuple(other), OTHER_COLOR))
    return series


@dataclass(frozen=True, slots=True)
class SpaceRow:
    space_id: str
    name: str
    totals: UsageTotals


def _fmt(metric: Metric) -> tuple[str, str]:
    return ("cost in US dollars", "US dollars") if metric == "cost" else ("tokens", "tokens")


async def _view(request: web.Request, days: int, metric: Metric) -> dict[str, object]:
    db = deps(request).db
    last = utcnow().date()
    first = last - timedelta(days=days - 1)
    ranked: list[SpaceUsage] = await usage_by_space(db, since=first, until=last, limit=SPACE_SCAN)
    ranked.sort(key=lambda u: (-metric_value(u.totals, metric), u.space_id))
    top = [u.space_id for u in ranked[:TOP_SPACES] if metric_value(u.totals, metric) > 0]
    points = await usage_per_space_per_day(db, days=days, today=last, space_ids=top) if top else []
    per_day = await usage_per_day(db, days=days, today=last)
    table = ranked[:TABLE_ROWS]
    names = await space_names(db, [u.space_id for u in table] + top)
    day_list = [first + timedelta(days=i) for i in range(days)]
    series = build_series(day_list, top, points, per_day, names, metric)
    what, unit_words = _fmt(metric)
    chart: Chart = stacked_bars(
        [d.isoformat() for d in day_list],
        series,
        title=f"Usage per day, {what}, {first} to {last} (UTC)",
        description=(
            f"Stacked bars, one per day, one layer per space: the {len(top)} spaces with "
            f"the most {unit_words} in the period"
            + (", then all other spaces" if len(series) > len(top) else "")
        ),
        unit=(usd if metric == "cost" else (lambda v: f"{number(v)} tokens")),
        axis=usd if metric == "cost" else compact,
        short_label=lambda c: c[5:],
    )
    total = UsageTotals(
        input_tokens=sum(d.totals.input_tokens for d in per_day),
        output_tokens=sum(d.totals.output_tokens for d in per_day),
        cost_usd=sum(d.totals.cost_usd for d in per_day),
        runs=sum(d.totals.runs for d in per_day),
    )
    return {
        "days": days,
        "metric": metric,
        "periods": PERIODS,
        "first": first,
        "last": last,
        "chart": chart,
        "spaces": [
            SpaceRow(u.space_id, names.get(u.space_id, u.space_id), u.totals) for u in table
        ],
        "more_spaces": max(0, len(ranked) - TABLE_ROWS),
        "per_day": list(reversed(per_day)),  # newest first in the table
        "total": total,
    }


@routes.get("/usage")
@page
async def usage_page(request: web.Request) -> web.Response:
    days = parse_days(request.query.get("days"))
    metric = parse_metric(request.query.get("metric"))
    return render(request, "usage.html", **await _view(request, days, metric))


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(text: str) -> str:
    """A text cell a spreadsheet will not run as a formula (space names come from chats)."""
    return "'" + text if text.startswith(_FORMULA_START) else text


def usage_csv(rows: Sequence[SpaceDayUsage], names: Mapping[str, str]) -> str:
    """The CSV: one line per space and day, oldest day first; cost in US dollars."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\r\n")
    w.writerow(["date", "space", "space_name", "input_tokens", "output_tokens", "cost_usd", "runs"])
    for r in rows:
        w.writerow(
            [
                r.day.isoformat(),
                csv_cell(r.space_id),
                csv_cell(names.get(r.space_id, "")),
                r.totals.input_tokens,
                r.totals.output_tokens,
                f"{r.totals.cost_usd:.6f}",
                r.totals.runs,
            ]
        )
    return out.getvalue()


@routes.get("/usage.csv")
@page
async def usage_download(request: web.Request) -> web.Response:
    db = deps(request).db
    days = parse_days(request.query.get("days"))
    last = utcnow().date()
    first = last - timedelta(days=days - 1)
    rows = await usage_per_space_per_day(db, days=days, today=last, limit=CSV_ROWS)
    names = await space_names(db, {r.space_id for r in rows})
    return web.Response(
        text=usage_csv(rows, names),
        content_type="text/csv",
        charset="utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="mercury-usage-{first}-{last}.csv"',
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )
