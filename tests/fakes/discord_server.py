"""A fake Discord (REST API v10 + gateway websocket) on 127.0.0.1 for adapter tests.

Speaks just enough of Discord for a real discord.py client: login (`/users/@me`,
`/oauth2/applications/@me`), channel messages (JSON and multipart), typing, edits,
deletes, attachment files, and a gateway that says HELLO, answers heartbeats, READYs an
IDENTIFY (then GUILD_CREATEs one guild), RESUMEs a dropped session by replaying what it
missed, and dispatches the MESSAGE_CREATE events a test pushes. Everything it receives is
recorded; messages the bot posts also go on `outbox`, and the edits and deletions it
applied are in `edits` and `deletes` with their monotonic time.

`fail_next(operation, status, times, retry_after=0.2)` answers the next `times` calls of a
REST operation ("create_message", "edit_message", "delete_message", "trigger_typing",
"get_channel", ...) with `status`; 429 as Discord sends it: the JSON body
{"message", "retry_after", "global"} and the headers discord.py reads (Via,
Retry-After, X-RateLimit-*). discord.py sleeps `retry_after` and tries again, 5 tries in
all (discord/http.py, 2.7), before it raises.

Usage:
    fake = FakeDiscord()
    await fake.start()
    ... DiscordConfig(api_base_url=fake.api_base_url, gateway_url=fake.gateway_url) ...
    await fake.dispatch_message(content="hi", channel_id=fake.dm_channel_id)
    await fake.stop()
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import WSMsgType, web

from tests.fakes.changes import Deletion, Edit

API = "/api/v10"
TOKEN = "fake-discord-bot-token.abc.def"
BOT_ID = 1000000000000000001
GUILD_ID = 1000000000000000100
TEXT_CHANNEL_ID = 1000000000000000101
THREAD_ID = 1000000000000000102
DM_CHANNEL_ID = 1000000000000000200
USER_ID = 1000000000000000300
OTHER_BOT_ID = 1000000000000000400
OWNER_ID = 1000000000000000500
HEARTBEAT_INTERVAL_MS = 41250
# Snowflakes for everything the fake creates: above all fixed ids, increasing.
_SNOWFLAKES = itertools.count(1100000000000000000)


def snowflake() -> int:
    return next(_SNOWFLAKES)


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _json(data: Any, status: int = 200) -> web.Response:
    # discord.py decodes JSON only when Content-Type is exactly application/json;
    # aiohttp's json_response would append "; charset=utf-8".
    return web.Response(
        status=status, body=json.dumps(data).encode(), headers={"Content-Type": "application/json"}
    )


def user_payload(user_id: int, name: str, *, bot: bool = False) -> dict[str, Any]:
    return {
        "id": str(user_id),
        "username": name,
        "global_name": name.title(),
        "discriminator": "0",
        "avatar": None,
        "bot": bot,
    }


BOT_USER = user_payload(BOT_ID, "mercury", bot=True)
HUMAN = user_payload(USER_ID, "alice")
OTHER_BOT = user_payload(OTHER_BOT_ID, "otherbot", bot=True)


@dataclass
class Call:
    """One REST request the fake received."""

    method: str
    path: str
    json: Any = None
    files: list[tuple[str, bytes]] = field(default_factory=list)  # (filename, content)
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Failure:
    status: int
    retry_after: float = 0.2

    def response(self, operation: str) -> web.Response:
        if self.status != 429:
            return _json({"message": f"{self.status}: fake failure", "code": 0}, self.status)
        body = {"message": "You are being rate limited.", "retry_after": self.retry_after,
                "global": False}  # fmt: skip
        resp = _json(body, 429)
        resp.headers.update(
            {
                # Without Via, discord.py takes a 429 for a Cloudflare ban: no retry.
                "Via": "1.1 google",
                "Retry-After": str(math.ceil(self.retry_after)),  # whole seconds, rounded up
                "X-RateLimit-Limit": "5",
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": f"{time.time() + self.retry_after:.3f}",
                "X-RateLimit-Reset-After": f"{self.retry_after:.3f}",
                "X-RateLimit-Bucket": f"fake-{operation}",
                "X-RateLimit-Scope": "user",
            }
        )
        return resp


@dataclass
class _Session:
    session_id: str
    events: list[dict[str, Any]] = field(default_factory=list)  # every dispatch, by seq


class FakeDiscord:
    """Discord REST + gateway on one loopback port."""

    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.calls: list[Call] = []
        self.outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.gateway_ops: list[tuple[str, int, Any]] = []  # (path, op, d) the client sent
        self.identifies = 0
        self.ignore_identify = False  # True: never READY (a gateway that hangs)
        self.refuse_gateway = 0  # answer this many next gateway connects with 503
        self.gateway_refusals = 0
        self.resumes = 0
        self.attachment_files: dict[str, bytes] = {}
        self.messages: dict[int, dict[str, Any]] = {}  # every message, by id
        self.edits: list[Edit] = []
        self.deletes: list[Deletion] = []
        self._failures: dict[str, list[Failure]] = {}
        self.connected = asyncio.Event()  # set while a client is identified/resumed
        self._seq = 0
        self._sessions: dict[str, _Session] = {}
        self._session: _Session | None = None
        self._ws: web.WebSocketResponse | None = None
        self._lock = asyncio.Lock()
        self._runner: web.AppRunner | None = None
        self._sockets: set[web.WebSocketResponse] = set()
        self.port = 0

    # ------------------------------------------------------------------ lifecycle

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base_url(self) -> str:
        return self.base_url + API

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024**2)
        r = app.router
        r.add_get("/gateway", self._gateway)
        r.add_get("/resume-gateway", self._gateway)
        r.add_get(API + "/gateway", self._get_gateway)
        r.add_get(API + "/gateway/bot", self._get_gateway)
        r.add_get(API + "/users/@me", self._users_me)
        r.add_get(API + "/oauth2/applications/@me", self._application)
        r.add_get(API + "/channels/{cid}", self._get_channel)
        r.add_post(API + "/channels/{cid}/messages", self._post_message)
        r.add_patch(API + "/channels/{cid}/messages/{mid}", self._edit_message)
        r.add_delete(API + "/channels/{cid}/messages/{mid}", self._delete_message)
        r.add_post(API + "/channels/{cid}/typing", self._typing)
        r.add_get("/attachments/{name}", self._attachment)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        for ws in list(self._sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # ------------------------------------------------------------------ test controls

    def add_attachment(self, name: str, content: bytes) -> dict[str, Any]:
        """Serve `content` at an attachment URL; returns the attachment object for a message."""
        self.attachment_files[name] = content
        return {
            "id": str(snowflake()),
            "filename": name,
            "size": len(content),
            "content_type": "application/octet-stream",
            "url": f"{self.base_url}/attachments/{name}",
            "proxy_url": f"{self.base_url}/attachments/{name}",
        }

    def message_payload(
        self,
        content: str,
        *,
        channel_id: int = TEXT_CHANNEL_ID,
        author: dict[str, Any] | None = None,
        guild: bool | None = None,
        mentions: list[dict[str, Any]] | None = None,
        attachments: list[dict[str, Any]] | None = None,
        reply_to: int | None = None,
    ) -> dict[str, Any]:
        """A full Message object as Discord sends it in MESSAGE_CREATE."""
        in_guild = guild if guild is not None else channel_id != DM_CHANNEL_ID
        msg: dict[str, Any] = {
            "id": str(snowflake()),
            "channel_id": str(channel_id),
            "author": author or HUMAN,
            "content": content,
            "timestamp": _now(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": mentions or [],
            "mention_roles": [],
            "attachments": attachments or [],
            "embeds": [],
            "pinned": False,
            "type": 0,
        }
        if in_guild:
            msg["guild_id"] = str(GUILD_ID)
        if reply_to is not None:
            msg["type"] = 19
            msg["message_reference"] = {
                "message_id": str(reply_to),
                "channel_id": str(channel_id),
                **({"guild_id": str(GUILD_ID)} if in_guild else {}),
            }
            if reply_to in self.messages:
                msg["referenced_message"] = self.messages[reply_to]
        return msg

    async def dispatch_message(self, content: str = "", **kwargs: Any) -> dict[str, Any]:
        """Push a MESSAGE_CREATE (built by `message_payload`); returns the message."""
        msg = self.message_payload(content, **kwargs)
        self.messages[int(msg["id"])] = msg
        await self.dispatch("MESSAGE_CREATE", msg)
        return msg

    async def dispatch(self, event: str, data: Any) -> None:
        """Record a dispatch in the session and send it if a client is connected.

        While the client is disconnected the event only waits in the session, as on
        Discord: a RESUME replays it, a fresh IDENTIFY never sees it.
        """
        async with self._lock:
            if self._session is None:
                raise RuntimeError("no gateway session yet")
            frame = self._frame(event, data)
            self._session.events.append(frame)
            if self._ws is not None and not self._ws.closed:
                await self._ws.send_str(json.dumps(frame))

    async def drop_gateway(self, code: int = 4000) -> None:
        """Close the live gateway connection as a network blip would (resumable code)."""
        async with self._lock:
            ws, self._ws = self._ws, None
            self.connected.clear()
        if ws is not None:
            await ws.close(code=code)

    async def wait_connected(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(self.connected.wait(), timeout)

    def fail_next(
        self, operation: str, status: int = 500, times: int = 1, retry_after: float = 0.2
    ) -> None:
        """Answer the next `times` calls of `operation` with `status` (429: rate limited
        for `retry_after` seconds)."""
        self._failures.setdefault(operation, []).extend(
            Failure(status, retry_after) for _ in range(times)
        )

    def calls_to(self, method: str, path_suffix: str) -> list[Call]:
        return [c for c in self.calls if c.method == method and c.path.endswith(path_suffix)]

    # ------------------------------------------------------------------ gateway

    def _frame(self, event: str, data: Any) -> dict[str, Any]:
        self._seq += 1
        return {"op": 0, "t": event, "s": self._seq, "d": data}

    async def _gateway(self, request: web.Request) -> web.StreamResponse:
        if self.refuse_gateway > 0:  # an outage: the client must back off and retry
            self.refuse_gateway -= 1
            self.gateway_refusals += 1
            return web.Response(status=503, text="gateway unavailable")
        ws = web.WebSocketResponse(heartbeat=None)
        await ws.prepare(request)
        self._sockets.add(ws)
        try:
            await ws.send_str(
                json.dumps({"op": 10, "d": {"heartbeat_interval": HEARTBEAT_INTERVAL_MS}})
            )
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    continue
                payload = json.loads(msg.data)
                op, d = payload.get("op"), payload.get("d")
                self.gateway_ops.append((request.path, op, d))
                if op == 1:
                    await ws.send_str(json.dumps({"op": 11}))
                elif op == 2 and not self.ignore_identify:
                    await self._identify(ws, d)
                elif op == 6:
                    await self._resume(ws, d)
        finally:
            self._sockets.discard(ws)
            async with self._lock:
                if self._ws is ws:
                    self._ws = None
                    self.connected.clear()
        return ws

    async def _identify(self, ws: web.WebSocketResponse, d: dict[str, Any]) -> None:
        if d.get("token") not in (self.token, f"Bot {self.token}"):
            await ws.close(code=4004, message=b"Authentication failed.")
            return
        self.identifies += 1
        session = _Session(session_id=f"session-{snowflake()}")
        self._sessions[session.session_id] = session
        async with self._lock:
            self._session = session
            ready = {
                "v": 10,
                "user": BOT_USER,
                "guilds": [{"id": str(GUILD_ID), "unavailable": True}],
                "session_id": session.session_id,
                "resume_gateway_url": f"ws://127.0.0.1:{self.port}/resume-gateway",
                "application": {"id": str(BOT_ID), "flags": 0},
                "private_channels": [],
                "relationships": [],
            }
            for frame in (self._frame("READY", ready), self._frame("GUILD_CREATE", _guild())):
                session.events.append(frame)
                await ws.send_str(json.dumps(frame))
            self._ws = ws
            self.connected.set()

    async def _resume(self, ws: web.WebSocketResponse, d: dict[str, Any]) -> None:
        session = self._sessions.get(d.get("session_id", ""))
        if d.get("token") not in (self.token, f"Bot {self.token}") or session is None:
            await ws.send_str(json.dumps({"op": 9, "d": False}))
            return
        self.resumes += 1
        async with self._lock:
            seen = d.get("seq") or 0
            for frame in session.events:
                if frame["s"] > seen:
                    await ws.send_str(json.dumps(frame))
            await ws.send_str(json.dumps(self._frame("RESUMED", {})))
            self._session = session
            self._ws = ws
            self.connected.set()

    # ------------------------------------------------------------------ REST

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bot {self.token}"

    async def _record(self, request: web.Request, operation: str) -> Call | web.Response:
        call = Call(request.method, request.path, headers=dict(request.headers))
        if request.content_type == "application/json" and request.can_read_body:
            call.json = await request.json()
        elif request.content_type.startswith("multipart/"):
            reader = await request.multipart()
            async for part in reader:
                data = await part.read()  # type: ignore[union-attr]
                if part.name == "payload_json":  # type: ignore[union-attr]
                    call.json = json.loads(data)
                else:
                    call.files.append((part.filename or "", bytes(data)))  # type: ignore[union-attr]
        self.calls.append(call)
        if not self._authorized(request):
            return _json({"message": "401: Unauthorized", "code": 0}, status=401)
        pending = self._failures.get(operation)
        if pending:
            return pending.pop(0).response(operation)
        return call

    async def _get_gateway(self, request: web.Request) -> web.Response:
        rec = await self._record(request, "get_gateway")
        if isinstance(rec, web.Response):
            return rec
        return _json(
            {
                "url": self.gateway_url,
                "shards": 1,
                "session_start_limit": {
                    "total": 1000,
                    "remaining": 1000,
                    "reset_after": 0,
                    "max_concurrency": 1,
                },
            }
        )

    async def _users_me(self, request: web.Request) -> web.Response:
        rec = await self._record(request, "get_current_user")
        return rec if isinstance(rec, web.Response) else _json(BOT_USER)

    async def _application(self, request: web.Request) -> web.Response:
        rec = await self._record(request, "get_current_application")
        if isinstance(rec, web.Response):
            return rec
        return _json(
            {
                "id": str(BOT_ID),
                "name": "mercury",
                "description": "",
                "icon": None,
                "bot_public": False,
                "bot_require_code_grant": False,
                "owner": user_payload(OWNER_ID, "owner"),
                "verify_key": "0" * 64,
                "flags": 0,
            }
        )

    async def _get_channel(self, request: web.Request) -> web.Response:
        rec = await self._record(request, "get_channel")
        if isinstance(rec, web.Response):
            return rec
        cid = int(request.match_info["cid"])
        if cid == DM_CHANNEL_ID:
            return _json({"id": str(cid), "type": 1, "recipients": [HUMAN]})
        for ch in _guild()["channels"] + _guild()["threads"]:
            if int(ch["id"]) == cid:
                return _json({**ch, "guild_id": str(GUILD_ID)})
        return _json({"message": "Unknown Channel", "code": 10003}, status=404)

    async def _post_message(self, request: web.Request) -> web.Response:
        rec = await self._record(request, "create_message")
        if isinstance(rec, web.Response):
            return rec
        body = rec.json or {}
        cid = int(request.match_info["cid"])
        attachments = [
            self.add_attachment(name, content) | {"filename": name} for name, content in rec.files
        ]
        msg = self.message_payload(
            body.get("content") or "",
            channel_id=cid,
            author=BOT_USER,
            attachments=attachments,
        )
        ref = body.get("message_reference")
        if ref:
            msg["type"] = 19
            msg["message_reference"] = {k: str(v) for k, v in ref.items() if k != "type"}
        self.messages[int(msg["id"])] = msg
        await self.outbox.put(
            {"message": msg, "request": body, "files": rec.files, "channel_id": cid}
        )
        return _json(msg)

    async def _edit_message(self, request: web.Request) -> web.Response:
        rec = await self._record(request, "edit_message")
        if isinstance(rec, web.Response):
            return rec
        mid = int(request.match_info["mid"])
        msg = self.messages.get(mid)
        if msg is None:
            return _json({"message": "Unknown Message", "code": 10008}, status=404)
        msg = msg | {"content": (rec.json or {}).get("content", msg["content"])}
        msg["edited_timestamp"] = _now()
        self.messages[mid] = msg
        self.edits.append(Edit("edit_message", msg["channel_id"], str(mid), msg["content"]))
        return _json(msg)

    async def _delete_message(self, request: web.Request) -> web.Response:
        rec = await self._record(request, "delete_message")
        if isinstance(rec, web.Response):
            return rec
        mid = request.match_info["mid"]
        if self.messages.pop(int(mid), None) is None:
            return _json({"message": "Unknown Message", "code": 10008}, status=404)
        self.deletes.append(Deletion("delete_message", request.match_info["cid"], mid))
        return web.Response(status=204)

    async def _typing(self, request: web.Request) -> web.Response:
        rec = await self._record(request, "trigger_typing")
        return rec if isinstance(rec, web.Response) else web.Response(status=204)

    async def _attachment(self, request: web.Request) -> web.Response:
        content = self.attachment_files.get(request.match_info["name"])
        if content is None:
            return web.Response(status=404)
        # Chunked, without Content-Length: the client's size cap must hold while streaming.
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(0, len(content), 4096):
            await resp.write(content[i : i + 4096])
        await resp.write_eof()
        return resp


def _guild() -> dict[str, Any]:
    """The one guild: a text channel and a thread under it."""
    return {
        "id": str(GUILD_ID),
        "name": "Test Guild",
        "icon": None,
        "owner_id": str(OWNER_ID),
        "unavailable": False,
        "member_count": 3,
        "large": False,
        "features": [],
        "emojis": [],
        "stickers": [],
        "members": [],
        "presences": [],
        "voice_states": [],
        "stage_instances": [],
        "guild_scheduled_events": [],
        "roles": [
            {
                "id": str(GUILD_ID),
                "name": "@everyone",
                "permissions": "1024",
                "position": 0,
                "color": 0,
                "hoist": False,
                "managed": False,
                "mentionable": False,
            }
        ],
        "channels": [
            {
                "id": str(TEXT_CHANNEL_ID),
                "type": 0,
                "name": "general",
                "position": 0,
                "permission_overwrites": [],
                "nsfw": False,
                "topic": None,
                "parent_id": None,
                "rate_limit_per_user": 0,
            }
        ],
        "threads": [
            {
                "id": str(THREAD_ID),
                "guild_id": str(GUILD_ID),
                "parent_id": str(TEXT_CHANNEL_ID),
                "owner_id": str(USER_ID),
                "name": "a thread",
                "type": 11,
                "last_message_id": None,
                "rate_limit_per_user": 0,
                "message_count": 0,
                "member_count": 1,
                "thread_metadata": {
                    "archived": False,
                    "auto_archive_duration": 1440,
                    "archive_timestamp": _now(),
                    "locked": False,
                },
            }
        ],
    }
