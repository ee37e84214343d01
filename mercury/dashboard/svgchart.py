"""Charts drawn on the server as SVG: no chart library to vendor, nothing run in the browser.

Why server-drawn: the dashboard ships no JavaScript build and no CDN; an SVG built here is
readable without JavaScript, scales on a phone, and each bar carries a <title> a screen
reader (or a hover) reads out. Everything here is a pure function of its inputs — the
numbers, labels and colours in, escaped markup out — so it is unit-tested without a server.

`stacked_bars` draws one bar per category (a day) stacked by series (a space), with a
y axis on "nice" round ticks, thinned x labels, and returns the legend entries for the
page to show as HTML (text that wraps on a narrow screen instead of shrinking inside the
image).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

from markupsafe import Markup

__all__ = [
    "OTHER_COLOR",
    "PALETTE",
    "Chart",
    "LegendItem",
    "Series",
    "color_for",
    "compact",
    "label_positions",
    "nice_ticks",
    "stacked_bars",
]

# Okabe-Ito's colour-blind-safe set (minus black and yellow, hard to see on white), then
# a few more distinct hues; "other" is grey.
PALETTE: tuple[str, ...] = (
    "#0072B2",
    "#E69F00",
    "#009E73",
    "#CC79A7",
    "#D55E00",
    "#56B4E9",
    "#7B61FF",
    "#8C564B",
)
OTHER_COLOR = "#9AA0A6"


@dataclass(frozen=True, slots=True)
class Series:
    """One stacked layer: a label and one value per category (same order, same length)."""

    label: str
    values: tuple[float, ...]
    color: str | None = None  # None: the palette's colour for its position


@dataclass(frozen=True, slots=True)
class LegendItem:
    label: str
    color: str
    total: float


@dataclass(frozen=True, slots=True)
class Chart:
    """The drawn SVG (safe markup for a template) and the legend to show beside it."""

    svg: Markup
    legend: tuple[LegendItem, ...]
    empty: bool


def color_for(index: int) -> str:
    """The palette's colour for series number `index` (cycling past the end)."""
    return PALETTE[index % len(PALETTE)]


def compact(value: float) -> str:
    """A short axis label: 950, 1.2k, 3.4M, 2.1G (no trailing .0)."""
    sign = "-" if value < 0 else ""
    value = abs(value)
    for bound, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= bound:
            text = f"{value / bound:.1f}".removesuffix(".0")
            return f"{sign}{text}{suffix}"
    if value == int(value):
        return f"{sign}{int(value)}"
    return f"{sign}{value:.2g}" if value < 1 else f"{sign}{value:.1f}".removesuffix(".0")


def nice_ticks(top: float, count: int = 5) -> list[float]:
    """Round tick values from 0 to at least `top`: steps of 1, 2, 2.5 or 5 times a power of 10.

    `count` is the most intervals wanted; a `top` of 0 (no data) still gives an axis 0..1.
    """
    if not math.isfinite(top) or top <= 0:
        top = 1.0
    count = max(1, count)
    raw = top / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    intervals = math.ceil(top / step - 1e-9)
    return [round(i * step, 10) for i in range(intervals + 1)]


def label_positions(n: int, most: int) -> list[int]:
    """Which of `n` categories get an x label: at most `most`, evenly spaced, last included."""
    if n <= 0:
        return []
    if n <= most:
        return list(range(n))
    step = math.ceil((n - 1) / max(1, most - 1))
    picked = list(range(n - 1, -1, -step))
    return sorted(picked)


def _num(x: float) -> str:
    """A coordinate with at most two decimals."""
    return f"{x:.2f}".rstrip("0").rstrip(".")


def stacked_bars(
    categories: Sequence[str],
    series: Sequence[Series],
    *,
    title: str,
    description: str = "",
    unit: Callable[[float], str] = compact,
    axis: Callable[[float], str] = compact,
    width: int = 720,
    height: int = 300,
    max_labels: int = 8,
    short_label: Callable[[str], str] = lambda c: c,
) -> Chart:
    """A stacked bar chart: one bar per category, one coloured layer per series.

    `unit` formats a value in a bar's <title> ("1,234 tokens"), `axis` a tick label,
    `short_label` a category under the axis ("03-10" for "2026-03-10"). Zero values draw
    nothing. The SVG scales to its container (viewBox) and names itself for screen
    readers with <title> and <desc>.
    """
    n = len(categories)
    for s in series:
        if len(s.values) != n:
            raise ValueError(f"series {s.label!r} has {len(s.values)} values for {n} categories")
    colors = [s.color or color_for(i) for i, s in enumerate(series)]
    totals = [sum(s.values[i] for s in series) for i in range(n)]
    legend = tuple(LegendItem(s.label, colors[i], sum(s.values)) for i, s in enumerate(series))
    empty = not any(t > 0 for t in totals)
    ticks = nice_ticks(max(totals, default=0.0))
    top = ticks[-1]

    left, right, top_pad, bottom = 56, 12, 12, 36
    plot_w = width - left - right
    plot_h = height - top_pad - bottom
    base_y = top_pad + plot_h

    def y_of(value: float) -> float:
        return base_y - value / top * plot_h

    out: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}"'
        f' role="img" aria-labelledby="chart-title chart-desc" preserveAspectRatio="xMinYMin meet"'
        f' font-family="system-ui, sans-serif" font-size="13">',
        f'<title id="chart-title">{escape(title)}</title>',
        f'<desc id="chart-desc">{escape(description or title)}</desc>',
    ]
    # Grid lines and y tick labels.
    out.append('<g class="axis y" fill="#555" text-anchor="end">')
    for tick in ticks:
        y = _num(y_of(tick))
        out.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y}" y2="{y}" stroke="#e3e3e3"/>'
            f'<text x="{left - 6}" y="{y}" dy="0.32em">{escape(axis(tick))}</text>'
        )
    out.append("</g>")
    # Bars.
    slot = plot_w / n if n else plot_w
    bar_w = max(1.0, slot * 0.72)
    out.append('<g class="bars">')
    for i, category in enumerate(categories):
        x = left + i * slot + (slot - bar_w) / 2
        acc = 0.0
        for s, color in zip(series, colors, strict=True):
            value = s.values[i]
            if value <= 0:
                continue
            y_top, y_bottom = y_of(acc + value), y_of(acc)
            acc += value
            tip = f"{category} · {s.label}: {unit(value)}"
            out.append(
                f'<rect x="{_num(x)}" y="{_num(y_top)}" width="{_num(bar_w)}"'
                f' height="{_num(max(0.5, y_bottom - y_top))}" fill="{escape(color)}">'
                f"<title>{escape(tip)}</title></rect>"
            )
        if acc > 0 and len(series) > 1:
            # The bar's total, for a hover over its top edge.
            out.append(
                f'<rect x="{_num(x)}" y="{_num(y_of(acc) - 4)}" width="{_num(bar_w)}"'
                f' height="4" fill="transparent">'
                f"<title>{escape(f'{category} · total: {unit(acc)}')}</title></rect>"
            )
    out.append("</g>")
    # X axis and its thinned labels.
    out.append(
        f'<line x1="{left}" x2="{width - right}" y1="{base_y}" y2="{base_y}" stroke="#888"/>'
    )
    out.append('<g class="axis x" fill="#555" text-anchor="middle">')
    for i in label_positions(n, max_labels):
        cx = left + i * slot + slot / 2
        out.append(
            f'<text x="{_num(cx)}" y="{base_y + 20}">{escape(short_label(categories[i]))}</text>'
        )
    out.append("</g>")
    if empty:
        out.append(
            f'<text x="{left + plot_w / 2:.0f}" y="{top_pad + plot_h / 2:.0f}"'
            f' text-anchor="middle" fill="#777">No data in this period</text>'
        )
    out.append("</svg>")
    return Chart(svg=Markup("".join(out)), legend=legend, empty=empty)
