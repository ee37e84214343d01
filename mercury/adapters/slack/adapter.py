"""The Slack adapter, on slack-bolt's AsyncApp (Socket Mode or HTTP Events API).

Socket Mode (the default) needs no public URL: slack_sdk's SocketModeClient opens a
websocket from `apps.connections.open` and reconnects by itself when it drops. HTTP mode
serves `POST /slack/events` on the main aiohttp server; Bolt checks the signature and
timestamp (401 otherwise) and answers url_verification.

Events are acknowledged before the handler's work (Bolt's default), so Slack never times
out and retries because of a slow pipeline. A retried or doubled event (Slack sends both
`app_mention` and `message` for a mention in a channel) keeps its platform message id
`<channel>:<ts>`: the adapter drops what it already delivered and the pipeline dedups
whatever slips past (e.g. a retry after a restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import OrderedDict
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.app.async_app import AsyncApp
from slack_bolt.context.async_context import AsyncBoltContext
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient

from mercury.adapters.base import (
    AdapterState,
    InboundSink,
    StateTracker,
    raises_rate_limited,
    records_failure,
    require_secrets,
)
from mercury.adapters.dedup import SeenIds
from mercury.adapters.slack import required_secrets
from mercury.adapters.slack.format import to_mrkdwn
from mercury.config import Secrets, SlackConfig
from mercury.core.messages import Attachment, ConversationRef, InboundMessage, Reply, SentMessage
from mercury.core.text import split_message
from mercury.logging import get_logger

log = get_logger("mercury.adapters.slack")  # one logger per platform

PLATFORM = "slack"
EVENTS_PATH = "/slack/events"
# Slack accepts up to 40,000 characters in `text` but advises staying under 4,000 for
# readability and truncates long single messages in some clients; 3,500 leaves room for
# the fence markers split_message adds and for mrkdwn escapes (&amp;) already applied.
MAX_MESSAGE_CHARS = 3500
TYPING_REACTION = "hourglass_flowing_sand"
# Message subtypes that are a person (or another bot) saying something; edits, joins,
# deletions and the like are not messages to answer.
_SPOKEN_SUBTYPES = {None, "file_share", "thread_broadcast", "me_message", "bot_message"}
_MEMORY = 2048  # ids remembered for dedup / thread bookkeeping
_DOWNLOAD_HOSTS = ("slack.com", "slack-edge.com", "slack-files.com")


def _slack_wait(exc: Exception) -> float | None:
    """Seconds from Retry-After when `exc` is a 429 that AsyncRateLimitErrorRetryHandler
    stopped retrying (its count is spent); None for any other error."""
    if not isinstance(exc, SlackApiError) or getattr(exc.response, "status_code", None) != 429:
        return None
    headers = getattr(exc.response, "headers", None) or {}
    for name, value in headers.items():
        if name.lower() == "retry-after":
            # aiohttp gives a string; slack_sdk's own HttpResponse a list of them.
            raw = value[0] if isinstance(value, list | tuple) and value else value
            try:
                return float(raw)
            except (TypeError, ValueError):
                break
    return 1.0  # Slack always sends Retry-After; a second is its usual wait


class SlackAdapter:
    """Slack through slack-bolt; `platform_message_id` is `<channel>:<ts>`."""

    platform = PLATFORM
    # Mentions arrive as `<@U…>`, which the trigger rules recognise without a handle.
    bot_handles: tuple[str, ...] = ()

    def __init__(
        self,
        config: SlackConfig,
        secrets: Secrets,
        *,
        ping_interval: float = 10.0,
    ) -> None:
        """Build the Bolt app (HTTP mode serves `routes()` on the main server).

        `ping_interval` is Socket Mode's health-check period; it is also the wait between
        reconnect attempts, so a dropped websocket comes back within about that long.
        """
        require_secrets("slack", required_secrets(config), secrets, f" (mode {config.mode})")
        assert secrets.slack_bot_token is not None
        self.config = config
        self.mode = config.mode
        self._token = secrets.slack_bot_token.get_secret_value()
        self._app_token: str | None = None
        signing_secret = ""
        if self.mode == "socket":
            assert secrets.slack_app_token is not None
            self._app_token = secrets.slack_app_token.get_secret_value()
        else:
            assert secrets.slack_signing_secret is not None
            signing_secret = secrets.slack_signing_secret.get_secret_value()
        self.ping_interval = ping_interval
        base_url = (
            config.api_base_url if config.api_base_url.endswith("/") else config.api_base_url + "/"
        )
        self._api_host = urlsplit(base_url).hostname or ""
        self.client = AsyncWebClient(
            token=self._token,
            base_url=base_url,
            # Ride out short outages and rate limits (Retry-After is honoured) instead of
            # losing a reply; connection errors are retried by default already.
            retry_handlers=[
                AsyncConnectionErrorRetryHandler(max_retry_count=2),
                AsyncRateLimitErrorRetryHandler(max_retry_count=2),
                AsyncServerErrorRetryHandler(max_retry_count=2),
            ],
        )
        # signing_secret is passed explicitly so Bolt never falls back to SLACK_* env vars.
        self.app = AsyncApp(
            client=self.client,
            signing_secret=signing_secret,
            request_verification_enabled=self.mode == "http",
            # Bolt names its logger after the app and sets that logger's level from the
            # root's: under slack_bolt's name it cannot change Mercury's own loggers.
            name="slack_bolt.mercury",
        )
        self.app.event("app_mention")(self._on_app_mention)
        self.app.event("message")(self._on_message)
        # Anything else subscribed (reactions, joins, ...) is acknowledged and ignored: an
        # unhandled event would get a 404 and Slack would keep retrying it.
        self.app.event(re.compile(r".*"))(self._on_other)
        self._sink: InboundSink | None = None
        self._socket: AsyncSocketModeHandler | None = None
        self._bot_user_id: str | None = None
        self._bot_id: str | None = None
        self._delivered: SeenIds[str] = SeenIds(_MEMORY)
        self._inflight: set[str] = set()
        self._sent_ts: SeenIds[str] = SeenIds(_MEMORY)  # our messages (thread parents)
        self._dm_channels: SeenIds[str] = SeenIds(_MEMORY)
        # Per conversation (chat, thread): the message a run most likely answers, for the
        # "working" reaction; set_typing only gets the conversation.
        self._anchors: OrderedDict[tuple[str, str | None], str] = OrderedDict()
        self._reacted: SeenIds[str] = SeenIds(_MEMORY)  # "<channel>:<ts>"
        self._users: dict[str, str] = {}
        self.tracker = StateTracker()

    # ---------------------------------------------------------------- Adapter protocol

    @property
    def state(self) -> AdapterState:
        """Socket Mode: connected while slack_sdk's websocket session is open (it
        reconnects by itself); HTTP mode: connected from start() to stop()."""
        state = self.tracker.state
        client = self._socket.client if self._socket is not None else None
        if client is not None and state.connected:
            session = client.current_session
            alive = not client.closed and session is not None and not session.closed
            if not alive:
                return replace(state, connected=False)
        return state

    async def start(self, sink: InboundSink) -> None:
        """Check the bot token, then connect (Socket Mode) or start accepting events (HTTP)."""
        try:
            auth = await self.client.auth_test()
        except SlackApiError as exc:
            raise RuntimeError(
                f"slack: auth.test failed ({exc.response.get('error')}): "
                "check MERCURY_SLACK_BOT_TOKEN and the app's installation"
            ) from exc
        self._bot_user_id = auth.get("user_id")
        self._bot_id = auth.get("bot_id")
        self._sink = sink
        if self.mode == "socket":
            await self._connect_socket()
        self.tracker.connected()
        log.info("slack adapter started", mode=self.mode, bot_user_id=self._bot_user_id)

    async def stop(self) -> None:
        self._sink = None
        self.tracker.disconnected()
        handler, self._socket = self._socket, None
        if handler is not None:
            client = handler.client
            await handler.close_async()
            # close() cancels its tasks without waiting; wait so none outlives the loop.
            tasks = [
                t
                for t in (client.message_processor, client.current_session_monitor,
                          client.message_receiver)
                if t is not None
            ]  # fmt: skip
            await asyncio.gather(*tasks, return_exceptions=True)
        log.info("slack adapter stopped")

    @records_failure("send")
    @raises_rate_limited("send", _slack_wait)
    async def send_status(self, conversation: ConversationRef, text: str) -> SentMessage:
        """A plain message, edited in place and deleted at the end; in a channel it sits
        in the thread of the message being answered, next to the reply it announces."""
        channel = conversation.chat_id
        thread_ts = conversation.thread_id
        if thread_ts is None and not self._is_dm(channel):
            thread_ts = self._anchors.get((channel, None))
        resp = await self.client.chat_postMessage(
            channel=channel, text=to_mrkdwn(text)[:MAX_MESSAGE_CHARS], thread_ts=thread_ts
        )
        self._sent_ts.add(str(resp["ts"]))
        return SentMessage(platform_message_ids=(f"{resp.get('channel') or channel}:{resp['ts']}",))

    @records_failure("send")
    @raises_rate_limited("send", _slack_wait)
    async def send(self, reply: Reply) -> SentMessage:
        """Post the reply in the thread of the message it answers, split, then its files."""
        conv = reply.conversation
        channel = conv.chat_id
        thread_ts = self._thread_for(conv, reply)
        ids: list[str] = []
        text = to_mrkdwn(reply.text) if reply.text.strip() else ""
        for chunk in split_message(text, MAX_MESSAGE_CHARS) if text else []:
            resp = await self.client.chat_postMessage(
                channel=channel, text=chunk, thread_ts=thread_ts
            )
            ts = str(resp["ts"])
            ids.append(f"{resp.get('channel') or channel}:{ts}")
            self._sent_ts.add(ts)
        uploads = []
        for out in reply.files:
            if not out.path.is_file():
                log.warning("slack reply file missing", channel=channel, file=out.name)
                continue
            uploads.append({"file": str(out.path), "filename": out.name, "title": out.name})
        if uploads:
            await self.client.files_upload_v2(
                file_uploads=uploads, channel=channel, thread_ts=thread_ts
            )
        if reply.reply_to:
            await self._clear_reaction(reply.reply_to)
        return SentMessage(platform_message_ids=tuple(ids))

    async def set_typing(self, conversation: ConversationRef) -> None:
        """Bots cannot show typing: put a reaction on the message being answered, once."""
        ts = self._anchors.get((conversation.chat_id, conversation.thread_id))
        if ts is None:
            return
        key = f"{conversation.chat_id}:{ts}"
        if key in self._reacted:
            return
        self._reacted.add(key)
        try:
            await self.client.reactions_add(
                channel=conversation.chat_id, timestamp=ts, name=TYPING_REACTION
            )
        except SlackApiError as exc:
            if exc.response.get("error") != "already_reacted":
                log.debug("slack reaction not added", error=exc.response.get("error"))

    @raises_rate_limited("edit", _slack_wait)
    async def edit(self, conversation: ConversationRef, message_id: str, text: str) -> None:
        """chat.update, cut at the limit. A half-written answer is fine: to_mrkdwn closes
        a fence left open, and an unpaired `**` shows as typed."""
        channel, ts = _split_id(message_id, conversation.chat_id)
        mrkdwn = to_mrkdwn(text)[:MAX_MESSAGE_CHARS] if text.strip() else "…"  # no_text
        await self.client.chat_update(channel=channel, ts=ts, text=mrkdwn)

    @raises_rate_limited("delete", _slack_wait)
    async def delete(self, conversation: ConversationRef, message_id: str) -> None:
        channel, ts = _split_id(message_id, conversation.chat_id)
        try:
            await self.client.chat_delete(channel=channel, ts=ts)
        except SlackApiError as exc:
            if exc.response.get("error") != "message_not_found":
                raise  # gone already is what the caller wanted

    async def download(self, attachment: Attachment, max_bytes: int) -> bytes:
        """Fetch a user's file with the bot token; ValueError past `max_bytes`."""
        url = attachment.ref or ""
        host = urlsplit(url).hostname or ""
        # The bot token goes only to Slack's own hosts (or the configured API host).
        slack_host = any(host == h or host.endswith("." + h) for h in _DOWNLOAD_HOSTS)
        if not (slack_host or host == self._api_host):
            raise ValueError(f"{attachment.name}: not a Slack file URL")
        if attachment.size is not None and attachment.size > max_bytes:
            raise ValueError(f"{attachment.name}: {attachment.size} bytes is over {max_bytes}")
        timeout = aiohttp.ClientTimeout(total=120)
        headers = {"Authorization": f"Bearer {self._token}"}
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(url, headers=headers) as resp,
        ):
            if resp.status != 200:
                raise RuntimeError(f"{attachment.name}: download failed with HTTP {resp.status}")
            ctype = resp.headers.get("Content-Type", "")
            if ctype.startswith("text/html") and "html" not in (attachment.content_type or ""):
                # Slack answers a login page, not an error, when the token lacks files:read.
                raise RuntimeError(f"{attachment.name}: got a login page (missing files:read?)")
            data = bytearray()
            async for chunk in resp.content.iter_chunked(65536):
                data += chunk
                if len(data) > max_bytes:
                    raise ValueError(f"{attachment.name}: over the {max_bytes} byte limit")
        return bytes(data)

    # ------------------------------------------------------------------ HTTP mode

    def routes(self) -> list[web.RouteDef]:
        """`POST /slack/events` in HTTP mode; Socket Mode needs no route."""
        return [web.post(EVENTS_PATH, self._http_events)] if self.mode == "http" else []

    async def _http_events(self, request: web.Request) -> web.Response:
        if self._sink is None:
            # Not started (or stopping): 503 makes Slack retry later instead of losing it.
            return web.json_response({"error": "slack adapter is not running"}, status=503)
        bolt_request = await to_bolt_request(request)
        retry = request.headers.get("X-Slack-Retry-Num")
        if retry:
            log.info("slack event retry", retry=retry, reason=request.headers.get(
                "X-Slack-Retry-Reason"))  # fmt: skip
        return await to_aiohttp_response(await self.app.async_dispatch(bolt_request))

    # ------------------------------------------------------------------ Socket Mode

    async def _connect_socket(self) -> None:
        assert self._app_token is not None
        handler = AsyncSocketModeHandler(
            self.app, self._app_token, web_client=self.client, ping_interval=self.ping_interval
        )
        # auto_reconnect_enabled is the default; stated because the adapter relies on it.
        handler.client.auto_reconnect_enabled = True
        handler.client.default_auto_reconnect_enabled = True
        try:
            # Open the URL ourselves: a bad app token then fails start() with a clear
            # error, where connect() alone would retry it forever.
            handler.client.wss_uri = await handler.client.issue_new_wss_url()
        except SlackApiError as exc:
            await handler.close_async()
            raise RuntimeError(
                f"slack: apps.connections.open failed ({exc.response.get('error')}): "
                "check MERCURY_SLACK_APP_TOKEN (xapp-..., scope connections:write)"
            ) from exc
        try:
            await asyncio.wait_for(handler.connect_async(), timeout=30)
        except TimeoutError:
            await handler.close_async()
            raise RuntimeError("slack: the Socket Mode websocket did not connect in 30 s") from None
        self._socket = handler

    # ---------------------------------------------------------------------- events

    async def _on_app_mention(self, event: dict[str, Any], context: AsyncBoltContext) -> None:
        await self._handle(event, context, mention=True)

    async def _on_message(self, event: dict[str, Any], context: AsyncBoltContext) -> None:
        await self._handle(event, context, mention=False)

    async def _on_other(self) -> None:
        return None

    async def _handle(
        self, event: dict[str, Any], context: AsyncBoltContext, mention: bool
    ) -> None:
        try:
            msg = await self._to_inbound(event, context, mention)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            log.warning(
                "slack event skipped: malformed",
                event_type=event.get("type") if isinstance(event, dict) else None,
                error=f"{type(exc).__name__}: {exc}",
            )
            return
        if msg is not None:
            await self._deliver(msg)

    async def _to_inbound(
        self, event: dict[str, Any], context: AsyncBoltContext, mention: bool
    ) -> InboundMessage | None:
        """The InboundMessage for an event, or None for what is not a message to store."""
        subtype = event.get("subtype")
        if subtype not in _SPOKEN_SUBTYPES:
            return None
        channel = _required_str(event, "channel")
        ts = _required_str(event, "ts")
        bot_user_id = context.bot_user_id or self._bot_user_id
        own_bot_id = context.bot_id or self._bot_id
        user = event.get("user")
        bot_id = event.get("bot_id")
        if (user and user == bot_user_id) or (bot_id and bot_id == own_bot_id):
            return None  # our own message echoed back (Bolt usually drops these first)
        from_bot = bool(bot_id) or subtype == "bot_message"
        if from_bot:
            author_id = str(bot_id or user or "bot")
            profile = event.get("bot_profile") or {}
            author_name = str(event.get("username") or profile.get("name") or author_id)
        else:
            author_id = _required_str(event, "user")
            author_name = await self._user_name(author_id)
        text = event.get("text") or ""
        if not isinstance(text, str):
            raise TypeError("text is not a string")
        is_dm = event.get("channel_type") == "im" or channel.startswith("D")
        if is_dm:
            self._dm_channels.add(channel)
        thread_ts = event.get("thread_ts")
        thread_id = str(thread_ts) if thread_ts and thread_ts != ts else None
        mentions_bot = mention or (bool(bot_user_id) and f"<@{bot_user_id}>" in text)
        reply_to_bot = thread_id is not None and (
            (bot_user_id is not None and event.get("parent_user_id") == bot_user_id)
            or thread_id in self._sent_ts
        )
        attachments = tuple(_attachment(f) for f in event.get("files") or () if isinstance(f, dict))
        msg = InboundMessage(
            platform=PLATFORM,
            platform_message_id=f"{channel}:{ts}",
            conversation=ConversationRef(PLATFORM, channel, thread_id),
            author_id=author_id,
            author_name=author_name,
            text=text,
            ts=datetime.fromtimestamp(float(ts), UTC),
            mentions_bot=mentions_bot,
            is_dm=is_dm,
            reply_to_bot=reply_to_bot,
            from_bot=from_bot,
            attachments=attachments,
        )
        if not from_bot:
            key = (channel, thread_id)
            # The router decides what triggers; a mention, DM or reply is the likely one,
            # anything else only stands in until one of those arrives.
            if mentions_bot or is_dm or reply_to_bot or key not in self._anchors:
                _remember(self._anchors, key, ts)
        return msg

    async def _deliver(self, msg: InboundMessage) -> None:
        key = msg.platform_message_id
        if key in self._delivered or key in self._inflight:
            log.debug("slack duplicate event dropped", message_id=key)
            return
        sink = self._sink
        if sink is None:
            return
        # Claimed before the await: app_mention and message for one mention run
        # concurrently, and only one of them may reach the pipeline.
        self._inflight.add(key)
        delivered = False
        self.tracker.event()
        try:
            await sink(msg)
            delivered = True
        except Exception as exc:
            self.tracker.failed("receive", exc)
            # Not remembered, so Slack's retry (or the twin event) can still deliver it.
            log.exception("slack sink failed", message_id=key)
        finally:
            self._inflight.discard(key)
            if delivered:
                self._delivered.add(key)

    async def _user_name(self, user_id: str) -> str:
        """A display name for the author (users:read); the id if Slack will not say."""
        found = self._users.get(user_id)
        if found is not None:
            return found
        try:
            resp = await self.client.users_info(user=user_id)
        except Exception as exc:  # a name is nice to have, never worth dropping a message
            log.debug("slack users.info failed", user=user_id, error=str(exc))
            return user_id
        user = resp.get("user") or {}
        profile = user.get("profile") or {}
        name = str(
            profile.get("display_name") or user.get("real_name") or user.get("name") or user_id
        )
        if len(self._users) > _MEMORY:
            self._users.clear()
        self._users[user_id] = name
        return name

    # --------------------------------------------------------------------- helpers

    def _thread_for(self, conv: ConversationRef, reply: Reply) -> str | None:
        """thread_ts for a reply: the conversation's thread, else the answered message
        (for a preview, which names none, the message a run most likely answers)."""
        if conv.thread_id:
            return conv.thread_id
        if self._is_dm(conv.chat_id):
            return None  # a DM reads as a conversation; threads there only hide replies
        if reply.reply_to:
            channel, _, ts = reply.reply_to.partition(":")
            if channel == conv.chat_id and _TS_RE.fullmatch(ts):
                return ts
        if reply.preview:
            # A streamed answer's preview sits where the reply will, as a status does.
            return self._anchors.get((conv.chat_id, None))
        return None

    def _is_dm(self, channel: str) -> bool:
        return channel in self._dm_channels or channel.startswith("D")

    async def _clear_reaction(self, message_id: str) -> None:
        if message_id not in self._reacted:
            return
        self._reacted.discard(message_id)
        channel, ts = _split_id(message_id, "")
        with contextlib.suppress(SlackApiError):
            await self.client.reactions_remove(channel=channel, timestamp=ts, name=TYPING_REACTION)


_TS_RE = re.compile(r"\d+\.\d+")


def _required_str(event: dict[str, Any], key: str) -> str:
    value = event[key]
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key} missing or not a string")
    return value


def _attachment(f: dict[str, Any]) -> Attachment:
    size = f.get("size")
    return Attachment(
        name=str(f.get("name") or f.get("title") or f.get("id") or "file"),
        size=size if isinstance(size, int) else None,
        content_type=f.get("mimetype"),
        ref=f.get("url_private_download") or f.get("url_private"),
    )


def _split_id(message_id: str, default_channel: str) -> tuple[str, str]:
    channel, sep, ts = message_id.partition(":")
    return (channel, ts) if sep else (default_channel, message_id)


def _remember(store: OrderedDict[Any, Any], key: Any, value: Any = None) -> None:
    store[key] = value
    store.move_to_end(key)
    while len(store) > _MEMORY:
        store.popitem(last=False)
