"""The Spaces pages over real HTTP: a real App's server, SQLite database and space folder.

Logged in through /login (dashboard_site's helpers); every write carries the CSRF
token as the page's forms do, and its effect is read back from the database. Pages are
read with a real HTML parser (html.parser), so escaping is checked on the parsed text.
The folder browser is attacked the way an agent would: a symlink to /etc/passwd, a
symlinked folder, a fifo, `..` paths.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest

from mercury.core.commands import MODEL_PREF
from mercury.core.triggers import TRIGGER_PREF
from mercury.sandbox.spaces import spaces_root
from mercury.storage import (
    MessageRole,
    add_message,
    get_conversation,
    get_or_create_space,
    get_preferences,
    get_role,
    get_space,
    is_muted,
    link_conversation,
    list_mutes,
    mute,
    pause_until_resumed,
    set_role,
    utcnow,
)
from tests.integration.dashboard_site import Running, csrf_token, get_page, login, parse, running


async def post(
    http: aiohttp.ClientSession, path: str, token: str, **form: str
) -> aiohttp.ClientResponse:
    """A form post as the page's forms make it (CSRF in the hidden `csrf` field)."""
    async with http.post(path, data={"csrf": token, **form}, allow_redirects=False) as resp:
        await resp.read()
        return resp


async def session(site: Running, http: aiohttp.ClientSession) -> str:
    await login(http)
    return await csrf_token(http)


# --------------------------------------------------------------------------- the list


async def test_spaces_list_newest_activity_first_with_state_and_counts(tmp_path: Path) -> None:
    async with running(tmp_path) as site, site.client() as http:
        db = site.app.db
        await get_or_create_space(db, "quiet", name="Quiet <b>one</b>", profile="coding")
        await get_or_create_space(db, "busy")
        now = utcnow()
        await add_message(
            db, space_id="busy", platform="web", role=MessageRole.USER, text="hi",
            created_at=now - timedelta(minutes=5),
        )  # fmt: skip
        await link_conversation(db, "web", "chat-1", "busy")
        await link_conversation(db, "slack", "C1", "busy")
        await pause_until_resumed(db, "quiet")
        await login(http)

        doc = await get_page(http, "/spaces")
        rows = doc.find("table").find("tbody").find_all("tr")
        assert [r.attrs["data-space"] for r in rows] == ["busy", "quiet"]
        busy = [c.text for c in rows[0].find_all("td")]
        assert busy[2] == "active" and busy[3:5] == ["2", "1"] and busy[5] == "5 min ago"
        quiet = [c.text for c in rows[1].find_all("td")]
        assert quiet[0].startswith("Quiet <b>one</b>")  # shown as text, not markup
        assert quiet[1] == "coding" and quiet[2] == "paused" and quiet[5] == "—"
        assert rows[0].find("a").attrs["href"] == "/spaces/busy"


async def test_spaces_list_pages(tmp_path: Path) -> None:
    async with running(tmp_path) as site, site.client() as http:
        for i in range(53):
            await get_or_create_space(site.app.db, f"s{i:02d}")
        await login(http)
        first = await get_page(http, "/spaces")
        assert len(first.find("tbody").find_all("tr")) == 50
        assert first.find("a", href="/spaces?page=2")
        second = await get_page(http, "/spaces?page=2")
        assert [r.attrs["data-space"] for r in second.find("tbody").find_all("tr")] == [
            "s50", "s51", "s52",
        ]  # fmt: skip
        assert not second.find_all("a", href="/spaces?page=3")


# --------------------------------------------------------------------------- one space


async def test_space_page_shows_the_conversation_paged_backwards(tmp_path: Path) -> None:
    async with running(tmp_path) as site, site.client() as http:
        db = site.app.db
        await get_or_create_space(db, "a")
        t0 = utcnow() - timedelta(hours=1)
        for i in range(60):
            await add_message(
                db, space_id="a", platform="web", role=MessageRole.USER, text=f"msg {i}",
                author_name="Ann", created_at=t0 + timedelta(seconds=i),
            )  # fmt: skip
        await add_message(
            db, space_id="a", platform="web", role=MessageRole.USER,
            text="<script>alert(1)</script>", author_name="<i>Eve</i>",
            attachments=["inbox/00-report.pdf"], created_at=t0 + timedelta(minutes=2),
        )  # fmt: skip
        await add_message(
            db, space_id="a", platform="web", role=MessageRole.ASSISTANT, text="done",
            created_at=t0 + timedelta(minutes=3),
        )  # fmt: skip
        await login(http)
        async with http.get("/spaces/a") as resp:
            raw = await resp.text()
        assert "<script>alert(1)</script>" not in raw and "<i>Eve</i>" not in raw
        doc = parse(raw)
        items = doc.find("ol", class_="messages").find_all("li")
        assert len(items) == 50
        texts = [li.find("div", class_="text").text for li in items]
        assert texts[-2:] == ["<script>alert(1)</script>", "done"]
        assert texts[0] == "msg 12"
        eve = items[-2]
        assert eve.find("strong", class_="author").text == "<i>Eve</i>"
        assert eve.find("span", class_="attachment mono").text == "00-report.pdf"
        assert items[-1].find("strong", class_="author").text == "Mercury"

        older = doc.find("section", id="conversation").find("a").attrs["href"]
        assert older.startswith("/spaces/a?before=")
        doc2 = await get_page(http, older.split("#")[0])
        texts2 = [li.find("div", class_="text").text for li in doc2.find("ol").find_all("li")]
        assert texts2 == [f"msg {i}" for i in range(12)]
        await get_page(http, "/spaces/a?before=x", status=400)
        await get_page(http, "/spaces/nope", status=404)


async def test_link_and_unlink_a_conversation(tmp_path: Path) -> None:
    async with running(tmp_path) as site, site.client() as http:
        db = site.app.db
        await get_or_create_space(db, "a")
        await get_or_create_space(db, "b")
        await link_conversation(db, "telegram", "-100", "b")
        token = await session(site, http)

        resp = await post(http, "/spaces/a/link", token, platform="slack", chat_id="C42")
        assert resp.status == 303
        assert resp.headers["Location"] == "/spaces/a?done=linked#links"
        conv = await get_conversation(db, "slack", "C42")
        assert conv is not None and conv.space_id == "a" and conv.thread_id is None

        resp = await post(
            http, "/spaces/a/link", token, platform="telegram", chat_id="-100", thread_id="7"
        )
        assert resp.headers["Location"] == "/spaces/a?done=relinked#links"
        moved = await get_conversation(db, "telegram", "-100")
        assert moved is not None and (moved.space_id, moved.thread_id) == ("a", "7")

        doc = await get_page(http, "/spaces/a?done=relinked")
        assert "moved here" in doc.find("p", role="status").text
        links = doc.find("section", id="links").find("tbody").find_all("tr")
        assert [[td.text for td in r.find_all("td")[:3]] for r in links] == [
            ["slack", "C42", "—"],
            ["telegram", "-100", "7"],
        ]

        # Unlinking a chat of another space is refused and changes nothing.
        await link_conversation(db, "web", "elsewhere", "b")
        resp = await post(http, "/spaces/a/unlink", token, platform="web", chat_id="elsewhere")
        assert resp.status == 400
        assert (await get_conversation(db, "web", "elsewhere")) is not None

        resp = await post(http, "/spaces/a/unlink", token, platform="slack", chat_id="C42")
        assert resp.headers["Location"] == "/spaces/a?done=unlinked#links"
        assert await get_conversation(db, "slack", "C42") is None

        bad = await post(http, "/spaces/a/link", token, platform="irc", chat_id="#x")
        assert bad.status == 400 and await get_conversation(db, "irc", "#x") is None
        empty = await post(http, "/spaces/a/link", token, platform="web", chat_id=" ")
        assert empty.status == 400


async def test_writes_need_the_csrf_token(tmp_path: Path) -> None:
    async with running(tmp_path) as site, site.client() as http:
        await get_or_create_space(site.app.db, "a")
        await session(site, http)
        async with http.post(
            "/spaces/a/link", data={"platform": "web", "chat_id": "x"}, allow_redirects=False
        ) as resp:
            assert resp.status == 403
        async with http.post("/spaces/a/pause", data={"csrf": "wrong"}) as resp:
            assert resp.status == 403
        assert await get_conversation(site.app.db, "web", "x") is None
        space = await get_space(site.app.db, "a")
        assert space is not None and space.paused_until is None


async def test_settings_profile_model_pause_resume_clear(tmp_path: Path) -> None:
    chain = [
        {"provider": "openai", "model": "first-model"},
        {"provider": "anthropic", "model": "second-model"},
    ]
    async with running(tmp_path, model={"chain": chain}) as site, site.client() as http:
        db = site.app.db
        await get_or_create_space(db, "a")
        token = await session(site, http)

        doc = await get_page(http, "/spaces/a")
        options = [o.attrs["value"] for o in doc.find("select", id="profile").find_all("option")]
        assert {"general", "coding", "research"} <= set(options)
        assert "mention" in doc.find("p", id="trigger").text

        assert (await post(http, "/spaces/a/profile", token, profile="coding")).status == 303
        assert (await get_space(db, "a")).profile == "coding"  # type: ignore[union-attr]
        assert (await post(http, "/spaces/a/profile", token, profile="../etc")).status == 400
        assert (await get_space(db, "a")).profile == "coding"  # type: ignore[union-attr]

        assert (await post(http, "/spaces/a/model", token, model="2")).status == 303
        assert (await get_preferences(db, "a"))[MODEL_PREF] == "second-model"
        doc = await get_page(http, "/spaces/a")
        assert doc.find("option", value="2").attrs.get("selected") is not None
        assert (await post(http, "/spaces/a/model", token, model="nope")).status == 400
        assert (await post(http, "/spaces/a/model", token, model="default")).status == 303
        assert MODEL_PREF not in await get_preferences(db, "a")

        assert (await post(http, "/spaces/a/trigger", token, match="always")).status == 303
        assert (await get_preferences(db, "a"))[TRIGGER_PREF] == "always"
        doc = await get_page(http, "/spaces/a")
        assert doc.find("option", value="always").attrs.get("selected") is not None
        assert (await post(http, "/spaces/a/trigger", token, match="loud")).status == 400
        assert (await post(http, "/spaces/a/trigger", token, match="default")).status == 303
        assert TRIGGER_PREF not in await get_preferences(db, "a")

        before = utcnow()
        assert (await post(http, "/spaces/a/pause", token, duration="1.5h")).status == 303
        space = await get_space(db, "a")
        assert space is not None and space.pause_ends is not None
        assert timedelta(minutes=89) < space.pause_ends - before < timedelta(minutes=91)
        doc = await get_page(http, "/spaces/a")
        assert doc.find("span", id="state").text.startswith("paused until")
        assert doc.find_all("form", action="/spaces/a/resume")

        assert (await post(http, "/spaces/a/resume", token)).status == 303
        space = await get_space(db, "a")
        assert space is not None and not space.is_paused(utcnow())

        assert (await post(http, "/spaces/a/pause", token, duration="")).status == 303
        space = await get_space(db, "a")
        assert space is not None and space.is_paused(utcnow()) and space.pause_ends is None
        await post(http, "/spaces/a/resume", token)

        bad = await post(http, "/spaces/a/pause", token, duration="soon")
        assert bad.status == 400
        assert not (await get_space(db, "a")).is_paused(utcnow())  # type: ignore[union-attr]
        assert (await post(http, "/spaces/a/pause", token, duration="9999999w")).status == 400

        assert (await post(http, "/spaces/a/clear", token)).status == 303
        space = await get_space(db, "a")
        assert space is not None and space.context_reset_at is not None
        assert space.context_reset_at >= before


async def test_roles_and_mutes(tmp_path: Path) -> None:
    async with running(tmp_path) as site, site.client() as http:
        db = site.app.db
        await get_or_create_space(db, "a")
        token = await session(site, http)

        resp = await post(
            http, "/spaces/a/role", token, platform="slack", user_id="U1", role="helper"
        )
        assert resp.headers["Location"] == "/spaces/a?done=role#people"
        assert await get_role(db, "a", "slack", "U1") == "helper"
        bad = await post(http, "/spaces/a/role", token, platform="slack", user_id="U2", role="Bad!")
        assert bad.status == 400 and await get_role(db, "a", "slack", "U2") is None

        doc = await get_page(http, "/spaces/a")
        row = doc.find("table", class_="roles-table").find("tbody").find("tr")
        assert [td.text for td in row.find_all("td")[:3]] == ["slack", "U1", "helper"]

        assert (
            await post(http, "/spaces/a/unrole", token, platform="slack", user_id="U1")
        ).status == 303
        assert await get_role(db, "a", "slack", "U1") is None
        assert (
            await post(http, "/spaces/a/unrole", token, platform="slack", user_id="U1")
        ).status == 400

        resp = await post(
            http, "/spaces/a/mute", token, platform="discord", user_id="42", duration="2d",
            reason="spam",
        )  # fmt: skip
        assert resp.headers["Location"] == "/spaces/a?done=muted#people"
        (m,) = await list_mutes(db, "a")
        assert (m.platform, m.user_id, m.reason) == ("discord", "42", "spam")
        assert m.until is not None and timedelta(hours=47) < m.until - utcnow() <= timedelta(days=2)
        await post(http, "/spaces/a/mute", token, platform="web", user_id="w")
        assert await is_muted(db, "a", "web", "w", now=utcnow() + timedelta(days=3650))

        doc = await get_page(http, "/spaces/a")
        rows = doc.find("table", class_="mutes-table").find("tbody").find_all("tr")
        assert [r.find_all("td")[1].text for r in rows] == ["42", "w"]

        assert (
            await post(http, "/spaces/a/unmute", token, platform="discord", user_id="42")
        ).status == 303
        assert not await is_muted(db, "a", "discord", "42")
        assert (
            await post(http, "/spaces/a/unmute", token, platform="discord", user_id="42")
        ).status == 400


async def test_rows_show_existing_roles_and_mutes_escaped(tmp_path: Path) -> None:
    async with running(tmp_path) as site, site.client() as http:
        db = site.app.db
        await get_or_create_space(db, "a")
        await set_role(db, "a", "web", "<img src=x>", "member")
        await mute(db, "a", "web", "m", reason="<b>loud</b>")
        await login(http)
        async with http.get("/spaces/a") as resp:
            raw = await resp.text()
        assert "<img src=x>" not in raw and "<b>loud</b>" not in raw
        doc = parse(raw)
        assert doc.find("table", class_="roles-table").find_all("td")[1].text == "<img src=x>"
        assert doc.find("table", class_="mutes-table").find_all("td")[3].text == "<b>loud</b>"


# --------------------------------------------------------------------------- files


def _plant(folder: Path) -> None:
    """What a hostile agent leaves in its space."""
    (folder / "inbox").mkdir(parents=True)
    (folder / "inbox" / "00-notes.txt").write_text("hello")
    (folder / "MEMORY.md").write_text("# memory")
    (folder / "<i>x.html").write_text("<script>alert(1)</script>")
    os.symlink("/etc/passwd", folder / "passwd")
    os.symlink("/etc", folder / "etc-link")
    os.symlink("/etc/passwd", folder / "inbox" / "passwd")
    os.mkfifo(folder / "pipe")


async def test_files_are_listed_without_links_or_special_files(tmp_path: Path) -> None:
    async with running(tmp_path) as site, site.client() as http:
        await get_or_create_space(site.app.db, "a")
        await login(http)
        # No folder yet: said plainly.
        doc = await get_page(http, "/spaces/a/files")
        assert "No folder yet" in doc.find("p", role="status").text

        _plant(spaces_root(tmp_path) / "a")
        async with http.get("/spaces/a/files") as resp:
            raw = await resp.text()
        assert "<i>x" not in raw
        doc = parse(raw)
        rows = doc.find("tbody").find_all("tr")
        names = [r.find("a").text for r in rows]
        assert names == ["inbox/", "<i>x.html", "MEMORY.md"]
        assert [r.attrs["data-kind"] for r in rows] == ["dir", "file", "file"]
        assert "3 other entries" in raw  # passwd, etc-link, pipe
        assert "passwd" not in names and "etc-link/" not in names

        inbox = await get_page(http, "/spaces/a/files?path=inbox")
        assert [r.find("a").text for r in inbox.find("tbody").find_all("tr")] == ["00-notes.txt"]
        link = inbox.find("a", class_="file").attrs["href"]
        assert link == "/spaces/a/files/download?path=inbox/00-notes.txt"


async def test_download_is_an_attachment_and_never_follows_a_link(tmp_path: Path) -> None:
    async with running(tmp_path) as site, site.client() as http:
        await get_or_create_space(site.app.db, "a")
        _plant(spaces_root(tmp_path) / "a")
        await login(http)

        async with http.get("/spaces/a/files/download?path=inbox/00-notes.txt") as resp:
            assert resp.status == 200
            assert await resp.read() == b"hello"
            assert resp.headers["Content-Type"] == "application/octet-stream"
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            assert resp.headers["Content-Disposition"].startswith(
                'attachment; filename="00-notes.txt"'
            )
        async with http.get("/spaces/a/files/download?path=%3Ci%3Ex.html") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "application/octet-stream"
            assert resp.headers["Content-Disposition"].startswith("attachment;")

        passwd = Path("/etc/passwd").read_bytes()
        for path in [
            "passwd",  # a link to /etc/passwd
            "inbox/passwd",  # a link one folder down
            "etc-link/passwd",  # through a linked folder
            "../../../../etc/passwd",
            "inbox/../passwd",
            "/etc/passwd",
            "./MEMORY.md",
            "inbox",  # a folder is not a download
            "pipe",  # nor is a fifo (and opening it must not hang)
        ]:
            async with http.get("/spaces/a/files/download", params={"path": path}) as resp:
                body = await resp.read()
                assert resp.status in (400, 404), (path, resp.status)
                assert passwd not in body
        for path in ["etc-link", "../", "inbox/../..", "a//b"]:
            async with http.get("/spaces/a/files", params={"path": path}) as resp:
                body = await resp.read()
                assert resp.status in (400, 404), (path, resp.status)
                assert b"passwd" not in body or b"root:" not in body


@pytest.mark.parametrize("path", ["/spaces/a/files", "/spaces/a/files/download?path=MEMORY.md"])
async def test_file_routes_refuse_strangers(tmp_path: Path, path: str) -> None:
    async with running(tmp_path) as site, site.client() as http:
        await get_or_create_space(site.app.db, "a")
        _plant(spaces_root(tmp_path) / "a")
        async with http.get(path, allow_redirects=False) as resp:
            assert resp.status == 303 and resp.headers["Location"].startswith("/login")
