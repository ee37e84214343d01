"""The Chat page (/dashboard/chat) over real HTTP: a real App's server and SQLite database.

Logged in through /login (dashboard_site's helpers); pages are read with a real HTML
parser. The page is the dashboard's layout around the web chat's own client: its list of
web conversations comes from the database, its messages from the web chat's API, which
the same login opens — checked here with the web chat adapter started on a recording sink.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
from yarl import URL

from mercury.core.messages import InboundMessage
from mercury.dashboard.pages.chat import DEFAULT_SPACE, choose_space
from mercury.storage import MessageRole, add_message, get_or_create_space, link_conversation
from mercury.storage.chat_views import ChatSummary
from tests.integration.dashboard_site import Node, Running, get_page, login, parse, running

T0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


async def _web_chat(site: Running, chat_id: str, at: datetime | None) -> None:
    """A web conversation as the pipeline leaves it: a space, the link, its messages."""
    db = site.app.db
    space = f"web-{chat_id}"
    await get_or_create_space(db, space)
    conv = await link_conversation(db, "web", chat_id, space)
    if at is not None:
        await add_message(
            db,
            space_id=space,
            platform="web",
            role=MessageRole.USER,
            text="hi",
            conversation_id=conv.id,
            created_at=at,
        )


def _listed(root: Node) -> list[str]:
    conversations = root.find("ul", class_="plain chat-convs")
    return [li.attrs["data-chat"] for li in conversations.find_all("li")]


def _current(root: Node) -> str:
    return root.find("ul", class_="plain chat-convs").find("a", **{"aria-current": "page"}).text


# ------------------------------------------------------------------------ pure


def test_choose_space_prefers_a_valid_request_then_the_latest_then_main() -> None:
    latest = [ChatSummary("ops", "web-ops", 3, T0), ChatSummary("main", "web-main", 1, None)]
    assert choose_space("notes", latest) == "notes"
    assert choose_space(None, latest) == "ops"
    assert choose_space("../etc", latest) == "ops"
    assert choose_space("", []) == DEFAULT_SPACE


# ------------------------------------------------------------------------ page


async def test_a_stranger_is_sent_to_login(tmp_path: Path) -> None:
    async with running(tmp_path) as site, site.client() as http:
        async with http.get("/dashboard/chat?space=ops", allow_redirects=False) as resp:
            assert resp.status == 303
            location = URL(resp.headers["Location"])
        assert (location.path, location.query["next"]) == ("/login", "/dashboard/chat?space=ops")
        async with http.get("/dashboard/chat", headers={"HX-Request": "true"}) as resp:
            assert resp.status == 401


async def test_the_page_lists_web_conversations_newest_first_and_mounts_the_web_chat(
    tmp_path: Path,
) -> None:
    async with running(tmp_path) as site, site.client() as http:
        await _web_chat(site, "old", T0)
        await _web_chat(site, "ops", T0 + timedelta(hours=1))
        await _web_chat(site, "quiet", None)
        await get_or_create_space(site.app.db, "slack-space")
        await link_conversation(site.app.db, "slack", "C42", "slack-space")  # not a web chat
        await login(http)

        async with http.get("/dashboard/chat") as resp:
            assert resp.status == 200
            csp = resp.headers["Content-Security-Policy"]
            root = parse(await resp.text())

        assert "default-src 'self'" in csp and "script-src" not in csp  # scripts: 'self' only
        nav = root.find("nav", class_="nav")
        assert nav.find("a", **{"aria-current": "page"}).text == "Chat"
        assert _listed(root) == ["ops", "old", "quiet"]  # newest activity first, web only
        assert _current(root).split()[0] == "ops"  # the latest is the one shown
        pane = root.find("section", id="chat")
        assert pane.attrs["data-login-url"] == "/login?next=/dashboard/chat"
        assert pane.find("input", id="space").attrs["value"] == "ops"
        assert pane.find("a", href="/spaces/web-ops")  # the space's settings and history
        for needed in ("messages", "typing", "send-error"):
            assert pane.find("div", id=needed)
        compose = pane.find("form", id="compose")
        assert compose.find("textarea", id="text")
        assert compose.find("input", id="file").attrs["type"] == "file"
        # The web chat's own client, from this server, and no inline script (CSP).
        scripts = root.find_all("script")
        assert [s.attrs.get("src") for s in scripts if "chat" in s.attrs.get("src", "")] == [
            "/chat/chat.js"
        ]
        assert all(s.attrs.get("src", "").startswith("/") and not s.text for s in scripts)

        async with http.get("/chat/chat.js") as resp:
            script = await resp.text()
        assert "dataset.loginUrl" in script  # the client knows the dashboard's way


async def test_a_conversation_is_chosen_by_name_and_a_bad_name_is_refused(tmp_path: Path) -> None:
    async with running(tmp_path) as site, site.client() as http:
        await _web_chat(site, "ops", T0)
        await _web_chat(site, "old", T0 - timedelta(days=1))
        await login(http)

        root = await get_page(http, "/dashboard/chat?space=old")
        assert _current(root).split()[0] == "old" and _listed(root) == ["ops", "old"]
        assert root.find("input", id="space").attrs["value"] == "old"
        assert not root.find_all("p", id="chat-refused")

        new = await get_page(http, "/dashboard/chat?space=notes.2026")
        assert _listed(new) == ["ops", "old", "notes.2026"]  # shown, marked new
        assert _current(new).split() == ["notes.2026", "new"]
        assert new.find("input", id="space").attrs["value"] == "notes.2026"
        assert not new.find("section", id="chat").find_all("a", href="/spaces/web-notes.2026")

        bad = await get_page(http, "/dashboard/chat?space=%3Cscript%3E")
        assert "not a conversation name" in bad.find("p", id="chat-refused").text
        assert bad.find("input", id="space").attrs["value"] == "ops"
        assert "<script>" not in _listed(bad)


async def test_with_no_conversation_yet_the_page_opens_main(tmp_path: Path) -> None:
    async with running(tmp_path) as site, site.client() as http:
        await login(http)
        root = await get_page(http, "/dashboard/chat")
        assert _listed(root) == ["main"]
        assert root.find("input", id="space").attrs["value"] == "main"


async def test_the_login_opens_the_web_chat_api_the_page_uses(tmp_path: Path) -> None:
    """What chat.js does on this page, with the cookie from /login: post, then read."""
    received: list[InboundMessage] = []

    async def sink(msg: InboundMessage) -> None:
        received.append(msg)

    async with running(tmp_path) as site, site.client() as http:
        web_chat = site.app.adapters["web"]
        await web_chat.start(sink)
        try:
            await login(http)
            async with http.post(
                "/api/chat/messages",
                json={"space": "ops", "text": "from the dashboard", "client_id": "c-1"},
                headers={"Origin": site.url},
            ) as resp:
                assert resp.status == 202, await resp.text()
            form = aiohttp.FormData()
            form.add_field("space", "ops")
            form.add_field("text", "a file")
            form.add_field("file", b"notes\n", filename="notes.txt", content_type="text/plain")
            async with http.post(
                "/api/chat/files", data=form, headers={"Origin": site.url, "X-Mercury-Request": "1"}
            ) as resp:
                assert resp.status == 202, await resp.text()
            async with http.get("/api/chat/messages", params={"space": "ops"}) as resp:
                assert resp.status == 200
                messages = (await resp.json())["messages"]
            assert [m["text"] for m in messages] == ["from the dashboard", "a file"]
            url = messages[1]["files"][0]["url"]
            async with http.get(url) as resp:
                assert resp.status == 200 and await resp.read() == b"notes\n"
        finally:
            await web_chat.stop()
    assert [(m.conversation.chat_id, m.text) for m in received] == [
        ("ops", "from the dashboard"),
        ("ops", "a file"),
    ]
    assert [a.name for a in received[1].attachments] == ["notes.txt"]


async def test_with_the_web_chat_off_the_page_says_so(tmp_path: Path) -> None:
    async with (
        running(tmp_path, adapters={"web": {"enabled": False}}) as site,
        site.client() as http,
    ):
        await login(http)
        root = await get_page(http, "/dashboard/chat")
        assert "adapters.web.enabled" in root.find("section", class_="card").text
        assert not root.find_all("section", id="chat")
        assert not [s for s in root.find_all("script") if "chat" in s.attrs.get("src", "")]
