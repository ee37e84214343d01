"""The built-in web chat: an adapter served on the main aiohttp server.

A web "space" is a named conversation (`main`, `ops`, ...). Users post messages and files
over a small JSON API, read history with an integer cursor and follow new messages over
server-sent events. Everything is behind the dashboard credentials: a bearer token (the
dashboard password, for scripts and `mercury chat`) or a session cookie from
`POST /api/login` (for the browser page at /chat). mercury.adapters.web_auth checks
them: password guesses are throttled per address, and a cookie request that changes
something must come from our own origin and be JSON (or carry X-Mercury-Request).

The adapter keeps a bounded in-memory log per space so it works standalone; the pipeline
can hand it a DB-backed `history` callable instead.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import re
import shutil
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from aiohttp import BodyPartReader, web

from mercury.adapters.base import Capabilities, InboundSink, InboundUnavailable
from mercury.adapters.web_auth import SESSION_COOKIE, SessionStore, WebAuth, Write
from mercury.adapters.web_auth import json_error as _json_error
from mercury.core.login_throttle import ThrottlePolicy
from mercury.core.messages import Attachment, ConversationRef, InboundMessage, Reply, SentMessage
from mercury.logging import get_logger

log = get_logger(__name__)

__all__ = ["SESSION_COOKIE", "SessionStore", "WebChatAdapter", "safe_name", "valid_space"]

PLATFORM = "web"
SPACE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
CLIENT_ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
FILE_ID_RE = re.compile(r"[0-9a-f]{32}")
# Namespace for client_id -> message id, so a retried post maps to the same id.
_CLIENT_NS = uuid.UUID("6f1c2a7e-3b0d-4c55-9a41-0e8f5d2b7c19")
# Images a browser may show inline; anything else (HTML, SVG, ...) is served as a
# download so an uploaded file can never run script on the dashboard's origin.
_INLINE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
                 ".gif": "image/gif", ".webp": "image/webp"}  # fmt: skip
MAX_TEXT = 100_000
RETRY_AFTER_S = 5  # suggested to a sender whose message could not be stored (503)
_QUEUE_LIMIT = 1000  # events buffered per SSE client before it is dropped as too slow

HistoryFn = Callable[[str, int | None], Awaitable[list[dict[str, Any]]]]


def valid_space(space: Any) -> bool:
    return isinstance(space, str) and SPACE_RE.fullmatch(space) is not None


def safe_name(name: str | None) -> str:
    """A file name that is safe as one path component and in a URL."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = re.sub(r"[^A-Za-z0-9._ ()+-]", "_", base).strip(" .")
    return cleaned[:128] or "file"


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


@dataclass
class _Event:
    kind: str  # message | edit | delete | typing
    data: dict[str, Any]
    cursor: int | None = None

    def encode(self) -> bytes:
        head = f"id: {self.cursor}\n" if self.cursor is not None else ""
        data = json.dumps(self.data, ensure_ascii=False)
        return f"{head}event: {self.kind}\ndata: {data}\n\n".encode()


@dataclass
class _SpaceLog:
    entries: deque[dict[str, Any]]
    subscribers: set[asyncio.Queue[_Event | None]] = field(default_factory=set)


class WebChatAdapter:
    """The web chat adapter (platform "web"); mount with `register(app)`."""

    platform = PLATFORM
    capabilities = Capabilities(
        max_message_length=MAX_TEXT, threads=False, file_upload=True, markup="markdown"
    )

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
    ) -> None:
        self.username = username
        self._password = password or None
        # Login, sessions, throttling and the cross-site checks (see web_auth).
        self.auth = WebAuth(
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
        self.history = history
        self.max_log = max_log
        self.heartbeat = heartbeat
        self.bot_name = bot_name
        self._sink: InboundSink | None = None
        self._spaces: dict[str, _SpaceLog] = {}
        # Cursors start at the wall clock in ms so that after a restart they keep growing
        # and a browser holding an old cursor still sees new messages.
        self._cursor = itertools.count(int(time.time() * 1000))

    # ---------------------------------------------------------------- Adapter protocol

    async def start(self, sink: InboundSink) -> None:
        self.upload_dir.mkdir(parents=True, exist_ok=True)
        self._sink = sink
        if self._password is None:
            log.warning("web chat locked", reason="MERCURY_DASHBOARD_PASSWORD is not set")

    async def stop(self) -> None:
        self._sink = None
        # Ending the streams lets the HTTP server shut down without waiting on them.
        for space in self._spaces.values():
            for queue in list(space.subscribers):
                queue.put_nowait(None)
            space.subscribers.clear()

    async def send(self, reply: Reply) -> SentMessage:
        """Store the reply (copying its files into the file store) and push it live."""
        space = reply.conversation.chat_id
        files = []
        for out in reply.files:
            try:
                files.append(await asyncio.to_thread(self._store_copy, out.path, out.name))
            except OSError as exc:
                log.warning(
                    "web chat reply file missing", space=space, file=out.name, error=str(exc)
                )
        entry = self._new_entry(
            space, uuid.uuid4().hex, "assistant", self.bot_name, reply.text, files
        )
        entry["reply_to"] = reply.reply_to
        self._append(space, entry)
        return SentMessage(platform_message_ids=(entry["id"],))

    async def send_status(self, conversation: ConversationRef, text: str) -> SentMessage:
        """Post a transient status ("still working (30s)"), shown apart from replies."""
        space = conversation.chat_id
        entry = self._new_entry(space, uuid.uuid4().hex, "status", self.bot_name, text, [])
        self._append(space, entry)
        return SentMessage(platform_message_ids=(entry["id"],))

    async def set_typing(self, conversation: ConversationRef) -> None:
        space = conversation.chat_id
        self._push(space, _Event("typing", {"space": space, "ts": _now_iso()}))

    async def edit(self, conversation: ConversationRef, message_id: str, text: str) -> None:
        space = conversation.chat_id
        log_ = self._space(space)
        entry = next((e for e in log_.entries if e["id"] == message_id), None)
        if entry is None:
            return
        # Only status messages are edited; a fresh cursor lets pollers pick the change up.
        log_.entries.remove(entry)
        entry.update(text=text, role="status", cursor=next(self._cursor))
        log_.entries.append(entry)
        self._push(space, _Event("edit", dict(entry), entry["cursor"]))

    async def delete(self, conversation: ConversationRef, message_id: str) -> None:
        space = conversation.chat_id
        log_ = self._space(space)
        # The live entry: a message withdrawn before (a failed post) may have a tombstone.
        entry = next(
            (e for e in log_.entries if e["id"] == message_id and not e.get("deleted")), None
        )
        if entry is None:
            return
        log_.entries.remove(entry)
        # A tombstone at a new cursor tells pollers (after=...) to drop the message.
        tomb = {**entry, "cursor": next(self._cursor), "text": "", "files": [], "deleted": True}
        log_.entries.append(tomb)
        self._push(space, _Event("delete", {"id": message_id, "space": space}, tomb["cursor"]))

    async def download(self, attachment: Attachment, max_bytes: int) -> bytes:
        """Read an uploaded file back from the file store."""
        path = self._resolve_stored(attachment.ref)
        if path is None:
            raise ValueError(f"{attachment.name}: not a web chat upload")
        size = path.stat().st_size
        if size > max_bytes:
            raise ValueError(f"{attachment.name}: {size} bytes is over the {max_bytes} limit")
        return await asyncio.to_thread(path.read_bytes)

    # ------------------------------------------------------------------ HTTP routing

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/chat", self._page),
            web.get("/chat/chat.js", self._script),
            web.post("/api/login", self.auth.login),
            web.post("/api/logout", self.auth.logout),
            web.get("/api/chat/session", self._session_info),
            web.post("/api/chat/messages", self._post_message),
            web.get("/api/chat/messages", self._get_messages),
            web.post("/api/chat/files", self._post_files),
            web.get("/api/chat/files/{file_id}/{name}", self._get_file),
            web.get("/api/chat/stream", self._stream),
        ]

    def register(self, app: web.Application) -> None:
        """Mount the routes on the main server's app (before it starts)."""
        app.add_routes(self.routes())

        async def _close_streams(_app: web.Application) -> None:
            await self.stop()

        app.on_shutdown.append(_close_streams)

    def subscriber_count(self, space: str) -> int:
        found = self._spaces.get(space)
        return len(found.subscribers) if found else 0

    # ----------------------------------------------------------------------- auth

    def _guard(self, request: web.Request, write: Write = None) -> str | web.Response:
        """The user, or the error response to return (see WebAuth.guard)."""
        return self.auth.guard(request, write)

    async def _session_info(self, request: web.Request) -> web.Response:
        user = self._guard(request)
        if isinstance(user, web.Response):
            return user
        return web.json_response({"username": user})

    # ------------------------------------------------------------------ messages

    async def _post_message(self, request: web.Request) -> web.Response:
        user = self._guard(request, "json")
        if isinstance(user, web.Response):
            return user
        body = await _json_body(request)
        if not isinstance(body, dict):
            return _json_error(400, "expected a JSON object {space, text}")
        text = body.get("text")
        if not isinstance(text, str) or not text.strip():
            return _json_error(400, "text: must be a non-empty string")
        return await self._accept(user, body.get("space"), text, body.get("client_id"), ())

    async def _post_files(self, request: web.Request) -> web.Response:
        user = self._guard(request, "upload")
        if isinstance(user, web.Response):
            return user
        if request.content_length is not None and request.content_length > self.max_upload + 65536:
            return self._too_large()
        try:
            reader = await request.multipart()
        except (AssertionError, ValueError, KeyError):
            return _json_error(400, "expected multipart/form-data with space, text and file fields")
        fields: dict[str, str] = {}
        saved: list[Attachment] = []
        total = 0
        dirs: list[Path] = []
        try:
            while (part := await reader.next()) is not None:
                if not isinstance(part, BodyPartReader):
                    return _json_error(400, "nested multipart is not supported")
                if part.filename is None:
                    value = b""
                    while chunk := await part.read_chunk(65536):
                        value += chunk
                        if len(value) > MAX_TEXT * 4:  # UTF-8 is at most 4 bytes a character
                            return _json_error(400, f"{part.name}: field too long")
                    fields[part.name or ""] = value.decode("utf-8", "replace")
                    continue
                file_id = uuid.uuid4().hex
                # Some clients (aiohttp among them) percent-encode the multipart filename.
                name = safe_name(unquote(part.filename))
                folder = self.upload_dir / file_id
                folder.mkdir(parents=True)
                dirs.append(folder)
                size = 0
                with (folder / name).open("wb") as fh:
                    # Stream to disk and stop at the cap: never buffer a huge upload.
                    while chunk := await part.read_chunk(65536):
                        size += len(chunk)
                        total += len(chunk)
                        if total > self.max_upload:
                            return self._too_large()
                        fh.write(chunk)
                ctype = part.headers.get("Content-Type") or "application/octet-stream"
                saved.append(Attachment(name, size, ctype, str(folder / name)))
            if not saved:
                return _json_error(400, "file: at least one file is required")
            resp = await self._accept(
                user, fields.get("space"), fields.get("text", ""), fields.get("client_id"),
                tuple(saved),
            )  # fmt: skip
            if resp.status < 400:
                dirs.clear()  # keep the files
            return resp
        finally:
            for folder in dirs:
                shutil.rmtree(folder, ignore_errors=True)

    def _too_large(self) -> web.Response:
        return _json_error(
            413, f"upload too large: the limit is {self.max_upload} bytes (adapters.web.max_upload)"
        )

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
            return _json_error(
                400,
                "space: expected 1-64 characters of letters, digits, '_', '.' or '-', "
                "starting with a letter or digit",
            )
        if len(text) > MAX_TEXT:
            return _json_error(400, f"text: longer than {MAX_TEXT} characters")
        if client_id is None:
            message_id = uuid.uuid4().hex
        elif isinstance(client_id, str) and CLIENT_ID_RE.fullmatch(client_id):
            # Deterministic: a retried post gets the same id, and the pipeline dedups on it.
            message_id = uuid.uuid5(_CLIENT_NS, f"{user}\0{space}\0{client_id}").hex
        else:
            return _json_error(400, "client_id: expected 1-128 of [A-Za-z0-9_.:-]")
        sink = self._sink
        if sink is None:
            return _json_error(503, "web chat is not running")
        log_ = self._space(space)
        entry = next(
            (e for e in log_.entries if e["id"] == message_id and not e.get("deleted")), None
        )
        added = entry is None
        if entry is None:
            # Shown before the pipeline sees it, so that a command's answer comes after it.
            files = [self._file_meta(Path(a.ref or "")) for a in attachments]
            entry = self._new_entry(space, message_id, "user", user, text, files)
            self._append(space, entry)
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
        try:
            await sink(msg)
        except InboundUnavailable as exc:
            # Not stored, so not queued: say so (the browser keeps the text to resend) and
            # take it off the page; a retry with the same client_id shows it again.
            if added:
                await self.delete(ConversationRef(PLATFORM, space), message_id)
            resp = _json_error(
                503,
                f"the message was not stored ({exc.reason}); send it again in a moment",
                retry_after=RETRY_AFTER_S,
            )
            resp.headers["Retry-After"] = str(RETRY_AFTER_S)
            return resp
        except Exception:
            log.exception("web chat sink failed", space=space, message_id=message_id)
            return _json_error(500, "the message could not be accepted; try again")
        return web.json_response(
            {"id": message_id, "space": space, "cursor": entry["cursor"]}, status=202
        )

    async def _get_messages(self, request: web.Request) -> web.Response:
        user = self._guard(request)
        if isinstance(user, web.Response):
            return user
        space = request.query.get("space", "")
        if not valid_space(space):
            return _json_error(400, "space: missing or invalid space name")
        after_raw = request.query.get("after")
        after: int | None = None
        if after_raw not in (None, ""):
            try:
                after = int(after_raw)
            except ValueError:
                return _json_error(400, "after: expected an integer cursor")
        if self.history is not None:
            messages = await self.history(space, after)
        else:
            messages = self._log_after(space, after)
        cursor = max((int(m.get("cursor", 0)) for m in messages), default=after)
        if cursor is None:
            cursor = self._current_cursor(space)
        return web.json_response({"messages": messages, "cursor": cursor})

    def _log_after(self, space: str, after: int | None) -> list[dict[str, Any]]:
        found = self._spaces.get(space)
        if found is None:
            return []
        if after is None:  # a fresh view: tombstones mean nothing to it
            return [dict(e) for e in found.entries if not e.get("deleted")]
        return [dict(e) for e in found.entries if e["cursor"] > after]

    def _current_cursor(self, space: str) -> int:
        found = self._spaces.get(space)
        return max((e["cursor"] for e in found.entries), default=0) if found else 0

    # ------------------------------------------------------------------- files

    async def _get_file(self, request: web.Request) -> web.StreamResponse:
        user = self._guard(request)
        if isinstance(user, web.Response):
            return user
        file_id, name = request.match_info["file_id"], request.match_info["name"]
        path = None
        if FILE_ID_RE.fullmatch(file_id) and safe_name(name) == name:
            path = self._resolve_stored(str(self.upload_dir / file_id / name))
        if path is None:
            return _json_error(404, "no such file")
        inline = _INLINE_TYPES.get(path.suffix.lower())
        disposition = "inline" if inline else "attachment"
        return web.FileResponse(
            path,
            headers={
                "Content-Type": inline or "application/octet-stream",
                "Content-Disposition": f"{disposition}; filename*=UTF-8''{quote(name)}",
                "X-Content-Type-Options": "nosniff",
                "Content-Security-Policy": "sandbox; default-src 'none'",
            },
        )

    def _resolve_stored(self, ref: str | None) -> Path | None:
        """The stored file behind `ref`, only if it is inside the file store."""
        if not ref:
            return None
        root = self.upload_dir.resolve()
        path = Path(ref).resolve()
        if path.parent.parent != root or not path.is_file():
            return None
        return path

    def _store_copy(self, source: Path, name: str) -> dict[str, str]:
        folder = self.upload_dir / uuid.uuid4().hex
        folder.mkdir(parents=True)
        target = folder / safe_name(name)
        shutil.copyfile(source, target)
        return self._file_meta(target)

    def _file_meta(self, path: Path) -> dict[str, str]:
        return {"name": path.name, "url": f"/api/chat/files/{path.parent.name}/{quote(path.name)}"}

    # -------------------------------------------------------------------- stream

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        user = self._guard(request)
        if isinstance(user, web.Response):
            return user
        space = request.query.get("space", "")
        if not valid_space(space):
            return _json_error(400, "space: missing or invalid space name")
        # EventSource resends the last id it saw on reconnect: replay from there.
        after_raw = request.query.get("after") or request.headers.get("Last-Event-ID")
        try:
            after = int(after_raw) if after_raw else None
        except ValueError:
            return _json_error(400, "after: expected an integer cursor")
        if self._sink is None:
            return _json_error(503, "web chat is not running")
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
            }
        )
        await resp.prepare(request)
        queue: asyncio.Queue[_Event | None] = asyncio.Queue()
        log_ = self._space(space)
        log_.subscribers.add(queue)  # before the replay, so nothing falls in between
        try:
            await resp.write(b"retry: 3000\n: connected\n\n")
            last = after
            if after is not None:
                for entry in self._log_after(space, after):
                    kind = "delete" if entry.get("deleted") else "message"
                    await resp.write(_Event(kind, entry, entry["cursor"]).encode())
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
            log_.subscribers.discard(queue)
        return resp

    # ------------------------------------------------------------------- helpers

    def _space(self, space: str) -> _SpaceLog:
        found = self._spaces.get(space)
        if found is None:
            found = self._spaces[space] = _SpaceLog(deque(maxlen=self.max_log))
        return found

    def _new_entry(
        self, space: str, msg_id: str, role: str, author: str, text: str, files: list[Any]
    ) -> dict[str, Any]:
        return {
            "cursor": next(self._cursor),
            "id": msg_id,
            "space": space,
            "role": role,
            "author": author,
            "text": text,
            "files": files,
            "ts": _now_iso(),
        }

    def _append(self, space: str, entry: dict[str, Any]) -> None:
        self._space(space).entries.append(entry)
        self._push(space, _Event("message", dict(entry), entry["cursor"]))

    def _push(self, space: str, event: _Event) -> None:
        found = self._spaces.get(space)
        if found is None:
            return
        for queue in list(found.subscribers):
            if queue.qsize() >= _QUEUE_LIMIT:
                # A client that does not read is cut off rather than growing memory.
                found.subscribers.discard(queue)
                queue.put_nowait(None)
            else:
                queue.put_nowait(event)

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


_STATIC = Path(__file__).with_name("web_static")


@functools.cache
def _static(name: str) -> str:
    """A page asset from web_static/ (package data), read once."""
    return (_STATIC / name).read_text(encoding="utf-8")
