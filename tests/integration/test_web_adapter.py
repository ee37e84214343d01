"""The web chat adapter on a real aiohttp server on 127.0.0.1, driven over real HTTP.

A recording sink stands in for the pipeline; where a test needs an answer, a small "bot"
calls adapter.send() with a Reply, as the pipeline does.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr

import mercury.adapters.web as web_package
from mercury.adapters.base import Adapter, InboundUnavailable
from mercury.adapters.web.adapter import SESSION_COOKIE, WebChatAdapter
from mercury.config import Config, Secrets
from mercury.core.messages import (
    Attachment,
    ConversationRef,
    InboundMessage,
    OutboundFile,
    Reply,
)
from mercury.http.server import HttpServer, build_app
from tests.fakes.sink import RecordingSink

PASSWORD = "correct horse battery staple"
REPO = Path(__file__).resolve().parents[2]


class Harness:
    def __init__(self, adapter: WebChatAdapter, server: HttpServer) -> None:
        self.adapter = adapter
        self.server = server
        self.url = f"http://127.0.0.1:{server.bound_port}"
        self.sink = RecordingSink()

    def client(self, *, auth: bool = True) -> aiohttp.ClientSession:
        headers = {"Authorization": f"Bearer {PASSWORD}"} if auth else {}
        # unsafe=True: the default jar ignores cookies from IP hosts like 127.0.0.1.
        return aiohttp.ClientSession(
            self.url, headers=headers, cookie_jar=aiohttp.CookieJar(unsafe=True)
        )


async def _serve(tmp_path: Path, password: str | None, **kw: Any) -> AsyncIterator[Harness]:
    adapter = WebChatAdapter(
        username="admin",
        password=password,
        max_upload=kw.pop("max_upload", 4096),
        upload_dir=tmp_path / "uploads",
        **kw,
    )
    app = build_app()
    app.add_routes(adapter.routes())  # as the App mounts every adapter's routes
    server = HttpServer("127.0.0.1", 0, app)
    await server.start()
    harness = Harness(adapter, server)
    await adapter.start(harness.sink)
    try:
        yield harness
    finally:
        await adapter.stop()
        await server.stop()


@pytest.fixture
async def chat(tmp_path: Path) -> AsyncIterator[Harness]:
    async for h in _serve(tmp_path, PASSWORD, heartbeat=0.2):
        yield h


def _answer_with(h: Harness, make: Callable[[InboundMessage], Reply]) -> None:
    """A fake bot: answer every inbound message shortly after it is accepted."""

    async def on_message(msg: InboundMessage) -> None:
        async def later() -> None:
            await asyncio.sleep(0.05)
            await h.adapter.send(make(msg))

        asyncio.get_running_loop().create_task(later())

    h.sink.on_message = on_message


async def _events(resp: aiohttp.ClientResponse, count: int) -> list[tuple[str, dict[str, Any]]]:
    """Read `count` SSE events (event type, JSON data), skipping comments."""
    out: list[tuple[str, dict[str, Any]]] = []
    kind, data = "message", ""
    async with asyncio.timeout(5):
        while len(out) < count:
            line = (await resp.content.readline()).decode().rstrip("\n")
            if line.startswith(":") or line.startswith("retry:") or line.startswith("id:"):
                continue
            if line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:"):
                data = line[5:].strip()
            elif line == "" and data:
                out.append((kind, json.loads(data)))
                kind, data = "message", ""
    return out


# ------------------------------------------------------------------------------ auth


def test_the_adapter_satisfies_the_protocol(tmp_path: Path) -> None:
    adapter = WebChatAdapter(username="admin", password="x", max_upload=10, upload_dir=tmp_path)
    assert isinstance(adapter, Adapter)
    assert adapter.platform == "web"
    assert adapter.bot_handles == ()  # nothing to mention: every message is for the bot
    paths = {(r.method, r.path) for r in adapter.routes()}
    assert {("GET", "/chat"), ("POST", "/api/login"), ("POST", "/api/logout")} <= paths
    assert ("GET", "/api/chat/stream") in paths and ("POST", "/api/chat/files") in paths


async def test_from_config_builds_the_chat_the_config_describes(tmp_path: Path) -> None:
    """The package's from_config: the dashboard's login, adapters.web and server settings."""
    config = Config.model_validate(
        {
            "data_dir": str(tmp_path),
            "dashboard": {"username": "operator", "session_ttl": "2h"},
            "adapters": {"web": {"enabled": True, "max_upload": 1234}},
            "server": {"public_url": "https://chat.example.org/", "trusted_proxies": ["10.0.0.1"]},
        }
    )
    adapter = web_package.from_config(config, Secrets(dashboard_password=SecretStr(PASSWORD)))
    assert isinstance(adapter, WebChatAdapter) and isinstance(adapter, Adapter)
    assert adapter.username == "operator" and adapter.max_upload == 1234
    assert adapter.upload_dir == tmp_path / "webchat"
    assert adapter.sessions.ttl == 7200
    assert adapter.auth.source.public_origin == "https://chat.example.org"
    assert await web_package.check_credentials(config, Secrets()) == []
    # Over real HTTP: the operator logs in with the configured name; the cookie is Secure
    # because public_url is https.
    app = build_app()
    app.add_routes(adapter.routes())
    server = HttpServer("127.0.0.1", 0, app)
    await server.start()
    try:
        url = f"http://127.0.0.1:{server.bound_port}/api/login"
        async with aiohttp.ClientSession() as http:
            good = {"username": "operator", "password": PASSWORD}
            async with http.post(url, json=good) as resp:
                assert resp.status == 200, await resp.text()
                assert "Secure" in resp.headers["Set-Cookie"]
            async with http.post(url, json={"username": "admin", "password": PASSWORD}) as resp:
                assert resp.status == 401
    finally:
        await server.stop()


async def test_without_a_password_from_config_builds_a_locked_chat(tmp_path: Path) -> None:
    config = Config.model_validate({"data_dir": str(tmp_path)})
    adapter = web_package.from_config(config, Secrets())
    app = build_app()
    app.add_routes(adapter.routes())
    server = HttpServer("127.0.0.1", 0, app)
    await server.start()
    try:
        url = f"http://127.0.0.1:{server.bound_port}/api/chat/messages?space=main"
        headers = {"Authorization": f"Bearer {PASSWORD}"}
        async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as resp:
            assert resp.status == 503
            assert "MERCURY_DASHBOARD_PASSWORD" in (await resp.json())["error"]
    finally:
        await server.stop()


async def test_no_credentials_and_wrong_password_are_refused(chat: Harness) -> None:
    async with chat.client(auth=False) as http:
        for path in ("/api/chat/messages?space=main", "/api/chat/stream?space=main"):
            async with http.get(path) as resp:
                assert resp.status == 401
                assert "not logged in" in (await resp.json())["error"]
        async with http.get(
            "/api/chat/messages?space=main", headers={"Authorization": "Bearer wrong"}
        ) as resp:
            assert resp.status == 401
        async with http.post("/api/login", json={"username": "admin", "password": "wrong"}) as resp:
            assert resp.status == 401
            assert SESSION_COOKIE not in resp.cookies
        async with http.post("/api/login", json={"username": "root", "password": PASSWORD}) as resp:
            assert resp.status == 401
    assert chat.sink.received == []


async def test_bearer_token_is_accepted(chat: Harness) -> None:
    async with chat.client() as http, http.get("/api/chat/session") as resp:
        assert resp.status == 200
        assert (await resp.json()) == {"username": "admin"}


async def test_login_sets_a_strict_http_only_cookie_that_authenticates(chat: Harness) -> None:
    async with chat.client(auth=False) as http:
        async with http.post(
            "/api/login", json={"username": "admin", "password": PASSWORD}
        ) as resp:
            assert resp.status == 200
            morsel = resp.cookies[SESSION_COOKIE]
            assert morsel["httponly"]
            assert morsel["samesite"] == "Strict"
            assert int(morsel["max-age"]) == 12 * 3600
            assert PASSWORD not in morsel.value
        # What the chat page sends: its own Origin and JSON (tests/integration/
        # test_web_security.py shows the same cookie refused from anywhere else).
        page = {"Origin": chat.url}
        async with http.post(
            "/api/chat/messages", json={"space": "main", "text": "via cookie"}, headers=page
        ) as resp:
            assert resp.status == 202
        async with http.post("/api/logout", json={}, headers=page) as resp:
            assert resp.status == 200
        async with http.get("/api/chat/session") as resp:
            assert resp.status == 401
    assert [m.text for m in chat.sink.received] == ["via cookie"]


async def test_credentials_never_reach_the_log(
    chat: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    async with chat.client(auth=False) as http:
        async with http.post("/api/login", json={"username": PASSWORD, "password": "x"}):
            pass
        async with http.post(
            "/api/login", json={"username": "admin", "password": PASSWORD}
        ) as resp:
            session_id = resp.cookies[SESSION_COOKIE].value
    logged = capsys.readouterr()
    assert "login" in logged.out + logged.err  # the events are logged...
    for secret in (PASSWORD, session_id):  # ...without what would let anyone in
        assert secret not in logged.out + logged.err


async def test_a_forged_cookie_is_refused(chat: Harness) -> None:
    async with (
        chat.client(auth=False) as http,
        http.get("/api/chat/session", cookies={SESSION_COOKIE: "forged"}) as resp,
    ):
        assert resp.status == 401


async def test_without_a_password_every_call_is_503_with_the_fix(tmp_path: Path) -> None:
    async for h in _serve(tmp_path, None):
        async with h.client(auth=False) as http:
            for method, path in (
                ("GET", "/api/chat/messages?space=main"),
                ("POST", "/api/chat/messages"),
                ("POST", "/api/login"),
                ("GET", "/api/chat/stream?space=main"),
                ("GET", "/api/chat/session"),
            ):
                async with http.request(
                    method, path, json={"username": "admin", "password": ""}
                ) as resp:
                    assert resp.status == 503, path
                    assert "MERCURY_DASHBOARD_PASSWORD" in (await resp.json())["error"]
            # Even a bearer of the empty string does not open it.
            async with http.get(
                "/api/chat/messages?space=main", headers={"Authorization": "Bearer "}
            ) as resp:
                assert resp.status == 503


# -------------------------------------------------------------------------- messages


async def test_post_hands_the_sink_a_web_dm_from_the_logged_in_user(chat: Harness) -> None:
    async with (
        chat.client() as http,
        http.post("/api/chat/messages", json={"space": "ops-1", "text": "hello"}) as resp,
    ):
        assert resp.status == 202
        body = await resp.json()
    assert body["space"] == "ops-1"
    [msg] = chat.sink.received
    assert msg.platform == "web"
    assert msg.platform_message_id == body["id"]
    assert msg.conversation == ConversationRef("web", "ops-1")
    # The bare user id: the pipeline's key is "web:admin", as permissions.admins spells it.
    assert msg.author_id == "admin" and msg.author_name == "admin"
    assert msg.from_operator is True  # behind the dashboard password: the operator
    assert msg.text == "hello"
    assert msg.is_dm is True and msg.mentions_bot is False and msg.from_bot is False
    assert msg.attachments == ()


async def test_the_same_client_id_gives_the_same_message_id(chat: Harness) -> None:
    async with chat.client() as http:
        ids = []
        for client_id in ("retry-1", "retry-1", "other"):
            async with http.post(
                "/api/chat/messages",
                json={"space": "main", "text": "once", "client_id": client_id},
            ) as resp:
                assert resp.status == 202
                ids.append((await resp.json())["id"])
        async with http.get("/api/chat/messages?space=main") as resp:
            listed = (await resp.json())["messages"]
    assert ids[0] == ids[1] != ids[2]
    assert [m.platform_message_id for m in chat.sink.received] == ids
    # The retry is one message in the log, not two.
    assert [m["id"] for m in listed] == [ids[0], ids[2]]


@pytest.mark.parametrize(
    "body",
    [
        {"space": "../etc", "text": "x"},
        {"space": "", "text": "x"},
        {"space": "a" * 65, "text": "x"},
        {"space": "-lead", "text": "x"},
        {"text": "x"},
    ],
)
async def test_a_bad_space_name_is_a_clear_400(chat: Harness, body: dict[str, Any]) -> None:
    async with chat.client() as http, http.post("/api/chat/messages", json=body) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"].startswith("space:")
    assert chat.sink.received == []


async def test_empty_text_and_non_json_are_400(chat: Harness) -> None:
    async with chat.client() as http:
        async with http.post("/api/chat/messages", json={"space": "main", "text": " "}) as resp:
            assert resp.status == 400
            assert "text" in (await resp.json())["error"]
        async with http.post("/api/chat/messages", data=b"not json") as resp:
            assert resp.status == 400
        async with http.post(
            "/api/chat/messages", json={"space": "main", "text": "x", "client_id": "a b"}
        ) as resp:
            assert resp.status == 400
            assert "client_id" in (await resp.json())["error"]


async def test_history_with_cursors_has_messages_and_replies_in_order(chat: Harness) -> None:
    _answer_with(
        chat, lambda m: Reply(m.conversation, f"echo {m.text}", reply_to=m.platform_message_id)
    )
    async with chat.client() as http:
        async with http.post("/api/chat/messages", json={"space": "s1", "text": "one"}) as r:
            first = await r.json()
        await asyncio.sleep(0.2)
        async with http.get("/api/chat/messages", params={"space": "s1"}) as r:
            page1 = await r.json()
        assert [(m["role"], m["text"]) for m in page1["messages"]] == [
            ("user", "one"),
            ("assistant", "echo one"),
        ]
        user, reply = page1["messages"]
        assert user["id"] == first["id"] and user["author"] == "admin" and user["space"] == "s1"
        assert reply["reply_to"] == first["id"]
        assert user["cursor"] < reply["cursor"] == page1["cursor"]
        assert set(user) >= {"cursor", "id", "space", "role", "author", "text", "files", "ts"}

        async with http.post("/api/chat/messages", json={"space": "s1", "text": "two"}) as r:
            assert r.status == 202
        async with http.post("/api/chat/messages", json={"space": "s2", "text": "elsewhere"}):
            pass
        await asyncio.sleep(0.2)
        async with http.get(
            "/api/chat/messages", params={"space": "s1", "after": page1["cursor"]}
        ) as r:
            page2 = await r.json()
        assert [m["text"] for m in page2["messages"]] == ["two", "echo two"]
        async with http.get(
            "/api/chat/messages", params={"space": "s1", "after": page2["cursor"]}
        ) as r:
            page3 = await r.json()
        assert page3 == {"messages": [], "cursor": page2["cursor"]}
        async with http.get("/api/chat/messages", params={"space": "s1", "after": "x"}) as r:
            assert r.status == 400


async def test_the_log_is_bounded_per_space(tmp_path: Path) -> None:
    async for h in _serve(tmp_path, PASSWORD, max_log=3):
        for i in range(5):
            await h.adapter.send(Reply(ConversationRef("web", "main"), f"r{i}"))
        await h.adapter.send(Reply(ConversationRef("web", "other"), "x"))
        async with h.client() as http, http.get("/api/chat/messages?space=main") as r:
            assert [m["text"] for m in (await r.json())["messages"]] == ["r2", "r3", "r4"]


async def test_a_history_callable_replaces_the_in_memory_log(tmp_path: Path) -> None:
    calls: list[tuple[str, int | None]] = []

    async def history(space: str, after: int | None) -> list[dict[str, Any]]:
        calls.append((space, after))
        return [{"cursor": 41, "id": "db1", "space": space, "role": "user", "text": "from db"}]

    async for h in _serve(tmp_path, PASSWORD, history=history):
        async with h.client() as http, http.get("/api/chat/messages?space=main&after=7") as r:
            body = await r.json()
    assert calls == [("main", 7)]
    assert body["cursor"] == 41 and body["messages"][0]["text"] == "from db"


async def test_a_failing_sink_is_a_500_and_a_retry_is_accepted(chat: Harness) -> None:
    failures = [RuntimeError("db down")]

    async def flaky(msg: InboundMessage) -> None:
        if failures:
            raise failures.pop()

    chat.sink.on_message = flaky
    body = {"space": "main", "text": "hi", "client_id": "c1"}
    async with chat.client() as http:
        async with http.post("/api/chat/messages", json=body) as r:
            assert r.status == 500
        async with http.post("/api/chat/messages", json=body) as r:
            assert r.status == 202
    assert len({m.platform_message_id for m in chat.sink.received}) == 1


async def test_a_message_the_pipeline_could_not_store_is_a_503_and_leaves_the_log(
    chat: Harness,
) -> None:
    failures = [InboundUnavailable("the database is busy")]

    async def unavailable(msg: InboundMessage) -> None:
        if failures:
            raise failures.pop()

    chat.sink.on_message = unavailable
    body = {"space": "main", "text": "keep me", "client_id": "c1"}
    async with chat.client() as http:
        async with http.post("/api/chat/messages", json=body) as r:
            assert r.status == 503
            assert r.headers["Retry-After"] == "5"
            answer = await r.json()
        assert answer["error"] == (
            "the message was not stored (the database is busy); send it again in a moment"
        )
        async with http.get("/api/chat/messages?space=main") as r:
            assert (await r.json())["messages"] == []  # not shown as if it were sent
        async with http.post("/api/chat/messages", json=body) as r:
            assert r.status == 202
            accepted = await r.json()
        async with http.get("/api/chat/messages?space=main") as r:
            listed = (await r.json())["messages"]
    assert [(m["id"], m["text"]) for m in listed] == [(accepted["id"], "keep me")]
    # Both attempts carried the same id, so the pipeline can tell a retry from a new one.
    assert {m.platform_message_id for m in chat.sink.received} == {accepted["id"]}


# ---------------------------------------------------------------------------- stream


async def test_the_stream_carries_messages_typing_status_edits_and_deletes_in_order(
    chat: Harness,
) -> None:
    conv = ConversationRef("web", "main")
    async with (
        chat.client() as http,
        http.get("/api/chat/stream?space=main") as stream,
    ):
        assert stream.status == 200
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        async with http.post("/api/chat/messages", json={"space": "main", "text": "go"}) as r:
            sent = await r.json()
        await chat.adapter.set_typing(conv)
        status = await chat.adapter.send_status(conv, "still working (30s)")
        [status_id] = status.platform_message_ids
        await chat.adapter.edit(conv, status_id, "still working (60s)")
        await chat.adapter.delete(conv, status_id)
        reply = await chat.adapter.send(Reply(conv, "done", reply_to=sent["id"]))
        await chat.adapter.send(Reply(ConversationRef("web", "other"), "not for this space"))
        events = await _events(stream, 6)

    kinds = [k for k, _ in events]
    assert kinds == ["message", "typing", "message", "edit", "delete", "message"]
    assert events[0][1]["id"] == sent["id"] and events[0][1]["role"] == "user"
    assert events[2][1]["role"] == "status" and events[2][1]["id"] == status_id
    assert events[3][1]["text"] == "still working (60s)" and events[3][1]["id"] == status_id
    assert events[4][1] == {"id": status_id, "space": "main"}
    assert events[5][1]["id"] == reply.platform_message_ids[0]
    assert events[5][1]["role"] == "assistant" and events[5][1]["text"] == "done"

    # Pollers see the deletion as a tombstone; a fresh view does not see the status at all.
    async with chat.client() as http:
        async with http.get("/api/chat/messages?space=main") as r:
            fresh = (await r.json())["messages"]
        async with http.get(f"/api/chat/messages?space=main&after={sent['cursor']}") as r:
            later = (await r.json())["messages"]
    assert [m["text"] for m in fresh] == ["go", "done"]
    assert [(m["id"], m.get("deleted", False)) for m in later] == [
        (status_id, True),
        (reply.platform_message_ids[0], False),
    ]


async def test_a_reply_edited_as_it_grows_stays_a_reply_until_withdrawn(chat: Harness) -> None:
    """A streaming preview: posted by send, edited in place, deleted once the answer is out."""
    conv = ConversationRef("web", "main")
    half = "Here is the fix:\n```python\nif a < b and **c"  # an open fence and an open **
    async with (
        chat.client() as http,
        http.get("/api/chat/stream?space=main") as stream,
    ):
        preview = Reply(conv, "Here is", preview=True)
        [pid] = (await chat.adapter.send(preview)).platform_message_ids
        posted = chat.adapter.logs.current_cursor("main")
        await chat.adapter.edit(conv, pid, half)
        async with http.get("/api/chat/messages?space=main") as r:
            fresh = (await r.json())["messages"]
        async with http.get(f"/api/chat/messages?space=main&after={posted}") as r:
            polled = (await r.json())["messages"]
        await chat.adapter.delete(conv, pid)
        async with http.get("/api/chat/messages?space=main") as r:
            after_delete = (await r.json())["messages"]
        events = await _events(stream, 3)

    assert [k for k, _ in events] == ["message", "edit", "delete"]
    assert events[0][1]["preview"] is True  # not the reply: pages and `mercury chat` can tell
    edited = events[1][1]
    assert (edited["id"], edited["role"], edited["text"]) == (pid, "assistant", half)
    assert edited["preview"] is True
    assert edited["cursor"] > events[0][1]["cursor"]
    assert events[2][1] == {"id": pid, "space": "main"}
    # A fresh view and a poller see the edited reply, still a reply; then nothing of it.
    assert [(m["id"], m["role"], m["text"]) for m in fresh] == [(pid, "assistant", half)]
    assert [(m["id"], m["role"], m["text"]) for m in polled] == [(pid, "assistant", half)]
    assert after_delete == []


async def test_a_reconnecting_stream_replays_from_its_cursor(chat: Harness) -> None:
    conv = ConversationRef("web", "main")
    first = await chat.adapter.send(Reply(conv, "a"))
    await chat.adapter.send(Reply(conv, "b"))
    async with chat.client() as http:
        async with http.get("/api/chat/messages?space=main") as r:
            cursor = (await r.json())["messages"][0]["cursor"]
        async with http.get(
            "/api/chat/stream?space=main", headers={"Last-Event-ID": str(cursor)}
        ) as stream:
            await chat.adapter.send(Reply(conv, "c"))
            events = await _events(stream, 2)
    assert first.platform_message_ids
    assert [d["text"] for _, d in events] == ["b", "c"]


async def test_heartbeats_flow_and_a_gone_client_is_unsubscribed(chat: Harness) -> None:
    async with chat.client() as http:
        stream = await http.get("/api/chat/stream?space=main")
        async with asyncio.timeout(5):
            while b": ping" not in await stream.content.readline():
                pass
        assert chat.adapter.subscriber_count("main") == 1
        stream.close()
    async with asyncio.timeout(5):
        while chat.adapter.subscriber_count("main"):
            await asyncio.sleep(0.05)


async def test_stop_ends_open_streams(chat: Harness) -> None:
    async with chat.client() as http, http.get("/api/chat/stream?space=main") as stream:
        await stream.content.readline()
        await chat.adapter.stop()
        async with asyncio.timeout(5):
            assert await stream.content.read() is not None
            assert stream.content.at_eof()
    assert chat.adapter.subscriber_count("main") == 0


# ----------------------------------------------------------------------------- files


async def test_an_upload_reaches_the_sink_and_downloads_back(chat: Harness) -> None:
    payload = os.urandom(3000)
    form = aiohttp.FormData()
    form.add_field("space", "main")
    form.add_field("text", "see attached")
    form.add_field("file", payload, filename="../../evil name?.bin", content_type="x/bin")
    async with chat.client() as http, http.post("/api/chat/files", data=form) as resp:
        assert resp.status == 202, await resp.text()
        sent = await resp.json()
    [msg] = chat.sink.received
    assert msg.platform_message_id == sent["id"] and msg.text == "see attached"
    [att] = msg.attachments
    assert isinstance(att, Attachment)
    assert att.name == "evil name_.bin" and att.size == 3000 and att.content_type == "x/bin"
    assert Path(att.ref or "").parent.parent == chat.adapter.upload_dir
    assert await chat.adapter.download(att, max_bytes=3000) == payload
    with pytest.raises(ValueError, match="limit"):
        await chat.adapter.download(att, max_bytes=2999)
    with pytest.raises(ValueError):
        await chat.adapter.download(Attachment("x", ref="/etc/passwd"), max_bytes=10**6)

    async with chat.client() as http:
        async with http.get("/api/chat/messages?space=main") as r:
            [entry] = (await r.json())["messages"]
        [f] = entry["files"]
        assert f["name"] == "evil name_.bin"
        async with http.get(f["url"]) as r:
            assert r.status == 200
            assert await r.read() == payload
            assert r.headers["Content-Disposition"].startswith("attachment")
        async with chat.client(auth=False) as anon, anon.get(f["url"]) as r:
            assert r.status == 401


@pytest.mark.parametrize("size", [5000, 200_000])  # caught while streaming / by its length
async def test_an_upload_over_the_cap_is_413_and_leaves_nothing(chat: Harness, size: int) -> None:
    form = aiohttp.FormData()
    form.add_field("space", "main")
    form.add_field("file", b"x" * size, filename="big.bin")
    async with chat.client() as http, http.post("/api/chat/files", data=form) as resp:
        assert resp.status == 413
        assert "4096 bytes" in (await resp.json())["error"]
    assert chat.sink.received == []
    assert list(chat.adapter.upload_dir.iterdir()) == []


async def test_an_upload_needs_a_file_and_a_valid_space(chat: Harness) -> None:
    async with chat.client() as http:
        form = aiohttp.FormData()
        form.add_field("space", "main")
        form.add_field("text", "no file")
        async with http.post("/api/chat/files", data=form) as resp:
            assert resp.status == 400
        form = aiohttp.FormData()
        form.add_field("space", "bad/space")
        form.add_field("file", b"x", filename="a.txt")
        async with http.post("/api/chat/files", data=form) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"].startswith("space:")
    assert list(chat.adapter.upload_dir.iterdir()) == []


async def test_reply_files_are_copied_and_downloadable(chat: Harness, tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    (outbox / "report.txt").write_text("the report")
    conv = ConversationRef("web", "main")
    await chat.adapter.send(
        Reply(conv, "here", files=(OutboundFile(outbox / "report.txt", "report.txt"),))
    )
    (outbox / "report.txt").unlink()  # the outbox is cleaned after a run
    async with chat.client() as http:
        async with http.get("/api/chat/messages?space=main") as r:
            [entry] = (await r.json())["messages"]
        [f] = entry["files"]
        assert f["name"] == "report.txt"
        async with http.get(f["url"]) as r:
            assert r.status == 200 and await r.text() == "the report"
        async with http.get("/api/chat/files/" + "0" * 32 + "/report.txt") as r:
            assert r.status == 404
        async with http.get("/api/chat/files/..%2F..%2Fetc/passwd") as r:
            assert r.status == 404


# ------------------------------------------------------------------------------ page


async def test_the_chat_page_and_its_script_are_served(chat: Harness) -> None:
    async with chat.client(auth=False) as http:
        async with http.get("/chat") as r:
            assert r.status == 200
            html = await r.text()
            assert "Content-Security-Policy" in r.headers
        async with http.get("/chat/chat.js") as r:
            js = await r.text()
    assert 'id="login"' in html and 'id="space"' in html and 'type="file"' in html
    assert "/chat/chat.js" in html
    assert "EventSource" in js and "/api/chat/stream" in js and "/api/login" in js


# ---------------------------------------------------------------------- mercury chat


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _mercury_chat(
    cwd: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("MERCURY_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mercury.cli",
        "chat",
        *args,
        cwd=cwd,
        env={**base_env, "PYTHONPATH": str(REPO), **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_mercury_chat_prints_the_reply_from_a_running_instance(
    chat: Harness, tmp_path: Path
) -> None:
    # The instance's address and password come from the config file and its .env.
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    (outbox / "result.csv").write_text("a,b\n")
    h = chat
    (tmp_path / "mercury.yaml").write_text(
        f"server:\n  host: 127.0.0.1\n  port: {h.server.bound_port}\n"
    )
    (tmp_path / ".env").write_text(f"MERCURY_DASHBOARD_PASSWORD={PASSWORD}\n")

    async def bot(msg: InboundMessage) -> None:
        async def answer() -> None:
            conv = msg.conversation
            status = await h.adapter.send_status(conv, "still working (30s)")
            await asyncio.sleep(0.2)
            await h.adapter.delete(conv, status.platform_message_ids[0])
            await h.adapter.send(
                Reply(
                    conv,
                    f"you said: {msg.text} in {conv.chat_id}",
                    files=(OutboundFile(outbox / "result.csv", "result.csv"),),
                    reply_to=msg.platform_message_id,
                )
            )

        asyncio.get_running_loop().create_task(answer())

    h.sink.on_message = bot
    code, out, err = await _mercury_chat(tmp_path, "hello there", "--space", "cli")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "you said: hello there in cli"
    assert lines[1].startswith(f"file: result.csv {h.url}/api/chat/files/")
    assert "still working" not in out  # the status is not the reply

    code, out, err = await _mercury_chat(tmp_path, "as json", "--json")
    assert code == 0, err
    entry = json.loads(out)
    assert entry["role"] == "assistant" and entry["text"] == "you said: as json in main"
    assert entry["files"][0]["url"].startswith(h.url + "/api/chat/files/")
    assert [m.text for m in h.sink.received] == ["hello there", "as json"]


async def test_mercury_chat_polls_when_there_is_no_event_stream(tmp_path: Path) -> None:
    adapter = WebChatAdapter(
        username="admin", password=PASSWORD, max_upload=100, upload_dir=tmp_path / "up"
    )
    app = build_app()
    app.add_routes([r for r in adapter.routes() if r.path != "/api/chat/stream"])
    server = HttpServer("127.0.0.1", 0, app)
    await server.start()

    async def bot(msg: InboundMessage) -> None:
        async def answer() -> None:
            await asyncio.sleep(0.3)
            await adapter.send(Reply(msg.conversation, "polled", reply_to=msg.platform_message_id))

        asyncio.get_running_loop().create_task(answer())

    await adapter.start(bot)
    try:
        code, out, err = await _mercury_chat(
            tmp_path,
            "hi",
            "--url",
            f"http://127.0.0.1:{server.bound_port}",
            env={"MERCURY_DASHBOARD_PASSWORD": PASSWORD},
        )
    finally:
        await adapter.stop()
        await server.stop()
    assert (code, out) == (0, "polled\n"), err


async def test_mercury_chat_with_a_wrong_password_says_401(chat: Harness, tmp_path: Path) -> None:
    code, out, err = await _mercury_chat(
        tmp_path, "hi", "--url", chat.url, env={"MERCURY_DASHBOARD_PASSWORD": "nope"}
    )
    assert code == 1 and out == ""
    assert err.startswith("error: 401 unauthorized") and err.count("\n") == 1
    assert chat.sink.received == []


async def test_mercury_chat_times_out_when_nobody_answers(chat: Harness, tmp_path: Path) -> None:
    code, _out, err = await _mercury_chat(
        tmp_path,
        "anyone?",
        "--url",
        chat.url,
        "--timeout",
        "1",
        env={"MERCURY_DASHBOARD_PASSWORD": PASSWORD},
    )
    assert code == 1
    assert "no reply within 1s" in err
    assert [m.text for m in chat.sink.received] == ["anyone?"]


async def test_mercury_chat_with_no_instance_says_how_to_start_one(tmp_path: Path) -> None:
    port = _free_port()
    (tmp_path / "mercury.yaml").write_text(f"server:\n  port: {port}\n")
    code, out, err = await _mercury_chat(
        tmp_path, "hi", env={"MERCURY_DASHBOARD_PASSWORD": PASSWORD}
    )
    assert code == 1 and out == ""
    assert err.strip() == (
        f"error: no Mercury answering at http://127.0.0.1:{port}: start it with `mercury run`"
    )


async def test_mercury_chat_without_a_password_says_what_to_set(tmp_path: Path) -> None:
    code, _out, err = await _mercury_chat(tmp_path, "hi", "--url", "http://127.0.0.1:9")
    assert code == 1
    assert "MERCURY_DASHBOARD_PASSWORD" in err


async def test_a_reply_that_reads_like_a_status_is_still_a_reply(chat: Harness) -> None:
    """Statuses are their own outbound event (send_status): never guessed from text."""
    conv = ConversationRef("web", "main")
    sent = await chat.adapter.send(Reply(conv, "Still working through the list: 3 of 5 done."))
    async with chat.client() as http, http.get("/api/chat/messages?space=main") as r:
        entries = (await r.json())["messages"]
    [entry] = [e for e in entries if e["id"] == sent.platform_message_ids[0]]
    assert entry["role"] == "assistant" and "preview" not in entry
