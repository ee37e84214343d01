"""The server-drawn SVG chart: pure functions, checked by parsing what they draw."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from mercury.dashboard.svgchart import (
    OTHER_COLOR,
    PALETTE,
    Series,
    color_for,
    compact,
    label_positions,
    nice_ticks,
    stacked_bars,
)

SVG = "{http://www.w3.org/2000/svg}"


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)


@pytest.mark.parametrize(
    ("top", "ticks"),
    [
        (0, [0, 0.2, 0.4, 0.6, 0.8, 1.0]),
        (1234, [0, 250, 500, 750, 1000, 1250]),
        (100, [0, 20, 40, 60, 80, 100]),
        (7, [0, 2, 4, 6, 8]),
        (0.03, [0, 0.01, 0.02, 0.03]),
        (3_500_000, [0, 1_000_000, 2_000_000, 3_000_000, 4_000_000]),
    ],
)
def test_nice_ticks_are_round_and_cover_the_top(top: float, ticks: list[float]) -> None:
    assert nice_ticks(top) == pytest.approx(ticks)
    assert nice_ticks(top)[-1] >= top


def test_nice_ticks_survive_nonsense() -> None:
    assert nice_ticks(float("nan"))[-1] == 1.0
    assert nice_ticks(-5)[-1] == 1.0


@pytest.mark.parametrize(
    ("value", "text"),
    [(0, "0"), (950, "950"), (1000, "1k"), (1234, "1.2k"), (3_400_000, "3.4M"), (2e9, "2G"),
     (0.25, "0.25"), (12.5, "12.5"), (-1500, "-1.5k")],
)  # fmt: skip
def test_compact(value: float, text: str) -> None:
    assert compact(value) == text


def test_label_positions_thin_out_and_keep_the_last() -> None:
    assert label_positions(0, 8) == []
    assert label_positions(5, 8) == [0, 1, 2, 3, 4]
    picked = label_positions(30, 8)
    assert len(picked) <= 8
    assert picked[-1] == 29
    assert picked == sorted(set(picked))
    assert len(label_positions(365, 8)) <= 8


def test_colors_cycle_through_the_palette() -> None:
    assert color_for(0) == PALETTE[0]
    assert color_for(len(PALETTE)) == PALETTE[0]


def test_stacked_bars_draw_one_rect_per_nonzero_value_with_titles() -> None:
    chart = stacked_bars(
        ["2026-03-01", "2026-03-02", "2026-03-03"],
        [
            Series("alpha", (100, 0, 50)),
            Series("beta", (200, 300, 0)),
            Series("other spaces", (10, 0, 0), OTHER_COLOR),
        ],
        title="Tokens per day",
        unit=lambda v: f"{v:g} tokens",
    )
    root = parse(str(chart.svg))
    assert root.get("role") == "img"
    assert root.find(f"{SVG}title").text == "Tokens per day"  # type: ignore[union-attr]
    rects = [r for r in root.iter(f"{SVG}rect") if r.get("fill") != "transparent"]
    tips = sorted(r.find(f"{SVG}title").text for r in rects)  # type: ignore[union-attr,type-var]
    assert tips == sorted(
        [
            "2026-03-01 · alpha: 100 tokens",
            "2026-03-01 · beta: 200 tokens",
            "2026-03-01 · other spaces: 10 tokens",
            "2026-03-02 · beta: 300 tokens",
            "2026-03-03 · alpha: 50 tokens",
        ]
    )
    assert {r.get("fill") for r in rects} == {PALETTE[0], PALETTE[1], OTHER_COLOR}
    totals = [
        r.find(f"{SVG}title").text
        for r in root.iter(f"{SVG}rect")
        if r.get("fill") == "transparent"
    ]  # type: ignore[union-attr]
    assert "2026-03-02 · total: 300 tokens" in totals
    assert [(i.label, i.total) for i in chart.legend] == [
        ("alpha", 150),
        ("beta", 500),
        ("other spaces", 10),
    ]
    assert not chart.empty


def test_bar_heights_are_proportional_and_stack() -> None:
    chart = stacked_bars(["a", "b"], [Series("s", (100, 50)), Series("t", (100, 0))], title="t")
    root = parse(str(chart.svg))
    rects = [r for r in root.iter(f"{SVG}rect") if r.get("fill") != "transparent"]
    heights = [float(r.get("height", 0)) for r in rects]
    # a: 100 + 100 stacked, b: 50; the axis tops at 200.
    assert heights[0] == pytest.approx(heights[1])
    assert heights[2] == pytest.approx(heights[0] / 2)
    s_a, t_a = rects[0], rects[1]
    assert float(t_a.get("y", 0)) + float(t_a.get("height", 0)) == pytest.approx(
        float(s_a.get("y", 0))
    )


def test_labels_and_text_are_escaped() -> None:
    chart = stacked_bars(
        ["<d>"], [Series('<script>"x"</script> & co', (5,))], title="a <b> & c", description="d&e"
    )
    text = str(chart.svg)
    assert "<script>" not in text and "<b>" not in text
    root = parse(text)  # still well-formed XML
    tips = [t.text for t in root.iter(f"{SVG}title")]
    assert '<d> · <script>"x"</script> & co: 5' in tips
    assert root.find(f"{SVG}desc").text == "d&e"  # type: ignore[union-attr]


def test_no_data_says_so() -> None:
    chart = stacked_bars(["a", "b"], [], title="nothing")
    assert chart.empty
    assert "No data in this period" in str(chart.svg)
    assert not [r for r in parse(str(chart.svg)).iter(f"{SVG}rect")]


def test_a_series_of_the_wrong_length_is_refused() -> None:
    with pytest.raises(ValueError, match="2 values for 3 categories"):
        stacked_bars(["a", "b", "c"], [Series("s", (1, 2))], title="t")


def test_x_labels_use_the_short_form_and_are_thinned() -> None:
    days = [f"2026-03-{d:02d}" for d in range(1, 31)]
    chart = stacked_bars(days, [Series("s", tuple(1.0 for _ in days))], title="t",
                         short_label=lambda c: c[5:])  # fmt: skip
    root = parse(str(chart.svg))
    x_axis = next(g for g in root.iter(f"{SVG}g") if g.get("class") == "axis x")
    labels = [t.text for t in x_axis.iter(f"{SVG}text")]
    assert 2 <= len(labels) <= 8
    assert labels[-1] == "03-30"
