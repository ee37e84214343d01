"""The space page's person notes over real HTTP (a real App's server and SQLite database):
the operator sees who has a note, when it changed and what it says, and clears one with a
CSRF-carrying form, as the other actions of the page; a stranger gets the login page."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from mercury.storage import get_note, get_or_create_space, set_note
from tests.integration.dashboard_site import get_page, login, parse, running
from tests.integration.test_dashboard_spaces import post, session

T0 = datetime(2027, 2, 15, 9, 30, tzinfo=UTC)


async def test_the_space_page_lists_its_notes_newest_first_escaped(tmp_path: Path) -> None:
    async with running(tmp_path) as site, site.client() as http:
        db = site.app.db
        await get_or_create_space(db, "a")
        await get_or_create_space(db, "b")
        await set_note(db, "a", "slack:U1", "prefers metric units\nleads data", now=T0)
        later = T0.replace(hour=11)
        await set_note(db, "a", "web:<b>eve</b>", "<script>alert(1)</script>", now=later)
        await set_note(db, "b", "slack:U9", "only in space b", now=T0)
        await login(http)

        async with http.get("/spaces/a") as resp:
            raw = await resp.text()
        assert "<script>alert(1)</script>" not in raw and "<b>eve</b>" not in raw
        assert "only in space b" not in raw
        section = parse(raw).find("section", id="memory")
        rows = section.find("table", class_="notes-table").find("tbody").find_all("tr")
        cells = [[td.text.strip() for td in row.find_all("td")[:3]] for row in rows]
        assert [c[0] for c in cells] == ["web:<b>eve</b>", "slack:U1"]
        assert cells[0][2] == "<script>alert(1)</script>"
        assert rows[1].find("td", class_="note-text").raw_text == "prefers metric units\nleads data"
        assert rows[1].find("time").attrs["datetime"] == T0.isoformat()
        form = rows[1].find("form")
        assert form.attrs["action"] == "/spaces/a/forget"
        assert form.find("input", name="user_key").attrs["value"] == "slack:U1"

        # Space b's page: its own note only.
        other = (await get_page(http, "/spaces/b")).find("section", id="memory")
        assert [td.text for td in other.find("tbody").find_all("td")[:1]] == ["slack:U9"]
        await get_or_create_space(db, "c")
        empty = (await get_page(http, "/spaces/c")).find("section", id="memory")
        assert empty.maybe("table") is None and "No person notes" in empty.text


async def test_clear_deletes_one_note_with_the_csrf_token(tmp_path: Path) -> None:
    async with running(tmp_path) as site, site.client() as http:
        db = site.app.db
        await get_or_create_space(db, "a")
        await set_note(db, "a", "slack:U1", "Ada's note")
        await set_note(db, "a", "slack:U2", "Bob's note")
        token = await session(site, http)

        async with http.post(
            "/spaces/a/forget", data={"user_key": "slack:U1"}, allow_redirects=False
        ) as resp:
            assert resp.status == 403  # no CSRF token: nothing happens
        assert await get_note(db, "a", "slack:U1") is not None

        resp = await post(http, "/spaces/a/forget", token, user_key="slack:U1")
        assert resp.status == 303
        assert resp.headers["Location"] == "/spaces/a?done=forgot#memory"
        assert await get_note(db, "a", "slack:U1") is None
        assert (await get_note(db, "a", "slack:U2")).text == "Bob's note"  # type: ignore[union-attr]
        doc = await get_page(http, "/spaces/a?done=forgot")
        assert "no longer remembers" in doc.find("p", role="status").text

        again = await post(http, "/spaces/a/forget", token, user_key="slack:U1")
        assert again.status == 400
        missing = await post(http, "/spaces/a/forget", token, user_key=" ")
        assert missing.status == 400


async def test_a_stranger_neither_sees_nor_clears_notes(tmp_path: Path) -> None:
    async with running(tmp_path) as site, site.client() as http:
        db = site.app.db
        await get_or_create_space(db, "a")
        await set_note(db, "a", "slack:U1", "private to Ada")
        async with http.get("/spaces/a", allow_redirects=False) as resp:
            assert resp.status == 303 and resp.headers["Location"].startswith("/login")
            assert "private to Ada" not in await resp.text()
        async with http.post(
            "/spaces/a/forget", data={"user_key": "slack:U1"}, allow_redirects=False
        ) as resp:
            assert resp.status in (303, 401, 403)
        assert await get_note(db, "a", "slack:U1") is not None
