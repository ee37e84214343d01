"""A fake Telegram Bot API on 127.0.0.1 for python-telegram-bot.

    async with FakeTelegram(token) as fake:
        Application.builder().token(token).base_url(fake.base_url).base_file_url(fake.file_url)
        fake.push_update(fake.message_update(chat_id=42, text="hi"))
        sent = await fake.next_outbound()        # sendMessage / sendPhoto / sendDocument

Methods under `/bot<TOKEN>/<method>`: getMe, getUpdates (drops updates below `offset`,
long-polls up to `timeout`, released on close), sendMessage, editMessageText,
deleteMessage, sendChatAction, sendDocument and sendPhoto (multipart), getFile with the
download under `/file/bot<TOKEN>/<path>`, setWebhook, deleteWebhook. A wrong token gets
401. Parameters arrive form-encoded with non-string values JSON-encoded; `Call.params`
holds them decoded. Every call is recorded in `fake.calls`; the edits and deletions the
fake applied also in `fake.edits` and `fake.deletes`, with their monotonic time.

As Telegram does, text sent or edited with parse_mode HTML must parse (known tags,
balanced) or the call is refused with 400 "can't parse entities", and an edit to the text
the message already has is refused with 400 "message is not modified".

`fake.fail_get_updates(n, status=502)` makes the next n getUpdates calls fail.
`fake.fail_next(method, status, times, retry_after=1)` answers the next `times` calls of
`method` with `status`; 429 in flood control's shape ("Too Many Requests: retry after N",
`parameters.retry_after`), which python-telegram-bot raises as RetryAfter.
`fake.on_call` (async, optional) sees every call first; a response it returns is sent
instead of the method's (fault injection: refuse a send, kill the client mid-call).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from http import HTTPStatus
from typing import Any, Self

from aiohttp import web
from multidict import MultiDictProxy

from tests.fakes.changes import Deletion, Edit

BOT_ID = 7000001
BOT_USERNAME = "mercury_test_bot"
# Values PTB JSON-encodes (everything that is not a plain string).
_JSON_PARAMS = {
    "chat_id",
    "message_id",
    "message_thread_id",
    "offset",
    "limit",
    "timeout",
    "allowed_updates",
    "reply_parameters",
    "reply_markup",
    "entities",
    "link_preview_options",
    "drop_pending_updates",
    "disable_notification",
    "max_connections",
}
# The tags Telegram's HTML parse mode knows; anything else is refused.
_HTML_TAGS = {
    "b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "span", "tg-spoiler", "a",
    "tg-emoji", "code", "pre", "blockquote",
}  # fmt: skip


@dataclass
class Call:
    """One Bot API request as the fake received it."""

    method: str
    params: dict[str, Any]
    files: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # field -> (name, bytes)
    status: int = 200
    at: float = field(default_factory=time.monotonic)


@dataclass
class Failure:
    status: int
    retry_after: int = 1

    def response(self) -> web.Response:
        if self.status != 429:
            return _error(self.status, HTTPStatus(self.status).phrase)
        return web.json_response(
            {
                "ok": False,
                "error_code": 429,
                "description": f"Too Many Requests: retry after {self.retry_after}",
                "parameters": {"retry_after": self.retry_after},
            },
            status=429,
        )


class FakeTelegram:
    """The fake server; see the module docstring."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.calls: list[Call] = []
        self.outbound: asyncio.Queue[Call] = asyncio.Queue()
        self.updates: list[dict[str, Any]] = []
        self.files: dict[str, tuple[str, bytes]] = {}  # file_id -> (file_path, data)
        self.webhook: dict[str, Any] | None = None
        self.edits: list[Edit] = []
        self.deletes: list[Deletion] = []
        self._texts: dict[tuple[str, int], str] = {}  # (chat, message) -> text as sent
        self._failures: dict[str, list[Failure]] = {}
        self._fail_updates = 0
        self._fail_status = 502
        self._new_update = asyncio.Condition()
        self._closing = False
        self._ids = itertools.count(1000)
        self._update_ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.on_call: Callable[[Call], Awaitable[web.Response | None]] | None = None

    # ---------------------------------------------------------------- lifecycle

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root}/bot"

    @property
    def file_url(self) -> str:
        return f"{self.root}/file/bot"

    async def start(self) -> None:
        app = web.Application(client_max_size=100 * 1024**2)
        app.router.add_route("*", "/bot{token}/{method}", self._api)
        app.router.add_get("/file/bot{token}/{path:.+}", self._download)
        # No access log: request paths carry the token, and tests assert it is never logged.
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def close(self) -> None:
        # Release waiting long polls first, or the server's cleanup waits for them.
        self._closing = True
        async with self._new_update:
            self._new_update.notify_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---------------------------------------------------------------- scripting

    def push_update(self, update: dict[str, Any]) -> dict[str, Any]:
        """Queue an update for getUpdates (an `update_id` is added when missing)."""
        update.setdefault("update_id", next(self._update_ids))
        self.updates.append(update)
        asyncio.get_running_loop().create_task(self._notify())
        return update

    async def _notify(self) -> None:
        async with self._new_update:
            self._new_update.notify_all()

    def fail_get_updates(self, times: int, status: int = 502) -> None:
        self._fail_updates = times
        self._fail_status = status

    def fail_next(
        self, method: str, status: int = 500, times: int = 1, retry_after: int = 1
    ) -> None:
        """Answer the next `times` calls of `method` with `status` (429: flood control,
        `retry_after` seconds; the Bot API gives whole seconds)."""
        self._failures.setdefault(method, []).extend(
            Failure(status, retry_after) for _ in range(times)
        )

    def add_file(self, file_id: str, data: bytes, file_path: str) -> None:
        self.files[file_id] = (file_path, data)

    async def next_outbound(self, timeout: float = 10.0) -> Call:
        return await asyncio.wait_for(self.outbound.get(), timeout)

    def calls_to(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    def next_update_id(self) -> int:
        return next(self._update_ids)

    def message_update(
        self,
        *,
        chat_id: int,
        text: str | None = None,
        chat_type: str | None = None,
        user_id: int = 501,
        first_name: str = "Ada",
        is_bot: bool = False,
        entities: list[dict[str, Any]] | None = None,
        reply_to: dict[str, Any] | None = None,
        thread_id: int | None = None,
        photo: list[dict[str, Any]] | None = None,
        document: dict[str, Any] | None = None,
        caption: str | None = None,
    ) -> dict[str, Any]:
        """A `message` update in the Bot API's shape."""
        chat_type = chat_type or ("private" if chat_id > 0 else "supergroup")
        chat: dict[str, Any] = {"id": chat_id, "type": chat_type}
        if chat_type == "private":
            chat["first_name"] = first_name
        else:
            chat["title"] = "Test group"
            if thread_id is not None:
                chat["is_forum"] = True
        message: dict[str, Any] = {
            "message_id": next(self._ids),
            "date": int(time.time()),
            "chat": chat,
            "from": {"id": user_id, "is_bot": is_bot, "first_name": first_name},
        }
        if text is not None:
            message["text"] = text
        if entities is not None:
            message["entities"] = entities
        if reply_to is not None:
            message["reply_to_message"] = reply_to
        if thread_id is not None:
            message["message_thread_id"] = thread_id
            message["is_topic_message"] = True
        if photo is not None:
            message["photo"] = photo
        if document is not None:
            message["document"] = document
        if caption is not None:
            message["caption"] = caption
        return {"update_id": next(self._update_ids), "message": message}

    # ---------------------------------------------------------------- HTTP

    async def _api(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return _error(401, "Unauthorized")
        method = request.match_info["method"]
        params, files = await _read_params(request)
        call = Call(method, params, files)
        self.calls.append(call)
        if self.on_call is not None:
            early = await self.on_call(call)
            if early is not None:
                call.status = early.status
                return early
        pending = self._failures.get(method)
        if pending:
            refused = pending.pop(0).response()
            call.status = refused.status
            return refused
        handler = getattr(self, f"_m_{method}", None)
        if handler is None:
            return _error(404, "Not Found: method not found")
        result = await handler(call)
        if isinstance(result, web.Response):
            call.status = result.status
            return result
        if method in ("sendMessage", "sendPhoto", "sendDocument"):
            self.outbound.put_nowait(call)
        return web.json_response({"ok": True, "result": result})

    async def _download(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["token"] != self.token:
            return _error(401, "Unauthorized")
        path = request.match_info["path"]
        for file_path, data in self.files.values():
            if file_path == path:
                return web.Response(body=data, content_type="application/octet-stream")
        return _error(404, "Not Found")

    # ---------------------------------------------------------------- methods

    def _bot_user(self) -> dict[str, Any]:
        return {
            "id": BOT_ID,
            "is_bot": True,
            "first_name": "Mercury",
            "username": BOT_USERNAME,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }

    def _message(self, call: Call, **extra: Any) -> dict[str, Any]:
        chat_id = call.params["chat_id"]
        chat_type = "private" if isinstance(chat_id, int) and chat_id > 0 else "supergroup"
        message: dict[str, Any] = {
            "message_id": next(self._ids),
            "date": int(time.time()),
            "chat": {"id": chat_id, "type": chat_type},
            "from": self._bot_user(),
            **extra,
        }
        if call.params.get("message_thread_id") is not None:
            message["message_thread_id"] = call.params["message_thread_id"]
        return message

    async def _m_getMe(self, call: Call) -> Any:
        return self._bot_user()

    async def _m_getUpdates(self, call: Call) -> Any:
        if self._fail_updates > 0:
            self._fail_updates -= 1
            return _error(self._fail_status, "Bad Gateway")
        offset = int(call.params.get("offset") or 0)
        if offset:
            # Confirmed updates are gone for good, as on the real server.
            self.updates = [u for u in self.updates if u["update_id"] >= offset]
        timeout = float(call.params.get("timeout") or 0)
        deadline = asyncio.get_running_loop().time() + timeout
        async with self._new_update:
            while not self.updates and not self._closing:
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._new_update.wait(), left)
        limit = int(call.params.get("limit") or 100)
        return self.updates[:limit]

    async def _m_sendMessage(self, call: Call) -> Any:
        refused = _refuse_html(call)
        if refused is not None:
            return refused
        text = call.params.get("text", "")
        message = self._message(call, text=text)
        self._texts[(str(call.params["chat_id"]), message["message_id"])] = text
        return message

    async def _m_editMessageText(self, call: Call) -> Any:
        refused = _refuse_html(call)
        if refused is not None:
            return refused
        chat_id, message_id = str(call.params["chat_id"]), int(call.params["message_id"])
        text = call.params.get("text", "")
        if self._texts.get((chat_id, message_id)) == text:
            return _error(
                400,
                "Bad Request: message is not modified: specified new message content and "
                "reply markup are exactly the same as a current content and reply markup "
                "of the message",
            )
        self._texts[(chat_id, message_id)] = text
        self.edits.append(Edit(call.method, chat_id, str(message_id), text))
        return self._message(call, text=text, message_id=message_id, edit_date=int(time.time()))

    async def _m_deleteMessage(self, call: Call) -> Any:
        chat_id, message_id = str(call.params["chat_id"]), int(call.params["message_id"])
        self._texts.pop((chat_id, message_id), None)
        self.deletes.append(Deletion(call.method, chat_id, str(message_id)))
        return True

    async def _m_sendChatAction(self, call: Call) -> Any:
        return True

    async def _m_sendPhoto(self, call: Call) -> Any:
        _, data = call.files.get("photo", ("photo.jpg", b""))
        size = len(data)
        return self._message(
            call,
            photo=[{"file_id": f"ph-{size}", "file_unique_id": f"u{size}", "width": 1,
                    "height": 1, "file_size": size}],
        )  # fmt: skip

    async def _m_sendDocument(self, call: Call) -> Any:
        name, data = call.files.get("document", ("file", b""))
        return self._message(
            call,
            document={"file_id": f"doc-{name}", "file_unique_id": f"u-{name}",
                      "file_name": name, "file_size": len(data)},
        )  # fmt: skip

    async def _m_getFile(self, call: Call) -> Any:
        file_id = call.params.get("file_id")
        if file_id not in self.files:
            return _error(400, "Bad Request: invalid file_id")
        path, data = self.files[file_id]
        return {
            "file_id": file_id,
            "file_unique_id": f"u-{file_id}",
            "file_size": len(data),
            "file_path": path,
        }

    async def _m_setWebhook(self, call: Call) -> Any:
        self.webhook = dict(call.params)
        return True

    async def _m_deleteWebhook(self, call: Call) -> Any:
        self.webhook = None
        return True


def _error(status: int, description: str) -> web.Response:
    return web.json_response(
        {"ok": False, "error_code": status, "description": description}, status=status
    )


class _EntityCheck(HTMLParser):
    """Telegram's verdict on parse_mode=HTML text: known tags, properly nested."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.open: list[str] = []
        self.problem: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _HTML_TAGS:
            self.problem = self.problem or f'Unsupported start tag "{tag}"'
        self.open.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.problem = self.problem or f'Unsupported start tag "{tag}"'

    def handle_endtag(self, tag: str) -> None:
        if self.open and self.open[-1] == tag:
            self.open.pop()
            return
        expected = f'"</{self.open[-1]}>"' if self.open else "none"
        self.problem = self.problem or f'Unmatched end tag "{tag}", expected {expected}'


def _refuse_html(call: Call) -> web.Response | None:
    """The 400 Telegram answers when parse_mode=HTML text does not parse; else None."""
    if str(call.params.get("parse_mode", "")).upper() != "HTML":
        return None
    check = _EntityCheck()
    check.feed(str(call.params.get("text", "")))
    check.close()
    problem = check.problem
    if problem is None and check.open:
        problem = f'Can\'t find end tag corresponding to start tag "{check.open[-1]}"'
    if problem is None:
        return None
    return _error(400, f"Bad Request: can't parse entities: {problem}")


def _decode(key: str, value: str) -> Any:
    if key in _JSON_PARAMS:
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value  # e.g. chat_id "@channelname"
    return value


async def _read_params(
    request: web.Request,
) -> tuple[dict[str, Any], dict[str, tuple[str, bytes]]]:
    params: dict[str, Any] = {k: _decode(k, v) for k, v in request.query.items()}
    files: dict[str, tuple[str, bytes]] = {}
    if request.content_type == "application/json":
        body = await request.json()
        params.update(body if isinstance(body, dict) else {})
        return params, files
    if request.body_exists:
        form: MultiDictProxy[Any] = await request.post()
        for key, value in form.items():
            if isinstance(value, web.FileField):
                files[key] = (value.filename, value.file.read())
            else:
                params[key] = _decode(key, str(value))
    return params, files
