"""The Discord adapter, on discord.py (REST API v10 + the gateway websocket).

Inbound: every MESSAGE_CREATE the bot can see (DMs, guild channels, threads; the
message_content intent must be enabled in the developer portal) becomes an
InboundMessage with `is_dm`, `mentions_bot` and `reply_to_bot` set; the router decides
what triggers. Outbound: replies go to the same channel (or thread) as a Discord reply to
the triggering message, split at 2000 characters on line and code-fence boundaries, with
files attached (at most 10 per message).

discord.py has no option for its API base or gateway URL, so `start()` sets the
process-global `discord.http.Route.BASE` and `DiscordWebSocket.DEFAULT_GATEWAY` from
config and `stop()` restores them: only one Discord adapter per process is supported
(Mercury runs at most one per platform).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import aiohttp
import discord
import yarl
from aiohttp import web
from discord.gateway import DiscordWebSocket
from discord.http import Route

from mercury.adapters.base import (
    AdapterState,
    InboundSink,
    StateTracker,
    raises_rate_limited,
    records_failure,
)
from mercury.adapters.dedup import SeenIds
from mercury.config import DiscordConfig, Secrets
from mercury.core.messages import (
    Attachment,
    ConversationRef,
    InboundMessage,
    OutboundFile,
    Reply,
    SentMessage,
)
from mercury.core.text import split_message
from mercury.logging import get_logger

log = get_logger("mercury.adapters.discord")  # one logger per platform

PLATFORM = "discord"
MAX_MESSAGE = 2000
MAX_FILES_PER_MESSAGE = 10
_SEEN_LIMIT = 2048  # message ids remembered to drop a redelivered MESSAGE_CREATE
_SENT_LIMIT = 4096  # ids of our own messages, to spot replies to the bot without a fetch


def _discord_wait(exc: Exception) -> float | None:
    """Seconds to wait when `exc` is a 429 discord.py stopped retrying; None otherwise.

    discord.py 2.7 sleeps out a 429 itself and tries a request 5 times in all
    (`HTTPClient.request`), then raises HTTPException with status 429; it raises its own
    RateLimited instead when a wait exceeds `max_ratelimit_timeout` (unset here). The
    exception keeps the response's headers but not its body: X-RateLimit-Reset-After
    (milliseconds precise) when the limit hit is the route's own (scope "user"), else
    Retry-After (whole seconds, rounded up), else a second.
    """
    if isinstance(exc, discord.RateLimited):
        return float(exc.retry_after)
    if not isinstance(exc, discord.HTTPException) or exc.status != 429:
        return None
    headers = getattr(exc.response, "headers", None) or {}
    names = ["Retry-After"]
    if headers.get("X-RateLimit-Scope", "user") == "user":
        names.insert(0, "X-RateLimit-Reset-After")
    for name in names:
        try:
            return float(headers[name])
        except (KeyError, TypeError, ValueError):
            continue
    return 1.0


class DiscordStartError(RuntimeError):
    """The adapter could not connect; the message is one line an operator can act on."""


class DiscordAdapter:
    """Discord through a discord.py Client running in a background task."""

    platform = PLATFORM
    # Mentions arrive as `<@id>`, which the trigger rules recognise without a handle.
    bot_handles: tuple[str, ...] = ()

    def __init__(
        self,
        config: DiscordConfig,
        secrets: Secrets,
        *,
        ready_timeout: float = 30.0,
        guild_ready_timeout: float = 2.0,
        download_timeout: float = 60.0,
    ) -> None:
        self.config = config
        self._token = secrets.discord_bot_token
        self.ready_timeout = ready_timeout
        self.guild_ready_timeout = guild_ready_timeout
        self.download_timeout = download_timeout
        self._client: discord.Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._sink: InboundSink | None = None
        self._http: aiohttp.ClientSession | None = None
        self._saved_globals: tuple[str, yarl.URL] | None = None
        self._seen: SeenIds[int] = SeenIds(_SEEN_LIMIT)
        self._sent: SeenIds[int] = SeenIds(_SENT_LIMIT)
        self._stopping = False
        self.tracker = StateTracker()

    @property
    def state(self) -> AdapterState:
        """Connected from READY until the gateway drops (discord.py reconnects and says so)."""
        return self.tracker.state

    def routes(self) -> list[web.RouteDef]:
        """None: the gateway is a websocket Mercury opens."""
        return []

    # ------------------------------------------------------------------ lifecycle

    async def start(self, sink: InboundSink) -> None:
        """Log in, connect the gateway and wait until READY (or fail with one clear line)."""
        if self._token is None or not self._token.get_secret_value().strip():
            raise DiscordStartError("adapters.discord: no bot token; set MERCURY_DISCORD_BOT_TOKEN")
        self._sink = sink
        self._stopping = False
        self._patch_endpoints()
        client = self._make_client()
        self._client = client
        self._http = aiohttp.ClientSession()
        # reconnect=True: discord.py retries with exponential backoff and RESUMEs the
        # session, so Discord replays the events missed while the gateway was down.
        self._task = asyncio.create_task(
            client.start(self._token.get_secret_value().strip(), reconnect=True),
            name="discord-client",
        )
        ready = asyncio.create_task(client.wait_until_ready())
        try:
            done, _ = await asyncio.wait(
                {self._task, ready}, timeout=self.ready_timeout, return_when="FIRST_COMPLETED"
            )
        finally:
            ready.cancel()
        if self._task in done:
            error = self._start_error(self._task.exception())
            await self.stop()
            raise error
        if ready not in done:
            await self.stop()
            raise DiscordStartError(
                f"adapters.discord: not connected within {self.ready_timeout:.0f}s "
                f"(API {self.config.api_base_url}, gateway {self.config.gateway_url})"
            )
        self._task.add_done_callback(self._client_ended)
        self.tracker.connected()
        user = client.user
        log.info("discord connected", bot_id=user.id if user else None, bot=str(user))

    async def stop(self) -> None:
        """Close the gateway and HTTP sessions; nothing reaches the sink afterwards."""
        self._stopping = True
        self._sink = None
        self.tracker.disconnected()
        client, task = self._client, self._task
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()
        if task is not None:
            task.remove_done_callback(self._client_ended)
            if not task.done():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait({task}, timeout=5)
                task.cancel()
            with contextlib.suppress(BaseException):
                await task
        if self._http is not None:
            await self._http.close()
        self._client = self._task = self._http = None
        self._restore_endpoints()

    def _patch_endpoints(self) -> None:
        if self._saved_globals is None:
            self._saved_globals = (Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY)
        Route.BASE = self.config.api_base_url.rstrip("/")
        DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(self.config.gateway_url)

    def _restore_endpoints(self) -> None:
        if self._saved_globals is not None:
            Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY = self._saved_globals
            self._saved_globals = None

    def _make_client(self) -> discord.Client:
        # Mercury never joins voice: skip discord.py's "PyNaCl/davey missing" warnings.
        discord.VoiceClient.warn_nacl = False
        discord.VoiceClient.warn_dave = False
        intents = discord.Intents.default()
        intents.message_content = True  # privileged: without it guild message text is empty
        intents.dm_messages = True
        intents.guild_messages = True
        client = discord.Client(
            intents=intents,
            guild_ready_timeout=self.guild_ready_timeout,
            # An agent's reply must never ping @everyone or a role.
            allowed_mentions=discord.AllowedMentions(
                everyone=False, roles=False, users=True, replied_user=True
            ),
        )
        self._guard_parsers(client)

        @client.event
        async def on_message(message: discord.Message) -> None:
            await self._on_message(message)

        # The gateway's own news of its connection, for the Overview's up/down.
        @client.event
        async def on_ready() -> None:
            self.tracker.connected()

        @client.event
        async def on_resumed() -> None:
            self.tracker.connected()

        @client.event
        async def on_disconnect() -> None:
            if not self._stopping:
                self.tracker.disconnected("the gateway connection dropped; reconnecting")

        @client.event
        async def on_error(event: str, *args: Any, **kwargs: Any) -> None:
            log.exception("discord event handler failed", discord_event=event)

        return client

    @staticmethod
    def _guard_parsers(client: discord.Client) -> None:
        """Make a malformed gateway event a logged skip instead of a dead client.

        discord.py calls its event parsers straight from the websocket loop, and an
        exception there (say a MESSAGE_CREATE without `channel_id`) escapes
        `Client.connect` and ends the client. `ConnectionState.parsers` is the table the
        gateway looks parsers up in, so each entry is wrapped once here.
        """
        parsers: dict[str, Callable[[Any], None]] = client._connection.parsers

        def guard(name: str, parse: Callable[[Any], None]) -> Callable[[Any], None]:
            def guarded(data: Any) -> None:
                try:
                    parse(data)
                except Exception:
                    log.exception("discord: malformed gateway event skipped", discord_event=name)

            return guarded

        for name, parse in list(parsers.items()):
            parsers[name] = guard(name, parse)

    def _start_error(self, exc: BaseException | None) -> DiscordStartError:
        # discord.py 2.7 fails its own retry when the very first gateway connect fails
        # (AttributeError on `self.ws.sequence`): the network error is its context.
        if isinstance(exc, AttributeError) and isinstance(
            exc.__context__, aiohttp.ClientError | OSError | asyncio.TimeoutError
        ):
            return DiscordStartError(
                f"adapters.discord: cannot reach the gateway {self.config.gateway_url}: "
                f"{exc.__context__}"
            )
        if isinstance(exc, discord.LoginFailure):
            return DiscordStartError(
                "adapters.discord: Discord rejected the bot token; check MERCURY_DISCORD_BOT_TOKEN"
            )
        if isinstance(exc, discord.PrivilegedIntentsRequired):
            return DiscordStartError(
                "adapters.discord: the Message Content intent is not enabled; turn it on "
                "under Bot > Privileged Gateway Intents in the Discord developer portal"
            )
        if isinstance(exc, discord.ConnectionClosed) and exc.code == 4004:
            return DiscordStartError(
                "adapters.discord: the gateway rejected the bot token; "
                "check MERCURY_DISCORD_BOT_TOKEN"
            )
        if isinstance(exc, discord.HTTPException):
            return DiscordStartError(
                f"adapters.discord: API {self.config.api_base_url} answered "
                f"{exc.status}: {exc.text or exc}"
            )
        if isinstance(exc, aiohttp.ClientError | OSError):
            # Logged in (GET /users/@me worked) means the REST API is fine: the gateway is not.
            logged_in = self._client is not None and self._client.user is not None
            where = self.config.gateway_url if logged_in else self.config.api_base_url
            what = "the gateway " if logged_in else ""
            return DiscordStartError(f"adapters.discord: cannot reach {what}{where}: {exc}")
        return DiscordStartError(f"adapters.discord: client stopped during start-up: {exc!r}")

    def _client_ended(self, task: asyncio.Task[None]) -> None:
        if self._stopping or task.cancelled():
            return
        exc = task.exception()
        reason = self._start_error(exc) if exc else "the client closed"
        self.tracker.disconnected(f"client stopped: {reason}"[:300])
        log.error("discord client stopped; no more Discord messages", reason=str(reason))

    # ------------------------------------------------------------------ inbound

    async def _on_message(self, message: discord.Message) -> None:
        try:
            inbound = self.to_inbound(message)
        except Exception:
            log.exception("discord: cannot read message; skipped", message_id=message.id)
            return
        sink = self._sink
        if inbound is None or sink is None:
            return
        self.tracker.event()
        try:
            await sink(inbound)
        except Exception as exc:
            self.tracker.failed("receive", exc)
            # The pipeline logs its own failures; this keeps the gateway loop serving.
            log.exception("discord: inbound handler failed", message_id=message.id)

    def to_inbound(self, message: discord.Message) -> InboundMessage | None:
        """Normalise a discord.py Message; None for our own, system and repeated messages."""
        client = self._client
        me = client.user if client is not None else None
        if me is None or message.author.id == me.id:
            return None  # our own replies are stored by the pipeline when it sends them
        if message.is_system():
            return None  # joins, pins, boosts: nothing a person said
        if not self._seen.add(message.id):
            return None  # a replayed or redelivered event: one message, one run
        channel = message.channel
        if isinstance(channel, discord.Thread):
            conv = ConversationRef(PLATFORM, str(channel.parent_id), str(channel.id))
        else:
            conv = ConversationRef(PLATFORM, str(channel.id))
        is_dm = message.guild is None or isinstance(channel, discord.DMChannel)
        mentions_bot = me.id in message.raw_mentions or any(u.id == me.id for u in message.mentions)
        return InboundMessage(
            platform=PLATFORM,
            platform_message_id=str(message.id),
            conversation=conv,
            author_id=str(message.author.id),
            author_name=message.author.display_name,
            text=message.content,
            ts=message.created_at,
            mentions_bot=mentions_bot,
            is_dm=is_dm,
            reply_to_bot=self._replies_to_bot(message, me.id),
            from_bot=message.author.bot or message.webhook_id is not None,
            attachments=tuple(
                Attachment(name=a.filename, size=a.size, content_type=a.content_type, ref=a.url)
                for a in message.attachments
            ),
        )

    def _replies_to_bot(self, message: discord.Message, bot_id: int) -> bool:
        ref = message.reference
        if ref is None or ref.message_id is None:
            return False
        # Discord embeds the referenced message in MESSAGE_CREATE (`resolved`); when it
        # does not (deleted, too old), our own sent ids still tell.
        resolved = ref.resolved or ref.cached_message
        if isinstance(resolved, discord.Message):
            return resolved.author.id == bot_id
        return ref.message_id in self._sent

    # ------------------------------------------------------------------ outbound

    def _channel(self, conversation: ConversationRef) -> discord.PartialMessageable:
        if self._client is None:
            raise RuntimeError("discord adapter is not started")
        return self._client.get_partial_messageable(
            int(conversation.thread_id or conversation.chat_id)
        )

    async def send_status(self, conversation: ConversationRef, text: str) -> SentMessage:
        """A status is a plain message here, edited in place and deleted at the end."""
        return await self.send(Reply(conversation, text))

    @records_failure("send")
    @raises_rate_limited("send", _discord_wait)
    async def send(self, reply: Reply) -> SentMessage:
        """Post `reply`: text chunks of at most 2000 characters, then files 10 at a time.

        The first message is a Discord reply to `reply.reply_to` (when it still exists);
        files ride on the last text chunk.
        """
        channel = self._channel(reply.conversation)
        chunks = split_message(reply.text, MAX_MESSAGE) if reply.text.strip() else []
        groups = _batches(reply.files, MAX_FILES_PER_MESSAGE)
        # (content, files) per message: files go with the last text chunk.
        posts: list[tuple[str | None, list[OutboundFile]]] = [(c, []) for c in chunks]
        if posts and groups:
            posts[-1] = (posts[-1][0], groups.pop(0))
        posts += [(None, g) for g in groups]
        reference = None
        if reply.reply_to:
            reference = discord.MessageReference(
                message_id=int(reply.reply_to), channel_id=channel.id, fail_if_not_exists=False
            )
        ids: list[str] = []
        for content, files in posts:
            sent = await self._post(channel, content, files, reference if not ids else None)
            self._sent.add(sent.id)
            ids.append(str(sent.id))
        return SentMessage(tuple(ids))

    async def _post(
        self,
        channel: discord.PartialMessageable,
        content: str | None,
        files: list[OutboundFile],
        reference: discord.MessageReference | None,
    ) -> discord.Message:
        opened: list[discord.File] = []
        try:
            for f in files:
                try:
                    opened.append(discord.File(f.path, filename=f.name))
                except OSError as exc:
                    log.warning(
                        "discord: outbox file unreadable; skipped", file=f.name, error=str(exc)
                    )
            if content is None and not opened:
                content = "(file could not be attached)"
            kwargs: dict[str, Any] = {"files": opened} if opened else {}
            if reference is not None:
                kwargs["reference"] = reference
            return await channel.send(content, **kwargs)
        finally:
            for df in opened:
                df.close()

    async def set_typing(self, conversation: ConversationRef) -> None:
        """Trigger the typing indicator once (Discord shows it for about 10 s)."""
        await self._channel(conversation).typing()

    @raises_rate_limited("edit", _discord_wait)
    async def edit(self, conversation: ConversationRef, message_id: str, text: str) -> None:
        """Cut at 2000; an unclosed fence or `**` shows as typed (Discord renders it so)."""
        msg = self._channel(conversation).get_partial_message(int(message_id))
        # Discord refuses an empty message (50006).
        await msg.edit(content=text[:MAX_MESSAGE] if text.strip() else "…")

    @raises_rate_limited("delete", _discord_wait)
    async def delete(self, conversation: ConversationRef, message_id: str) -> None:
        msg = self._channel(conversation).get_partial_message(int(message_id))
        with contextlib.suppress(discord.NotFound):  # already gone: what the caller wanted
            await msg.delete()

    async def download(self, attachment: Attachment, max_bytes: int) -> bytes:
        """Fetch an attachment from its (signed, token-free) CDN URL, capped at max_bytes."""
        if attachment.size is not None and attachment.size > max_bytes:
            raise ValueError(f"{attachment.name}: {attachment.size} bytes is over {max_bytes}")
        url = attachment.ref or ""
        if yarl.URL(url).scheme not in ("http", "https"):
            raise ValueError(f"{attachment.name}: not a downloadable URL")
        if self._http is None:
            raise RuntimeError("discord adapter is not started")
        timeout = aiohttp.ClientTimeout(total=self.download_timeout)
        # No Authorization header: CDN URLs are signed, and the bot token must not leave
        # for whatever host an attachment URL names.
        async with self._http.get(url, timeout=timeout) as resp:
            resp.raise_for_status()
            if resp.content_length is not None and resp.content_length > max_bytes:
                raise ValueError(f"{attachment.name}: over {max_bytes} bytes")
            data = bytearray()
            async for block in resp.content.iter_chunked(64 * 1024):
                data += block
                if len(data) > max_bytes:
                    raise ValueError(f"{attachment.name}: over {max_bytes} bytes")
        return bytes(data)


def _batches(files: tuple[OutboundFile, ...], size: int) -> list[list[OutboundFile]]:
    return [list(files[i : i + size]) for i in range(0, len(files), size)]
