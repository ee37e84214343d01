"""A fake Slack on 127.0.0.1 for driving slack-bolt / slack_sdk in tests.

It serves the Web API (`POST /api/{method}`), the files upload flow used by
`files_upload_v2`, private file downloads that require the bot token, a Socket Mode
websocket, and a helper that delivers signed HTTP events. Every call is recorded, so
tests assert on the payloads the real client library sent; the edits (chat.update) and
deletions (chat.delete) the fake applied are also in `edits` and `deletes`, with their
monotonic time. Deleting a message twice is `message_not_found`, as on Slack.

`fail_next(method, status, times, retry_after=1)` answers the next `times` calls of a
method with `status`; 429 as Slack sends it (`ratelimited`, a whole-second Retry-After,
which slack_sdk's AsyncRateLimitErrorRetryHandler parses with int()).

By hand::

    fake = FakeSlack()
    await fake.start()
    client = AsyncWebClient(token=FakeSlack.BOT_TOKEN, base_url=fake.api_url)
    await fake.push_event(FakeSlack.message("hi", channel="D1", channel_type="im"))
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from tests.fakes.changes import Deletion, Edit


@dataclass
class Call:
    """One Web API call as the fake received it."""

    method: str
    params: dict[str, Any]
    token: str | None


@dataclass
class Failure:
    status: int  # 429 for ratelimited, 5xx for a broken server
    retry_after: int = 1


@dataclass
class Upload:
    file_id: str
    filename: str
    data: bytes = b""
    completed: dict[str, Any] = field(default_factory=dict)


class FakeSlack:
    BOT_TOKEN = "xoxb-fake-bot-token"
    APP_TOKEN = "xapp-1-fake-app-token"
    SIGNING_SECRET = "fake-signing-secret"
    BOT_USER_ID = "UBOT"
    BOT_ID = "BBOT"
    TEAM_ID = "T0001"
    APP_ID = "A0001"

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.posted: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.uploads: dict[str, Upload] = {}
        self.files: dict[str, tuple[bytes, str]] = {}  # file id -> (data, mimetype)
        self.acks: dict[str, dict[str, Any]] = {}
        self.users: dict[str, str] = {"U1": "alice", "U2": "bob"}
        self.ws_connections = 0
        self.edits: list[Edit] = []
        self.deletes: list[Deletion] = []
        self._failures: dict[str, list[Failure]] = {}
        self._ts = itertools.count(1)
        self._sockets: list[web.WebSocketResponse] = []
        self._connected = asyncio.Condition()
        self._ack_waiters: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/api/{method}", self._api)
        app.router.add_get("/api/{method}", self._api)  # users.info and friends use GET
        app.router.add_post("/upload/{file_id}", self._upload)
        app.router.add_get("/files-pri/{file_id}/{name}", self._download)
        app.router.add_get("/socket", self._socket)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def close(self) -> None:
        for ws in list(self._sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.base}/api/"  # the trailing slash matters to slack_sdk

    # ------------------------------------------------------------------- controls

    def fail_next(
        self, method: str, status: int = 500, times: int = 1, retry_after: int = 1
    ) -> None:
        """Answer the next `times` calls of `method` with `status` (429 = ratelimited, with
        Retry-After `retry_after`: Slack sends whole seconds)."""
        self._failures.setdefault(method, []).extend(
            Failure(status, retry_after) for _ in range(times)
        )

    def calls_to(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    def add_file(self, name: str, data: bytes, mimetype: str = "text/plain") -> dict[str, Any]:
        """Store a user's file; returns the file object as it appears in a message event."""
        file_id = "F" + uuid.uuid4().hex[:10].upper()
        self.files[file_id] = (data, mimetype)
        url = f"{self.base}/files-pri/{file_id}/{name}"
        return {
            "id": file_id,
            "name": name,
            "title": name,
            "mimetype": mimetype,
            "size": len(data),
            "url_private": url,
            "url_private_download": url + "?download=1",
        }

    async def next_post(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next chat.postMessage payload."""
        return await asyncio.wait_for(self.posted.get(), timeout)

    def new_ts(self) -> str:
        return f"{int(time.time())}.{next(self._ts):06d}"

    # ------------------------------------------------------------ event builders

    @classmethod
    def message(
        cls,
        text: str,
        *,
        channel: str = "C1",
        user: str = "U1",
        ts: str | None = None,
        channel_type: str = "channel",
        event_type: str = "message",
        **extra: Any,
    ) -> dict[str, Any]:
        """A message (or app_mention) event as Slack sends it."""
        event: dict[str, Any] = {
            "type": event_type,
            "channel": channel,
            "user": user,
            "text": text,
            "ts": ts or f"{time.time():.6f}",
            "team": cls.TEAM_ID,
        }
        if event_type == "message":
            event["channel_type"] = channel_type
        event.update(extra)
        return event

    @classmethod
    def callback(cls, event: dict[str, Any], event_id: str | None = None) -> dict[str, Any]:
        """The Events API envelope (`event_callback`) around one event."""
        return {
            "token": "legacy-verification-token",
            "team_id": cls.TEAM_ID,
            "api_app_id": cls.APP_ID,
            "event": event,
            "type": "event_callback",
            "event_id": event_id or "Ev" + uuid.uuid4().hex[:10].upper(),
            "event_time": int(time.time()),
            "authorizations": [
                {"team_id": cls.TEAM_ID, "user_id": cls.BOT_USER_ID, "is_bot": True}
            ],
        }

    # ---------------------------------------------------------------- Socket Mode

    async def push_event(self, event: dict[str, Any], *, envelope_id: str | None = None) -> str:
        """Send an `events_api` envelope over the current websocket; returns its id."""
        payload = event if event.get("type") == "event_callback" else self.callback(event)
        envelope_id = envelope_id or uuid.uuid4().hex
        self._ack_waiters[envelope_id] = asyncio.get_running_loop().create_future()
        ws = await self._live_socket()
        await ws.send_json(
            {
                "envelope_id": envelope_id,
                "payload": payload,
                "type": "events_api",
                "accepts_response_payload": False,
                "retry_attempt": 0,
                "retry_reason": "",
            }
        )
        return envelope_id

    async def wait_ack(self, envelope_id: str, timeout: float = 5.0) -> dict[str, Any]:
        return await asyncio.wait_for(asyncio.shield(self._ack_waiters[envelope_id]), timeout)

    async def wait_connections(self, count: int, timeout: float = 10.0) -> None:
        """Wait until `count` websockets have been opened in total (and one is open)."""

        async def _reached() -> None:
            async with self._connected:
                await self._connected.wait_for(
                    lambda: (
                        self.ws_connections >= count and any(not w.closed for w in self._sockets)
                    )
                )

        await asyncio.wait_for(_reached(), timeout)

    async def drop_websocket(self) -> None:
        """Close every open websocket, as Slack does on a refresh or a network blip."""
        for ws in list(self._sockets):
            await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"dropped by test")

    async def _live_socket(self) -> web.WebSocketResponse:
        for ws in reversed(self._sockets):
            if not ws.closed:
                return ws
        raise RuntimeError("no Socket Mode client is connected")

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self._sockets.append(ws)
        await ws.send_json({"type": "hello", "num_connections": 1, "debug_info": {}})
        async with self._connected:
            self.ws_connections += 1
            self._connected.notify_all()
        try:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    data = json.loads(msg.data)
                except ValueError:
                    continue
                envelope_id = data.get("envelope_id")
                if envelope_id:
                    self.acks[envelope_id] = data
                    waiter = self._ack_waiters.get(envelope_id)
                    if waiter is not None and not waiter.done():
                        waiter.set_result(data)
        finally:
            self._sockets.remove(ws)
        return ws

    # ------------------------------------------------------------ signed HTTP events

    async def deliver_http(
        self,
        events_url: str,
        payload: dict[str, Any],
        secret: str,
        retry_num: int | None = None,
        *,
        timestamp: int | None = None,
    ) -> tuple[int, str]:
        """POST `payload` to an Events API endpoint, signed as Slack signs it."""
        body = json.dumps(payload)
        ts = str(int(time.time()) if timestamp is None else timestamp)
        digest = hmac.new(secret.encode(), f"v0:{ts}:{body}".encode(), hashlib.sha256)
        headers = {
            "Content-Type": "application/json",
            "X-Slack-Request-Timestamp": ts,
            "X-Slack-Signature": "v0=" + digest.hexdigest(),
        }
        if retry_num is not None:
            headers["X-Slack-Retry-Num"] = str(retry_num)
            headers["X-Slack-Retry-Reason"] = "http_timeout"
        async with (
            aiohttp.ClientSession() as session,
            session.post(events_url, data=body, headers=headers) as resp,
        ):
            return resp.status, await resp.text()

    # -------------------------------------------------------------------- Web API

    async def _params(self, request: web.Request) -> dict[str, Any]:
        params: dict[str, Any] = dict(request.query)
        if request.content_type == "application/json":
            body = await request.json()
            if isinstance(body, dict):
                params.update(body)
        elif request.can_read_body:
            params.update(dict(await request.post()))
        return params

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params = await self._params(request)
        auth = request.headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else params.get("token")
        self.calls.append(Call(method, params, token))
        pending = self._failures.get(method)
        if pending:
            failure = pending.pop(0)
            if failure.status == 429:
                return web.json_response(
                    {"ok": False, "error": "ratelimited"},
                    status=429,
                    headers={"Retry-After": str(failure.retry_after)},
                )
            return web.Response(status=failure.status, text="upstream trouble")
        wanted = self.APP_TOKEN if method == "apps.connections.open" else self.BOT_TOKEN
        if token != wanted:
            return web.json_response({"ok": False, "error": "invalid_auth"})
        handler = getattr(self, "_m_" + method.replace(".", "_"), None)
        if handler is None:
            return web.json_response({"ok": False, "error": "unknown_method"})
        return web.json_response({"ok": True, **handler(params)})

    def _m_auth_test(self, _p: dict[str, Any]) -> dict[str, Any]:
        return {
            "url": "https://fake.slack.com/",
            "team": "Fake Team",
            "user": "mercury",
            "team_id": self.TEAM_ID,
            "user_id": self.BOT_USER_ID,
            "bot_id": self.BOT_ID,
            "is_enterprise_install": False,
        }

    def _m_apps_connections_open(self, _p: dict[str, Any]) -> dict[str, Any]:
        return {"url": f"ws://127.0.0.1:{self.port}/socket"}

    def _m_chat_postMessage(self, p: dict[str, Any]) -> dict[str, Any]:
        ts = self.new_ts()
        message = {**p, "ts": ts}
        self.posted.put_nowait(message)
        return {
            "channel": p.get("channel"),
            "ts": ts,
            "message": {"text": p.get("text"), "user": self.BOT_USER_ID, "bot_id": self.BOT_ID,
                        "ts": ts, "thread_ts": p.get("thread_ts")},
        }  # fmt: skip

    def _m_chat_update(self, p: dict[str, Any]) -> dict[str, Any]:
        channel, ts, text = str(p.get("channel")), str(p.get("ts")), str(p.get("text"))
        self.edits.append(Edit("chat.update", channel, ts, text))
        return {"channel": channel, "ts": ts, "text": text}

    def _m_chat_delete(self, p: dict[str, Any]) -> dict[str, Any]:
        channel, ts = str(p.get("channel")), str(p.get("ts"))
        if any(d.chat_id == channel and d.message_id == ts for d in self.deletes):
            return {"ok": False, "error": "message_not_found"}
        self.deletes.append(Deletion("chat.delete", channel, ts))
        return {"channel": channel, "ts": ts}

    def _m_reactions_add(self, _p: dict[str, Any]) -> dict[str, Any]:
        return {}

    def _m_reactions_remove(self, _p: dict[str, Any]) -> dict[str, Any]:
        return {}

    def _m_conversations_info(self, p: dict[str, Any]) -> dict[str, Any]:
        channel = str(p.get("channel", ""))
        return {"channel": {"id": channel, "name": channel.lower(), "is_im": channel[:1] == "D"}}

    def _m_users_info(self, p: dict[str, Any]) -> dict[str, Any]:
        user = str(p.get("user", ""))
        name = self.users.get(user, user)
        return {"user": {"id": user, "name": name, "real_name": name.title(),
                         "profile": {"display_name": name}}}  # fmt: skip

    def _m_files_getUploadURLExternal(self, p: dict[str, Any]) -> dict[str, Any]:
        file_id = "F" + uuid.uuid4().hex[:10].upper()
        self.uploads[file_id] = Upload(file_id, str(p.get("filename", "")))
        return {"upload_url": f"{self.base}/upload/{file_id}", "file_id": file_id}

    def _m_files_completeUploadExternal(self, p: dict[str, Any]) -> dict[str, Any]:
        files = json.loads(p.get("files", "[]"))
        for f in files:
            upload = self.uploads.get(f.get("id", ""))
            if upload is not None:
                upload.completed = dict(p)
        return {"files": [{"id": f.get("id"), "title": f.get("title")} for f in files]}

    async def _upload(self, request: web.Request) -> web.Response:
        upload = self.uploads.get(request.match_info["file_id"])
        if upload is None:
            return web.Response(status=404)
        upload.data = await request.read()
        self.calls.append(Call("upload", {"file_id": upload.file_id}, None))
        return web.Response(text=f"OK - {len(upload.data)}")

    async def _download(self, request: web.Request) -> web.Response:
        found = self.files.get(request.match_info["file_id"])
        if found is None:
            return web.Response(status=404)
        if request.headers.get("Authorization") != f"Bearer {self.BOT_TOKEN}":
            # What Slack really does without the token: a 200 HTML login page.
            return web.Response(text="<html>sign in</html>", content_type="text/html")
        data, mimetype = found
        return web.Response(body=data, content_type=mimetype)
