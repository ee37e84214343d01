"""The Usage page and its CSV over real HTTP: a real App's server, a real SQLite database
with usage rows, logged in through /login; the HTML is read with a real parser."""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from pathlib import Path

from mercury.dashboard.pages.usage import TOP_SPACES
from mercury.storage import add_usage, get_or_create_space
from mercury.storage.models import utcnow
from tests.integration.dashboard_site import Node, login, parse, running


def table_rows(root: Node, table_id: str) -> list[list[str]]:
    body = root.find("table", id=table_id).find("tbody")
    return [[td.text for td in tr.find_all("td")] for tr in body.find_all("tr")]


def bar_titles(root: Node) -> list[str]:
    svg = root.find("svg")
    return [
        r.find("title").text
        for r in svg.find_all("rect")
        if r.attrs.get("fill") != "transparent" and r.find_all("title")
    ]


# ------------------------------------------------------------------------------ tests


async def test_usage_page_charts_and_tables_the_stored_usage(tmp_path: Path) -> None:
    async with running(tmp_path) as site:
        db = site.app.db
        today = utcnow().date()
        yesterday = today - timedelta(days=1)
        await get_or_create_space(db, "web:alpha", name="Alpha <team>")
        await get_or_create_space(db, "web:beta", name="Beta")
        await add_usage(db, "web:alpha", model="m1", input_tokens=1000, output_tokens=200,
                        cost_usd=0.5, day=today)  # fmt: skip
        await add_usage(db, "web:alpha", model="m2", input_tokens=10, output_tokens=5,
                        cost_usd=0.25, day=today)  # fmt: skip
        await add_usage(db, "web:beta", model="m1", input_tokens=300, output_tokens=100,
                        cost_usd=2.0, day=yesterday)  # fmt: skip
        # 40 days ago: outside the default 30, inside 90.
        await add_usage(db, "web:beta", model="m1", input_tokens=7, output_tokens=0,
                        day=today - timedelta(days=40))  # fmt: skip
        async with site.client() as http:
            await login(http)
            async with http.get("/usage", allow_redirects=False) as resp:
                assert resp.status == 200
                html = await resp.text()
            root = parse(html)
            assert "Alpha <team>" in root.text  # escaped in the HTML, the name as text
            assert "<team>" not in html
            titles = bar_titles(root)
            assert f"{today} · Alpha <team>: 1,215 tokens" in titles
            assert f"{yesterday} · Beta: 400 tokens" in titles
            assert len(titles) == 2
            legend = root.find("ul", class_="legend")
            assert [li.text for li in legend.find_all("li")] == ["Alpha <team> 1,215", "Beta 400"]
            assert root.find("div", id="usage-total-tokens").text == "1,615"
            assert root.find("div", id="usage-total-cost").text == "$2.75"
            spaces = table_rows(root, "usage-spaces")
            assert spaces[0] == ["Alpha <team> web:alpha", "1,010", "205", "$0.7500", "2"]
            assert spaces[1] == ["Beta web:beta", "300", "100", "$2.00", "1"]
            days = table_rows(root, "usage-days-table")
            assert [d[0] for d in days] == [str(today), str(yesterday)]  # newest first

            # The cost chart ranks by cost; 90 days reaches the old row.
            async with http.get("/usage?days=90&metric=cost") as resp:
                root = parse(await resp.text())
            titles = bar_titles(root)
            assert f"{yesterday} · Beta: $2.00" in titles
            assert f"{today} · Alpha <team>: $0.7500" in titles
            assert table_rows(root, "usage-spaces")[0][0] == "Beta web:beta"
            assert root.find("div", id="usage-total-tokens").text == "1,622"
            selected = root.find("select", id="usage-days")
            assert [
                o.attrs["value"] for o in selected.find_all("option") if "selected" in o.attrs
            ] == ["90"]


async def test_usage_chart_stacks_the_top_spaces_and_the_rest_as_other(tmp_path: Path) -> None:
    async with running(tmp_path) as site:
        db = site.app.db
        today = utcnow().date()
        n = TOP_SPACES + 3
        for i in range(n):
            await get_or_create_space(db, f"web:s{i}")
            await add_usage(db, f"web:s{i}", model="m", input_tokens=100 * (i + 1), day=today)
        async with site.client() as http:
            await login(http)
            async with http.get("/usage?days=7") as resp:
                root = parse(await resp.text())
        titles = bar_titles(root)
        # The top spaces (most tokens: s8 .. s3) each get a layer; s0..s2 are "other".
        assert len(titles) == TOP_SPACES + 1
        assert f"{today} · other spaces: 600 tokens" in titles  # 100 + 200 + 300
        assert f"{today} · web:s8: 900 tokens" in titles
        assert not any("web:s0" in t for t in titles)
        assert len(table_rows(root, "usage-spaces")) == n


async def test_usage_page_with_no_usage_says_so(tmp_path: Path) -> None:
    async with running(tmp_path) as site, site.client() as http:
        await login(http)
        async with http.get("/usage?days=bogus&metric=<x>") as resp:
            assert resp.status == 200
            html = await resp.text()
        assert "No data in this period" in html
        assert "No usage in this period." in html


async def test_usage_csv_downloads_each_space_and_day(tmp_path: Path) -> None:
    async with running(tmp_path) as site:
        db = site.app.db
        today = utcnow().date()
        await get_or_create_space(db, "web:a", name="=HYPERLINK(1)")
        await add_usage(db, "web:a", model="m1", input_tokens=5, output_tokens=6,
                        cost_usd=0.001, day=today)  # fmt: skip
        await add_usage(db, "web:a", model="m2", input_tokens=1, output_tokens=1, day=today)
        await add_usage(db, "web:a", model="m1", input_tokens=9, day=today - timedelta(days=10))
        async with site.client() as http:
            # A stranger gets the login page, not the data.
            async with http.get("/usage.csv", allow_redirects=False) as resp:
                assert resp.status == 303
                assert resp.headers["Location"].startswith("/login?next=")
            await login(http)
            async with http.get("/usage.csv?days=7") as resp:
                assert resp.status == 200
                assert resp.content_type == "text/csv"
                assert resp.headers["Content-Disposition"].startswith("attachment; filename=")
                rows = list(csv.reader(io.StringIO(await resp.text())))
            assert rows == [
                [
                    "date",
                    "space",
                    "space_name",
                    "input_tokens",
                    "output_tokens",
                    "cost_usd",
                    "runs",
                ],
                [str(today), "web:a", "'=HYPERLINK(1)", "6", "7", "0.001000", "2"],
            ]
            async with http.get("/usage.csv?days=30") as resp:
                rows = list(csv.reader(io.StringIO(await resp.text())))
            assert [r[0] for r in rows[1:]] == [str(today - timedelta(days=10)), str(today)]
