"""Telegram adapter on python-telegram-bot (long polling by default, or a webhook).

Polling: PTB's Updater long-polls getUpdates and retries network errors and 5xx with its
own backoff; the offset confirms each batch, so nothing is delivered twice. Webhook:
`POST /telegram/webhook` on the main aiohttp server, authenticated by the secret-token
header Telegram echoes back; setWebhook is called on start and deleteWebhook on stop.

Either way updates land on the Application's update queue and one TypeHandler turns
messages and channel posts into InboundMessage. Edited messages are ignored on purpose:
an edit must not start a second run. Updates that cannot be parsed are logged and skipped.

The bot token is part of every Bot API URL, so while the adapter runs a log filter strips
it from the records of the telegram, httpx and httpcore loggers (see `ptb`).

Over 500 lines on purpose: one platform's translation in both delivery modes, inbound
and outbound, reads best in one place; the PTB hardening lives in `ptb`, formatting in
`format`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import re
import warnings
from collections.abc import Awaitable, Callable
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
from aiohttp import web
from telegram import Message, MessageEntity, ReplyParameters, Update
from telegram.constants import ChatAction, ChatType, ParseMode
from telegram.error import BadRequest, InvalidToken, RetryAfter, TelegramError
from telegram.ext import Application, ContextTypes, ExtBot, TypeHandler
from telegram.request import HTTPXRequest
from telegram.warnings import PTBDeprecationWarning

from mercury.adapters.base import (
    AdapterState,
    InboundSink,
    StateTracker,
    raises_rate_limited,
    records_failure,
    require_secrets,
)
from mercury.adapters.dedup import SeenIds
from mercury.adapters.telegram import required_secrets
from mercury.adapters.telegram.format import (
    TELEGRAM_LIMIT,
    markdown_to_html,
    split_for_telegram,
    split_markdown,
)
from mercury.adapters.telegram.ptb import SafeBot, TokenFilter, parse_update
from mercury.config import Secrets, TelegramConfig
from mercury.core.messages import Attachment, ConversationRef, InboundMessage, Reply, SentMessage
from mercury.logging import get_logger

log = get_logger("mercury.adapters.telegram")  # one logger per platform

PLATFORM = "telegram"
WEBHOOK_PATH = "/telegram/webhook"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
ALLOWED_UPDATES = ["message", "channel_post"]
# Sent as photos (shown inline); everything else goes as a document.
_PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
# Bot API upload limits: 10 MB for photos, 50 MB for other files.
_MAX_PHOTO = 10 * 1024**2
_MAX_DOCUMENT = 50 * 1024**2
_SEEN_UPDATES = 2048  # update ids remembered to drop a redelivered webhook update
_SECRET_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{1,256}")


def _message_ref(chat_id: int | str, message_id: int) -> str:
    return f"{chat_id}:{message_id}"


def _parse_message_ref(ref: str) -> int:
    """The Telegram message id of a "chat_id:message_id" reference (or a bare id)."""
    return int(ref.rsplit(":", 1)[-1])


T = TypeVar("T")

# The longest flood-control wait taken inside one reply (see `_after_flood_wait`).
FLOOD_WAIT_MAX_S = 30.0


def _flood_wait(exc: Exception) -> float | None:
    """Seconds to wait for Telegram's flood control (429), None for any other error.

    PTB raises RetryAfter at once (no AIORateLimiter here). Its `retry_after` is an int,
    or a timedelta under PTB_TIMEDELTA=true (the default to come): both are taken. Reading
    the int warns of that change; PTB's own constructor has warned already, once is enough.
    """
    if not isinstance(exc, RetryAfter):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PTBDeprecationWarning)
        value = exc.retry_after
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def _refused_html(exc: BadRequest) -> bool:
    return "parse entities" in str(exc).lower()


def _not_modified(exc: BadRequest) -> bool:
    return "not modified" in str(exc).lower()


class TelegramAdapter:
    """The Telegram adapter (platform "telegram")."""

    platform = PLATFORM

    def __init__(
        self,
        config: TelegramConfig,
        secrets: Secrets,
        *,
        public_url: str | None = None,
        poll_timeout: float = 30.0,
    ) -> None:
        require_secrets("telegram", required_secrets(config), secrets, f" (mode {config.mode})")
        assert secrets.telegram_bot_token is not None
        self.config = config
        self._token = secrets.telegram_bot_token.get_secret_value()
        self._webhook_secret = (
            secrets.telegram_webhook_secret.get_secret_value()
            if secrets.telegram_webhook_secret
            else None
        )
        self.public_url = public_url
        self.poll_timeout = poll_timeout
        if config.mode == "webhook":
            # An unauthenticated webhook would let anyone post fake updates: refuse early.
            if not self._webhook_secret or not _SECRET_TOKEN_RE.fullmatch(self._webhook_secret):
                raise ValueError(
                    "telegram webhook mode needs MERCURY_TELEGRAM_WEBHOOK_SECRET "
                    "(1-256 characters of A-Z, a-z, 0-9, _ and -)"
                )
            if not public_url:
                raise ValueError("telegram webhook mode needs server.public_url")
        self._application: Application[Any, Any, Any, Any, Any, Any] | None = None
        self._sink: InboundSink | None = None
        self._filter = TokenFilter(self._token)
        self._http: httpx.AsyncClient | None = None
        self._seen: SeenIds[int] = SeenIds(_SEEN_UPDATES)
        self.bot_id: int | None = None
        self.bot_username: str | None = None
        self.tracker = StateTracker()

    @property
    def state(self) -> AdapterState:
        """Connected from start(); a failed poll marks it down until an update arrives."""
        return self.tracker.state

    @property
    def bot_handles(self) -> tuple[str, ...]:
        """How users mention the bot ("@name"), for the trigger rules."""
        return (f"@{self.bot_username}",) if self.bot_username else ()

    def routes(self) -> list[web.RouteDef]:
        """`POST /telegram/webhook` in webhook mode; polling needs no route."""
        if self.config.mode != "webhook":
            return []
        return [web.post(WEBHOOK_PATH, self._webhook)]

    @property
    def webhook_url(self) -> str | None:
        if not self.public_url:
            return None
        return self.public_url.rstrip("/") + WEBHOOK_PATH

    # ---------------------------------------------------------------- lifecycle

    async def start(self, sink: InboundSink) -> None:
        """Connect (getMe), then poll or register the webhook."""
        self._filter.install()
        bot = SafeBot(
            self._token,
            base_url=self.config.api_base_url,
            base_file_url=self.config.file_base_url,
            request=HTTPXRequest(connection_pool_size=16),
            # The long poll needs its read timeout to outlast the poll itself.
            get_updates_request=HTTPXRequest(read_timeout=self.poll_timeout + 10),
        )
        builder = Application.builder().bot(bot)
        if self.config.mode == "webhook":
            builder = builder.updater(None)  # updates arrive on our route, not by polling
        application = builder.build()
        application.add_handler(TypeHandler(Update, self._on_update))
        application.add_error_handler(self._on_error)
        self._sink = sink
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=10.0))
        try:
            await application.initialize()  # getMe: fails here on a bad token
            self.bot_id = application.bot.id
            self.bot_username = application.bot.username
            if self.config.mode == "webhook":
                await application.bot.set_webhook(
                    url=self.webhook_url or "",
                    secret_token=self._webhook_secret,
                    allowed_updates=ALLOWED_UPDATES,
                )
            else:
                assert application.updater is not None
                await application.updater.start_polling(
                    poll_interval=0.0,
                    timeout=int(self.poll_timeout),
                    allowed_updates=ALLOWED_UPDATES,
                    error_callback=self._on_poll_error,
                )
            await application.start()
        except InvalidToken:
            await self._cleanup_failed_start(application)
            # PTB's message quotes the token itself; ours names where to fix it.
            raise RuntimeError(
                "telegram: the Bot API rejected the bot token (check MERCURY_TELEGRAM_BOT_TOKEN)"
            ) from None
        except BaseException:
            await self._cleanup_failed_start(application)
            raise
        self._application = application
        self.tracker.connected()
        log.info("telegram adapter started", mode=self.config.mode, bot=f"@{self.bot_username}")

    async def _cleanup_failed_start(
        self, application: Application[Any, Any, Any, Any, Any, Any]
    ) -> None:
        # Best effort: the start error is what the caller needs to see.
        with contextlib.suppress(Exception):
            if application.updater is not None and application.updater.running:
                await application.updater.stop()
            if application.running:
                await application.stop()
            await application.shutdown()
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        self._sink = None
        self._filter.remove()

    async def stop(self) -> None:
        """Stop fetching, let queued updates finish, then disconnect."""
        application = self._application
        if application is None:
            return
        self._application = None
        self.tracker.disconnected()
        try:
            if application.updater is not None and application.updater.running:
                await application.updater.stop()
            elif self.config.mode == "webhook":
                try:
                    await application.bot.delete_webhook()
                except TelegramError as exc:
                    log.warning("telegram deleteWebhook failed", error=str(exc))
            if application.running:
                await application.stop()  # processes what is already queued
            await application.shutdown()
        finally:
            self._sink = None
            if self._http is not None:
                await self._http.aclose()
                self._http = None
            self._filter.remove()

    # ---------------------------------------------------------------- inbound

    async def _webhook(self, request: web.Request) -> web.Response:
        """Telegram's webhook delivery: check the secret header, queue the update."""
        application = self._application
        if application is None:
            return web.Response(status=503, text="not running")
        given = request.headers.get(SECRET_HEADER, "")
        expected = self._webhook_secret or ""
        if not given or not hmac.compare_digest(given.encode(), expected.encode()):
            return web.Response(status=401, text="bad secret token")
        try:
            data = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return web.Response(status=400, text="body is not JSON")
        update = parse_update(data, application.bot)
        if update is not None:  # else 200 too: Telegram must not redeliver it forever
            await application.update_queue.put(update)
        return web.Response(text="ok")

    async def _on_update(self, update: Update, _context: ContextTypes.DEFAULT_TYPE) -> None:
        if not self._seen.add(update.update_id):
            log.debug("telegram update redelivered, ignored", update_id=update.update_id)
            return
        message = update.message or update.channel_post
        if message is None:
            # Edits, callbacks and the placeholders of malformed updates end here.
            return
        try:
            inbound = self.to_inbound(message)
        except Exception as exc:
            log.warning(
                "telegram update not understood, skipped",
                update_id=update.update_id,
                error=f"{type(exc).__name__}: {exc}",
            )
            return
        sink = self._sink
        if sink is None:
            return
        self.tracker.connected()  # an update got through, so polling (or the webhook) works
        self.tracker.event()
        try:
            await sink(inbound)
        except Exception as exc:
            self.tracker.failed("receive", exc)
            log.exception("telegram inbound message failed", message=inbound.platform_message_id)

    async def _on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        update_id = update.update_id if isinstance(update, Update) else None
        log.error("telegram update handler failed", update_id=update_id, error=repr(context.error))

    def _on_poll_error(self, exc: TelegramError) -> None:
        # PTB retries with backoff (1 s, growing to 30 s); a line per failure is enough.
        self.tracker.disconnected()
        self.tracker.failed("polling", exc)
        log.warning("telegram polling failed, retrying", error=f"{type(exc).__name__}: {exc}")

    def to_inbound(self, message: Message) -> InboundMessage:
        """Normalise one Telegram message."""
        chat = message.chat
        thread_id = (
            str(message.message_thread_id)
            if message.is_topic_message and message.message_thread_id is not None
            else None
        )
        user = message.from_user
        if user is not None:
            author_id, author_name, from_bot = str(user.id), user.full_name, user.is_bot
        elif message.sender_chat is not None:  # channel posts, anonymous group admins
            sender = message.sender_chat
            author_id = str(sender.id)
            author_name = sender.title or sender.username or str(sender.id)
            from_bot = False
        else:
            raise ValueError("message has neither a sender nor a sender chat")
        text = message.text or message.caption or ""
        ts = message.date if message.date.tzinfo else message.date.replace(tzinfo=UTC)
        return InboundMessage(
            platform=PLATFORM,
            platform_message_id=_message_ref(chat.id, message.message_id),
            conversation=ConversationRef(PLATFORM, str(chat.id), thread_id),
            author_id=author_id,
            author_name=author_name,
            text=text,
            ts=ts,
            mentions_bot=self._mentions_bot(message, text),
            is_dm=chat.type == ChatType.PRIVATE,
            reply_to_bot=self._replies_to_bot(message),
            from_bot=from_bot or (self.bot_id is not None and author_id == str(self.bot_id)),
            attachments=_attachments(message),
        )

    def _mentions_bot(self, message: Message, text: str) -> bool:
        name = (self.bot_username or "").lower()
        if not name:
            return False
        entities = message.entities or message.caption_entities or ()
        for entity in entities:
            if entity.type == MessageEntity.TEXT_MENTION:
                if entity.user is not None and entity.user.id == self.bot_id:
                    return True
                continue
            if entity.type not in (MessageEntity.MENTION, MessageEntity.BOT_COMMAND):
                continue
            # Offsets are in UTF-16 code units; PTB's parse_entity handles that.
            part = (
                message.parse_entity(entity)
                if message.text
                else message.parse_caption_entity(entity)
            )
            part = part.lower()
            if entity.type == MessageEntity.MENTION and part == f"@{name}":
                return True
            if entity.type == MessageEntity.BOT_COMMAND and part.endswith(f"@{name}"):
                return True
        if entities:
            return False
        # Without entities (some clients, forwarded text) fall back to the raw text.
        return re.search(rf"(?<![\w@])@{re.escape(name)}\b", text, re.IGNORECASE) is not None

    def _replies_to_bot(self, message: Message) -> bool:
        parent = message.reply_to_message
        if parent is None or parent.from_user is None or self.bot_id is None:
            return False
        # In forum topics every message "replies" to the topic's creation message.
        if parent.forum_topic_created is not None:
            return False
        return parent.from_user.id == self.bot_id

    # ---------------------------------------------------------------- outbound

    def _bot(self) -> ExtBot[None]:
        if self._application is None:
            raise RuntimeError("telegram adapter is not running")
        return self._application.bot

    async def send_status(self, conversation: ConversationRef, text: str) -> SentMessage:
        """A status is a plain message here, edited in place and deleted at the end."""
        return await self.send(Reply(conversation, text))

    @records_failure("send")
    @raises_rate_limited("send", _flood_wait)
    async def send(self, reply: Reply) -> SentMessage:
        """Send the text (Markdown -> HTML, split at 4096) and then the files."""
        bot = self._bot()
        conv = reply.conversation
        thread = int(conv.thread_id) if conv.thread_id else None
        reply_params = (
            ReplyParameters(
                message_id=_parse_message_ref(reply.reply_to), allow_sending_without_reply=True
            )
            if reply.reply_to
            else None
        )
        ids: list[str] = []
        if reply.text.strip():
            for markdown_chunk in split_markdown(reply.text, TELEGRAM_LIMIT):
                sent = await self._after_flood_wait(
                    bool(ids),
                    lambda c=markdown_chunk, r=reply_params: self._send_text(  # type: ignore[misc]
                        bot, conv.chat_id, c, thread, r
                    ),
                )
                ids.append(_message_ref(conv.chat_id, sent.message_id))
                reply_params = None  # only the first chunk is a reply
        for out in reply.files:
            sent_file = await self._after_flood_wait(
                bool(ids),
                lambda o=out, r=reply_params: self._send_file(  # type: ignore[misc]
                    bot, conv.chat_id, o.path, o.name, thread, r
                ),
            )
            if sent_file is not None:
                ids.append(_message_ref(conv.chat_id, sent_file.message_id))
                reply_params = None
        return SentMessage(platform_message_ids=tuple(ids))

    async def _after_flood_wait(self, midway: bool, call: Callable[[], Awaitable[T]]) -> T:
        """One part of a reply. Midway through a reply (a part is out already), Telegram's
        flood control is waited out here, up to FLOOD_WAIT_MAX_S and twice: raised, it
        would make the whole reply be sent again, doubling the parts already out. The
        first part's refusal is raised (RateLimited), for the outbox to wait and retry."""
        for attempt in range(3):
            try:
                return await call()
            except RetryAfter as exc:
                wait = _flood_wait(exc) or 1.0
                if not midway or attempt == 2 or wait > FLOOD_WAIT_MAX_S:
                    raise
                log.info("telegram flood control mid-reply; waiting", retry_after=wait)
                await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    async def _send_text(
        self,
        bot: ExtBot[None],
        chat_id: str,
        markdown: str,
        thread: int | None,
        reply_params: ReplyParameters | None,
    ) -> Message:
        try:
            return await bot.send_message(
                chat_id=chat_id,
                text=markdown_to_html(markdown),
                parse_mode=ParseMode.HTML,
                message_thread_id=thread,
                reply_parameters=reply_params,
            )
        except BadRequest as exc:
            if not _refused_html(exc):
                raise
            # Our HTML should always parse; if Telegram disagrees, the words still matter
            # more than the formatting.
            log.warning("telegram rejected HTML, sending plain text", error=str(exc))
            return await bot.send_message(
                chat_id=chat_id,
                text=markdown,
                message_thread_id=thread,
                reply_parameters=reply_params,
            )

    async def _send_file(
        self,
        bot: ExtBot[None],
        chat_id: str,
        path: Path,
        name: str,
        thread: int | None,
        reply_params: ReplyParameters | None,
    ) -> Message | None:
        try:
            size = path.stat().st_size
            if size > _MAX_DOCUMENT:
                raise ValueError(f"{size} bytes is over Telegram's 50 MB upload limit")
            data = await asyncio.to_thread(path.read_bytes)
        except (OSError, ValueError) as exc:
            log.warning("telegram reply file not sent", file=name, error=str(exc))
            await bot.send_message(
                chat_id=chat_id,
                text=f"(could not attach {name}: {exc})",
                message_thread_id=thread,
            )
            return None
        if Path(name).suffix.lower() in _PHOTO_SUFFIXES and size <= _MAX_PHOTO:
            try:
                return await bot.send_photo(
                    chat_id=chat_id,
                    photo=data,
                    filename=name,
                    message_thread_id=thread,
                    reply_parameters=reply_params,
                )
            except BadRequest as exc:
                # Photos have dimension and ratio limits; a document always goes through.
                log.info("telegram sendPhoto refused, sending as document", error=str(exc))
        return await bot.send_document(
            chat_id=chat_id,
            document=data,
            filename=name,
            message_thread_id=thread,
            reply_parameters=reply_params,
        )

    async def set_typing(self, conversation: ConversationRef) -> None:
        """sendChatAction typing (Telegram shows it for about 5 seconds)."""
        thread = int(conversation.thread_id) if conversation.thread_id else None
        try:
            await self._bot().send_chat_action(
                chat_id=conversation.chat_id, action=ChatAction.TYPING, message_thread_id=thread
            )
        except TelegramError as exc:
            log.debug("telegram typing failed", error=str(exc))

    @raises_rate_limited("edit", _flood_wait)
    async def edit(self, conversation: ConversationRef, message_id: str, text: str) -> None:
        """Edit a message we sent (a status, or a preview growing with the answer).

        The text is cut at 4096. A half-written answer (an open fence, a lone `**`) still
        converts to balanced HTML; should Telegram refuse the HTML anyway, the edit goes
        out as plain text, as sends do. Editing to the same text is Telegram's error
        "message is not modified", and nothing to us.
        """
        bot = self._bot()
        chat_id, msg_id = conversation.chat_id, _parse_message_ref(message_id)
        markdown = text if text.strip() else "…"
        try:
            await bot.edit_message_text(
                text=split_for_telegram(markdown)[0],
                chat_id=chat_id,
                message_id=msg_id,
                parse_mode=ParseMode.HTML,
            )
            return
        except BadRequest as exc:
            if _not_modified(exc):
                return
            if not _refused_html(exc):
                raise
            log.warning("telegram rejected HTML in an edit, sending plain text", error=str(exc))
        try:
            await bot.edit_message_text(
                text=split_markdown(markdown)[0], chat_id=chat_id, message_id=msg_id
            )
        except BadRequest as exc:
            if not _not_modified(exc):
                raise

    @raises_rate_limited("delete", _flood_wait)
    async def delete(self, conversation: ConversationRef, message_id: str) -> None:
        try:
            await self._bot().delete_message(
                chat_id=conversation.chat_id, message_id=_parse_message_ref(message_id)
            )
        except BadRequest as exc:
            # Already deleted, or too old (48 h) to delete: nothing more to do.
            log.info("telegram delete failed", message=message_id, error=str(exc))

    async def download(self, attachment: Attachment, max_bytes: int) -> bytes:
        """getFile, then stream the file from the file URL, stopping past `max_bytes`."""
        if not attachment.ref:
            raise ValueError(f"{attachment.name}: no Telegram file id")
        if attachment.size is not None and attachment.size > max_bytes:
            raise ValueError(
                f"{attachment.name}: {attachment.size} bytes is over the {max_bytes} limit"
            )
        file = await self._bot().get_file(attachment.ref)
        if file.file_size is not None and file.file_size > max_bytes:
            raise ValueError(f"{attachment.name}: {file.file_size} bytes is over the limit")
        if not file.file_path:
            raise ValueError(f"{attachment.name}: Telegram gave no file path")
        if self._http is None:
            raise RuntimeError("telegram adapter is not running")
        # file.file_path is the full download URL, token included: never log it.
        buf = bytearray()
        try:
            async with self._http.stream("GET", file.file_path) as resp:
                if resp.status_code != 200:
                    raise RuntimeError(f"file download failed: HTTP {resp.status_code}")
                async for piece in resp.aiter_bytes():
                    buf.extend(piece)
                    if len(buf) > max_bytes:
                        raise ValueError(f"{attachment.name}: more than the {max_bytes} byte limit")
        except httpx.HTTPError as exc:
            raise RuntimeError(f"file download failed: {type(exc).__name__}") from None
        return bytes(buf)


def _attachments(message: Message) -> tuple[Attachment, ...]:
    found: list[Attachment] = []
    if message.photo:
        best = message.photo[-1]  # sizes come smallest first
        found.append(
            Attachment(
                name=f"photo_{best.file_unique_id}.jpg",
                size=best.file_size,
                content_type="image/jpeg",
                ref=best.file_id,
            )
        )
    for kind in ("document", "audio", "video", "voice", "animation", "video_note"):
        media = getattr(message, kind, None)
        if media is None:
            continue
        name = getattr(media, "file_name", None) or f"{kind}_{media.file_unique_id}"
        found.append(
            Attachment(
                name=name,
                size=media.file_size,
                content_type=getattr(media, "mime_type", None),
                ref=media.file_id,
            )
        )
    return tuple(found)
