"""The built-in web chat: an adapter whose routes are served on the main aiohttp server.

A web "space" is a named conversation (`main`, `ops`, ...). Users post messages and files
over a small JSON API, read history with an integer cursor and follow new messages over
server-sent events. Everything is behind the dashboard credentials: a bearer token (the
dashboard password, for scripts and `mercury chat`) or a session cookie from
`POST /api/login` (for the browser page at /chat). mercury.http.auth checks them:
password guesses are throttled per address, and a cookie request that changes something
must come from our own origin and be JSON (or carry X-Mercury-Request).

The adapter keeps a bounded in-memory log per space (spacelog) so it works standalone;
the pipeline can hand it a DB-backed `history` callable instead. Files live in the file
store (files).
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from mercury.adapters.base import AdapterState, InboundSink, InboundUnavailable, StateTracker
from mercury.adapters.web.files import (
    FileStore,
    UploadRefused,
    file_meta,
    file_response,
    read_upload,
    safe_name,
    too_large,
)
from mercury.adapters.web.spacelog import Event, SpaceLogs, now_iso, valid_space
from mercury.core.login_throttle import ThrottlePolicy
from mercury.core.messages import Attachment, ConversationRef, InboundMessage, Reply, SentMessage
from mercury.http.auth import SESSION_COOKIE, WebAuth, Write, json_error
from mercury.logging import get_logger

log = get_logger(__name__)

__all__ = ["SESSION_COOKIE", "WebChatAdapter", "safe_name", "valid_space"]

PLATFORM = "web"
CLIENT_ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
# Namespace for client_id -> message id, so a retried post maps to the same id.
_CLIENT_NS = uuid.UUID("6f1c2a7e-3b0d-4c55-9a41-0e8f5d2b7c19")
MAX_TEXT = 100_000
RETRY_AFTER_S = 5  # suggested to a sender whose message could not be stored (503)

HistoryFn = Callable[[str, int | None], Awaitable[list[dict[str, Any]]]]


class WebChatAdapter:
    """The web chat adapter (platform "web"); the App mounts its `routes()`."""

    platform = PLATFORM
    bot_handles: tuple[str, ...] = ()  # one person talks to the bot: nothing to mention

    def __init__(
        self,
        *,
        username: str,
        password: str | None,
        max_upload: int,
        upload_dir: Path,
        history: HistoryFn | None = None,
        session_ttl: float = 12 * 3600.0,
        max_log: int = 500,
        heartbeat: float = 15.0,
        bot_name: str = "Mercury",
        public_url: str | None = None,
        trusted_proxies: Iterable[str] = (),
        throttle: ThrottlePolicy | None = None,
        throttle_clock: Callable[[], float] = time.monotonic,
        auth: WebAuth | None = None,
    ) -> None:
        self.username = username
        self._password = password or None
        # Login, sessions, throttling and the cross-site checks (see mercury.http.auth):
        # the App's one WebAuth, shared with the dashboard; on its own, a private one.
        self.auth = auth or WebAuth(
            username=username,
            password=password,
            session_ttl=session_ttl,
            public_url=public_url,
            trusted_proxies=trusted_proxies,
            throttle=throttle,
            clock=throttle_clock,
        )
        self.sessions = self.auth.sessions
        self.max_upload = int(max_upload)
        self.upload_dir = Path(upload_dir)
        self.files = FileStore(self.upload_dir)
        self.history = history
        self.heartbeat = heartbeat
        self.bot_name = bot_name
        self._sink: InboundSink | None = None
        self.logs = SpaceLogs(max_log)
        self.tracker = StateTracker()

    @property
    def state(self) -> AdapterState:
        """Connected (serving) from start() to stop(): there is no remote end to lose."""
        return self.tracker.state

    # ---------------------------------------------------------------- Adapter protocol

    async def start(self, sink: InboundSink) -> None:
        self.upload_dir.mkdir(parents=True, exist_ok=True)
        self._sink = sink
        self.tracker.connected()
        if self._password is None:
            log.warning("web chat locked", reason="MERCURY_DASHBOARD_PASSWORD is not set")

    async def stop(self) -> None:
        self._sink = None
        self.tracker.disconnected()
        # Ending the streams lets the HTTP server shut down without waiting on them.
        self.logs.close_streams()

    async def send(self, reply: Reply) -> SentMessage:
        """Store the reply (copying its files into the file store) and push it live; a
        preview is marked `"preview": true`."""
        space = reply.conversation.chat_id
        files = []
        for out in reply.files:
            try:
                files.append(await asyncio.to_thread(self.files.copy_in, out.path, out.name))
            except OSError as exc:
                log.warning(
                    "web chat reply file missing", space=space, file=out.name, error=str(exc)
                )
        entry = self.logs.new_entry(
            space, uuid.uuid4().hex, "assistant", self.bot_name, reply.text, files
        )
        entry["reply_to"] = reply.reply_to
        if reply.preview:
            # A streamed answer being written, deleted once the reply is out: the page and
            # API clients (`mercury chat`) must not take it for the reply.
            entry["preview"] = True
        self.logs.append(space, entry)
        return SentMessage(platform_message_ids=(entry["id"],))

    async def send_status(self, conversation: ConversationRef, text: str) -> SentMessage:
        """Post a transient status ("still working (30s)"), shown apart from replies."""
        space = conversation.chat_id
        entry = self.logs.new_entry(space, uuid.uuid4().hex, "status", self.bot_name, text, [])
        self.logs.append(space, entry)
        return SentMessage(platform_message_ids=(entry["id"],))

    async def set_typing(self, conversation: ConversationRef) -> None:
        space = conversation.chat_id
        self.logs.push(space, Event("typing", {"space": space, "ts": now_iso()}))

    async def edit(self, conversation: ConversationRef, message_id: str, text: str) -> None:
        """Change a status's or a reply's text in place; it keeps its role, and the page
        and `mercury chat` get an "edit" event carrying the whole entry.

        The text is kept whole, as `send` keeps it, and the page shows it as typed: a
        half-written fence is no problem. Never rate limited."""
        self.logs.edit(conversation.chat_id, message_id, text)

    async def delete(self, conversation: ConversationRef, message_id: str) -> None:
        """Withdraw a message: a "delete" event live, a tombstone for pollers."""
        self.logs.delete(conversation.chat_id, message_id)

    async def download(self, attachment: Attachment, max_bytes: int) -> bytes:
        """Read an uploaded file back from the file store."""
        path = self.files.resolve(attachment.ref)
        if path is None:
            raise ValueError(f"{attachment.name}: not a web chat upload")
        size = path.stat().st_size
        if size > max_bytes:
            raise ValueError(f"{attachment.name}: {size} bytes is over the {max_bytes} limit")
        return await asyncio.to_thread(path.read_bytes)

    # ------------------------------------------------------------------ HTTP routing

    def routes(self) -> list[web.RouteDef]:
        """The chat page, the login routes and the chat API, for the main server."""
        return [
            web.get("/chat", self._page),
            web.get("/chat/chat.js", self._script),
            *self.auth.routes(),
            web.get("/api/chat/session", self._session_info),
            web.post("/api/chat/messages", self._post_message),
            web.get("/api/chat/messages", self._get_messages),
            web.post("/api/chat/files", self._post_files),
            web.get("/api/chat/files/{file_id}/{name}", self._get_file),
            web.get("/api/chat/stream", self._stream),
        ]

    def subscriber_count(self, space: str) -> int:
        return self.logs.subscriber_count(space)

    # ----------------------------------------------------------------------- auth

    async def _guard(self, request: web.Request, write: Write = None) -> str | web.Response:
        """The user, or the error response to return (see WebAuth.guard)."""
        return await self.auth.guard(request, write)

    async def _reader_space(self, request: web.Request) -> str | web.Response:
        """The `space` query parameter of a signed-in reader, or the error response."""
        user = await self._guard(request)
        if isinstance(user, web.Response):
            return user
        space = request.query.get("space", "")
        if not valid_space(space):
            return json_error(400, "space: missing or invalid space name")
        return space

    async def _session_info(self, request: web.Request) -> web.Response:
        user = await self._guard(request)
        if isinstance(user, web.Response):
            return user
        return web.json_response({"username": user})

    # ------------------------------------------------------------------ messages

    async def _post_message(self, request: web.Request) -> web.Response:
        user = await self._guard(request, "json")
        if isinstance(user, web.Response):
            return user
        body = await _json_body(request)
        if not isinstance(body, dict):
            return json_error(400, "expected a JSON object {space, text}")
        text = body.get("text")
        if not isinstance(text, str) or not text.strip():
            return json_error(400, "text: must be a non-empty string")
        return await self._accept(user, body.get("space"), text, body.get("client_id"), ())

    async def _post_files(self, request: web.Request) -> web.Response:
        user = await self._guard(request, "upload")
        if isinstance(user, web.Response):
            return user
        if request.content_length is not None and request.content_length > self.max_upload + 65536:
            return json_error(413, too_large(self.max_upload).message)
        try:
            reader = await request.multipart()
        except (AssertionError, ValueError, KeyError):
            return json_error(400, "expected multipart/form-data with space, text and file fields")
        try:
            upload = await read_upload(
                reader, self.files, max_upload=self.max_upload, max_field=MAX_TEXT * 4
            )  # UTF-8 is at most 4 bytes a character
        except UploadRefused as exc:
            return json_error(exc.status, exc.message)
        keep = False
        try:
            if not upload.files:
                return json_error(400, "file: at least one file is required")
            fields = upload.fields
            resp = await self._accept(
                user, fields.get("space"), fields.get("text", ""), fields.get("client_id"),
                tuple(upload.files),
            )  # fmt: skip
            keep = resp.status < 400
            return resp
        finally:
            if not keep:
                upload.discard()

    async def _accept(
        self,
        user: str,
        space: Any,
        text: str,
        client_id: Any,
        attachments: tuple[Attachment, ...],
    ) -> web.Response:
        """Log a user message, hand it to the pipeline and answer 202."""
        if not valid_space(space):
            return json_error(
                400,
                "space: expected 1-64 characters of letters, digits, '_', '.' or '-', "
                "starting with a letter or digit",
            )
        if len(text) > MAX_TEXT:
            return json_error(400, f"text: longer than {MAX_TEXT} characters")
        if client_id is None:
            message_id = uuid.uuid4().hex
        elif isinstance(client_id, str) and CLIENT_ID_RE.fullmatch(client_id):
            # Deterministic: a retried post gets the same id, and the pipeline dedups on it.
            message_id = uuid.uuid5(_CLIENT_NS, f"{user}\0{space}\0{client_id}").hex
        else:
            return json_error(400, "client_id: expected 1-128 of [A-Za-z0-9_.:-]")
        sink = self._sink
        if sink is None:
            return json_error(503, "web chat is not running")
        entry = self.logs.find_live(space, message_id)
        added = entry is None
        if entry is None:
            # Shown before the pipeline sees it, so that a command's answer comes after it.
            files = [file_meta(Path(a.ref or "")) for a in attachments]
            entry = self.logs.new_entry(space, message_id, "user", user, text, files)
            self.logs.append(space, entry)
        msg = InboundMessage(
            platform=PLATFORM,
            platform_message_id=message_id,
            conversation=ConversationRef(PLATFORM, space),
            # The bare id: the pipeline's key is then "web:<user>", the documented form.
            author_id=user,
            author_name=user,
            text=text,
            ts=datetime.now(UTC),
            mentions_bot=False,
            is_dm=True,  # a web space is a direct conversation with the bot
            attachments=attachments,
            # Only the operator gets in (the dashboard password): an admin of web spaces.
            from_operator=True,
        )
        self.tracker.event()
        try:
            await sink(msg)
        except InboundUnavailable as exc:
            self.tracker.error(f"receive failed: message not stored ({exc.reason})")
            # Not stored, so not queued: say so (the browser keeps the text to resend) and
            # take it off the page; a retry with the same client_id shows it again.
            if added:
                await self.delete(ConversationRef(PLATFORM, space), message_id)
            resp = json_error(
                503,
                f"the message was not stored ({exc.reason}); send it again in a moment",
                retry_after=RETRY_AFTER_S,
            )
            resp.headers["Retry-After"] = str(RETRY_AFTER_S)
            return resp
        except Exception as exc:
            self.tracker.failed("receive", exc)
            log.exception("web chat sink failed", space=space, message_id=message_id)
            return json_error(500, "the message could not be accepted; try again")
        return web.json_response(
            {"id": message_id, "space": space, "cursor": entry["cursor"]}, status=202
        )

    async def _get_messages(self, request: web.Request) -> web.Response:
        space = await self._reader_space(request)
        if isinstance(space, web.Response):
            return space
        after_raw = request.query.get("after")
        after: int | None = None
        if after_raw not in (None, ""):
            try:
                after = int(after_raw)
            except ValueError:
                return json_error(400, "after: expected an integer cursor")
        if self.history is not None:
            messages = await self.history(space, after)
        else:
            messages = self.logs.after(space, after)
        cursor = max((int(m.get("cursor", 0)) for m in messages), default=after)
        if cursor is None:
            cursor = self.logs.current_cursor(space)
        return web.json_response({"messages": messages, "cursor": cursor})

    # ------------------------------------------------------------------- files

    async def _get_file(self, request: web.Request) -> web.StreamResponse:
        user = await self._guard(request)
        if isinstance(user, web.Response):
            return user
        name = request.match_info["name"]
        path = self.files.lookup(request.match_info["file_id"], name)
        if path is None:
            return json_error(404, "no such file")
        return file_response(path, name)

    # -------------------------------------------------------------------- stream

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        space = await self._reader_space(request)
        if isinstance(space, web.Response):
            return space
        # EventSource resends the last id it saw on reconnect: replay from there.
        after_raw = request.query.get("after") or request.headers.get("Last-Event-ID")
        try:
            after = int(after_raw) if after_raw else None
        except ValueError:
            return json_error(400, "after: expected an integer cursor")
        if self._sink is None:
            return json_error(503, "web chat is not running")
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
            }
        )
        await resp.prepare(request)
        queue = self.logs.subscribe(space)  # before the replay, so nothing falls in between
        try:
            await resp.write(b"retry: 3000\n: connected\n\n")
            last = after
            if after is not None:
                for entry in self.logs.after(space, after):
                    kind = "delete" if entry.get("deleted") else "message"
                    await resp.write(Event(kind, entry, entry["cursor"]).encode())
                    last = entry["cursor"]
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), self.heartbeat)
                except TimeoutError:
                    await resp.write(b": ping\n\n")
                    continue
                if event is None:
                    break
                if event.cursor is not None and last is not None and event.cursor <= last:
                    continue  # already sent by the replay
                await resp.write(event.encode())
        except ConnectionError:
            pass  # the client went away
        finally:
            self.logs.unsubscribe(space, queue)
        return resp

    # ---------------------------------------------------------------------- page

    async def _page(self, _request: web.Request) -> web.Response:
        return web.Response(
            text=_static("chat.html"),
            content_type="text/html",
            headers={
                "Content-Security-Policy": (
                    "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self'"
                ),
                "X-Frame-Options": "DENY",
                "Cache-Control": "no-store",
            },
        )

    async def _script(self, _request: web.Request) -> web.Response:
        return web.Response(
            text=_static("chat.js"),
            content_type="application/javascript",
            headers={"Cache-Control": "no-store"},
        )


async def _json_body(request: web.Request) -> Any:
    try:
        return await request.json()
    except (ValueError, UnicodeDecodeError):
        return None


_STATIC = Path(__file__).with_name("static")


@functools.cache
def _static(name: str) -> str:
    """A page asset from static/ (package data), read once."""
    return (_STATIC / name).read_text(encoding="utf-8")
