"""An inbound message: look up its space and author, ask the router, then act on the answer.

The decision itself is `core.router.route` (pure); this module only does the I/O around
it: storage lookups, storing the message, enqueueing the job. A chat command is carried
out by `pipeline.commands`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from pathlib import Path

from sqlalchemy import exc as sa_exc

from mercury.adapters.base import Adapter, InboundUnavailable
from mercury.config import Config
from mercury.core.messages import Attachment, InboundMessage, Reply
from mercury.core.permissions import user_key
from mercury.core.ratelimit import RateLedger, RateRule
from mercury.core.router import (
    DISK_WAIT_NOTICE,
    Action,
    Decision,
    RouteContext,
    route,
)
from mercury.core.spaces import default_space_id
from mercury.core.triggers import TRIGGER_PREF, TriggerMode, TriggerRule, space_rule
from mercury.logging import first_line, get_logger
from mercury.pipeline.budget import BudgetBook
from mercury.pipeline.commands import ChatCommands
from mercury.pipeline.dispatcher import Dispatcher
from mercury.pipeline.payload import JobPayload
from mercury.pipeline.standing import standing_in
from mercury.sandbox.runner import ContainerRunner
from mercury.storage import (
    Database,
    DuplicateMessage,
    MessageRecord,
    MessageRole,
    Store,
    repo,
    utcnow,
)

log = get_logger("mercury.inbound")

MAX_ATTACHMENT_BYTES = 25 * 1024**2

# What a sender is told when a message could not be recorded: short, no paths, no secrets.
DISK_FULL = "the server's disk is full"
DATABASE_BUSY = "the database is busy"
DATABASE_DOWN = "the database is unavailable"
_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# SQLite primary result codes of a database that cannot take a write now: BUSY, LOCKED;
# FULL; and IOERR, CANTOPEN, READONLY, NOMEM, PROTOCOL. SQLITE_ERROR (a syntax error, a
# missing table) is a bug, not an outage.
_SQLITE_BUSY = frozenset({5, 6})
_SQLITE_FULL = 13
_SQLITE_DOWN = frozenset({7, 8, 10, 14, 15})
# PostgreSQL error classes that a later retry can get past: connection exceptions,
# transaction rollbacks (serialisation, deadlock), insufficient resources (53100: disk
# full), operator intervention (the server shutting down).
_PG_DISK_FULL = "53100"
_PG_TRANSIENT = frozenset({"08", "40", "53", "57"})
_PG_BUSY = ("40", "55P03")  # a rolled-back transaction, a lock not obtained in time


def unavailable_reason(exc: BaseException) -> str | None:
    """Why a message could not be recorded, when `exc` is the storage failing (the same
    message can get through later), else None: a bug with this one message.

    Only the exception and its explicit causes count, not what it was raised while
    handling. A constraint violation or an SQL error is a bug, not an outage.
    """
    if isinstance(exc, ConnectionError):  # asyncpg's refused connection is not wrapped
        return DATABASE_DOWN
    if isinstance(exc, sa_exc.TimeoutError):  # no pooled connection came free in time
        return DATABASE_BUSY
    cur: BaseException | None = exc
    for _ in range(8):
        if cur is None:
            return None
        if isinstance(cur, OSError) and cur.errno in _DISK_ERRNOS:
            return DISK_FULL
        if isinstance(cur, sa_exc.DBAPIError):
            return _database_reason(cur)
        cur = cur.__cause__
    return None


def _database_reason(err: sa_exc.DBAPIError) -> str | None:
    code = getattr(err.orig, "sqlite_errorcode", None)
    if isinstance(code, int):
        primary = code & 0xFF  # extended codes carry the primary one in their low byte
        if primary in _SQLITE_BUSY:
            return DATABASE_BUSY
        if primary == _SQLITE_FULL:
            return DISK_FULL
        return DATABASE_DOWN if primary in _SQLITE_DOWN else None
    state = str(getattr(err.orig, "sqlstate", None) or getattr(err.orig, "pgcode", None) or "")
    if state == _PG_DISK_FULL:
        return DISK_FULL
    if state.startswith(_PG_BUSY):
        return DATABASE_BUSY
    if state[:2] in _PG_TRANSIENT or err.connection_invalidated:
        return DATABASE_DOWN
    if isinstance(err, sa_exc.InterfaceError):  # the connection is gone
        return DATABASE_DOWN
    return None


def trigger_rule(config: Config) -> TriggerRule:
    t = config.trigger
    return TriggerRule(
        match=TriggerMode(t.match),
        prefixes=tuple(t.prefixes),
        direct_messages=t.direct_messages,
        reply_to_bot=t.reply_to_bot,
    )


def rate_rule(config: Config) -> RateRule:
    r = config.rate_limits
    return RateRule(burst=r.burst, burst_window_s=r.burst_window, daily=dict(r.daily))


class InboundHandler:
    """The sink every adapter delivers to."""

    def __init__(
        self,
        config: Config,
        db: Database,
        dispatcher: Dispatcher,
        runner: ContainerRunner,
        adapters: Mapping[str, Adapter],
        *,
        budget: BudgetBook | None = None,
    ) -> None:
        self.config = config
        self.budget = budget
        self.db = db
        self.dispatcher = dispatcher
        self.runner = runner
        self.adapters = adapters
        self.rule = trigger_rule(config)
        self.ledger = RateLedger(rate_rule(config))
        self.admins = set(config.permissions.admins)
        self.commands = ChatCommands(config, db, runner, budget=budget)
        # user key -> (lock, how many hold or wait for it): see _one_at_a_time.
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    async def seed_ledger(self) -> None:
        """Rate limits survive restarts: count today's accepted requests from the queue.

        The database picks today's jobs that name a user; only those rows are read.
        """
        since = utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
        self.ledger.seed(await repo.user_jobs_since(self.db, since))

    async def __call__(self, msg: InboundMessage) -> None:
        try:
            await self._handle(msg)
        except Exception as exc:
            reason = unavailable_reason(exc)
            if reason is None:
                # One bad message must not stop the adapter from serving the next.
                log.exception("inbound message failed", platform=msg.platform)
                return
            # Not recorded, so not queued: the adapter tells the sender to try again.
            log.error(
                "inbound message not recorded",
                platform=msg.platform,
                reason=reason,
                error=f"{type(exc).__name__}: {first_line(getattr(exc, 'orig', None) or exc)}",
            )
            raise InboundUnavailable(reason) from exc

    async def _space_for(self, store: Store, msg: InboundMessage) -> str:
        conv = msg.conversation
        space_id = await repo.space_for_conversation(store, conv.platform, conv.chat_id)
        if space_id is None:
            space_id = default_space_id(conv)
            await repo.get_or_create_space(store, space_id, profile=self.config.agent.profile)
            await repo.link_conversation(store, conv.platform, conv.chat_id, space_id)
        return space_id

    async def _handle(self, msg: InboundMessage) -> None:
        now = utcnow()
        key = user_key(msg.platform, msg.author_id)
        # Everything the router needs, read in one transaction: one round of the pool
        # instead of one per read, on every message's path to its reply.
        async with self.db.transaction() as s:
            if await repo.has_message(s, msg.platform, msg.platform_message_id):
                log.info("redelivered event ignored", platform=msg.platform)
                return
            space_id = await self._space_for(s, msg)
            # Read-only when the space exists (every message but a space's first): the
            # transaction then takes no write lock.
            space = await repo.get_space(s, space_id) or await repo.get_or_create_space(s, space_id)
            standing = await standing_in(
                s,
                space_id,
                key,
                self.admins,
                self.config.permissions.default_role,
                operator=msg.from_operator,
            )
            role = standing.role
            prefs = await repo.get_preferences(s, space_id)
            muted = await repo.is_muted(s, space_id, msg.platform, msg.author_id, now=now)
            conv_rec = await repo.get_conversation(s, msg.platform, msg.conversation.chat_id)
        rule = space_rule(self.rule, prefs.get(TRIGGER_PREF))
        # Adapters that know the bot's handle ("@name_bot") let the router strip it.
        handles = self.adapters[msg.platform].bot_handles if msg.platform in self.adapters else ()
        if handles:
            rule = replace(rule, bot_handles=handles)
        ctx = RouteContext(
            rule=rule,
            role=role,
            permissions=standing.permissions,
            rate_rule=self.ledger.rule,
            recent=self.ledger.recent(space_id, key, now),
            used_today=self.ledger.used_today(key, now),
            paused=space.is_paused(now),
            paused_until=space.pause_ends,
            muted=muted,
            budget_notice=await self._over_budget(space_id, key, prefs),
        )
        decision = route(msg, ctx, now)
        log.debug("routed", action=decision.action.value, reason=decision.reason)
        if decision.action is Action.IGNORE:
            return
        conv_id = conv_rec.id if conv_rec else None
        if decision.action is Action.RUN:
            await self._accept_run(msg, decision, space_id, space.profile, conv_id, key, role)
            return
        if decision.action is Action.COMMAND and decision.command is not None:
            # Carried out before the message is stored: when storing fails the sender is
            # told to try again, and a command done twice (pause, stop, a model switch)
            # changes nothing more. Stored the other way round, the retry would be taken
            # for a redelivery and the command never done.
            text = await self.commands.run(decision.command, space_id, key)
            if await self._store(self.db, msg, space_id, conv_id, MessageRole.USER):
                await self._notify(msg, text)
            return
        # Overheard chatter is context by design; a refused message is kept only as a
        # record (a redelivered event stays a duplicate), never as a request in history.
        store_role = (
            MessageRole.AMBIENT if decision.action is Action.AMBIENT else MessageRole.REFUSED
        )
        if (
            await self._store(self.db, msg, space_id, conv_id, store_role)
            and decision.action is Action.REFUSE
            and decision.notice
        ):
            await self._notify(msg, decision.notice)

    async def _over_budget(self, space_id: str, key: str, prefs: Mapping[str, str]) -> str | None:
        """The notice when a spending cap of this space, user or the instance is reached."""
        if self.budget is None:
            return None
        verdict = await self.budget.check(space_id, key, prefs=prefs)
        return None if verdict.allowed else self.budget.notice(verdict)

    async def _accept_run(
        self,
        msg: InboundMessage,
        decision: Decision,
        space_id: str,
        profile: str,
        conv_id: int | None,
        key: str,
        role: str,
    ) -> None:
        """Store the message and queue its job in one transaction, within the rate limit.

        The router checked the limit, but a concurrent message of the same user may have
        taken the last slot since. So, one message of a user at a time: check the ledger,
        store (as a request, or as a refusal) and count the request only once it is
        committed, so that a message that could not be stored uses up no quota for its
        retry.
        """
        attachments: list[str] = []
        if msg.attachments:
            attachments = await self._save_attachments(msg, space_id, profile)
        async with self._one_at_a_time(key):
            now = utcnow()
            verdict = self.ledger.check(space_id, key, role, now)
            async with self.db.transaction() as s:
                stored = await self._store(
                    s,
                    msg,
                    space_id,
                    conv_id,
                    MessageRole.USER if verdict.allowed else MessageRole.REFUSED,
                    attachments,
                )
                if stored is None:
                    return
                if verdict.allowed:
                    payload = JobPayload(
                        platform=msg.platform,
                        chat_id=msg.conversation.chat_id,
                        thread_id=msg.conversation.thread_id,
                        reply_to=msg.platform_message_id,
                        message_id=stored.id,
                        prompt=decision.prompt,
                        author_id=msg.author_id,
                        author_name=msg.author_name,
                        role=role,
                        attachments=tuple(attachments),
                        user_key=key,
                    )
                    await repo.enqueue_job(
                        s, space_id, payload=payload.to_dict(), message_id=stored.id
                    )
            if verdict.allowed:
                self.ledger.record(space_id, key, now)
        if not verdict.allowed:
            log.info("rate limited by a concurrent message", platform=msg.platform)
            await self._notify(msg, verdict.message)
            return
        self.dispatcher.wake()
        if self.runner.disk_low():
            # Accepted and queued, but nothing starts until there is room again.
            await self._notify(msg, DISK_WAIT_NOTICE)

    async def _store(
        self,
        store: Store,
        msg: InboundMessage,
        space_id: str,
        conv_id: int | None,
        role: MessageRole,
        attachments: list[str] | None = None,
    ) -> MessageRecord | None:
        """Store the message; None when it was stored before (a redelivered event)."""
        try:
            return await repo.add_message(
                store,
                space_id=space_id,
                platform=msg.platform,
                role=role,
                text=msg.text,
                platform_message_id=msg.platform_message_id,
                conversation_id=conv_id,
                author_id=msg.author_id,
                author_name=msg.author_name,
                attachments=attachments or [a.name for a in msg.attachments],
                is_bot=msg.from_bot,
                created_at=msg.ts,
            )
        except DuplicateMessage:
            log.info("redelivered event ignored", platform=msg.platform)
            return None

    @contextlib.asynccontextmanager
    async def _one_at_a_time(self, key: str) -> AsyncIterator[None]:
        """Serialise one user's requests from checking the limit to counting the request.

        The lock lives only while someone holds or waits for it: no map of every user."""
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    async def _notify(self, msg: InboundMessage, text: str) -> None:
        adapter = self.adapters.get(msg.platform)
        if adapter is None:
            return
        try:
            await adapter.send(Reply(msg.conversation, text, reply_to=msg.platform_message_id))
        except Exception:
            log.exception("sending a notice failed", platform=msg.platform)

    async def _save_attachments(
        self, msg: InboundMessage, space_id: str, profile: str
    ) -> list[str]:
        """Save the user's files into the space's inbox (size-capped); paths relative to /space.

        Written by the space store: no symlink the agent planted is followed, files are
        created exclusively and handed to the container's uid on the open file.
        """
        adapter = self.adapters.get(msg.platform)
        spaces = self.runner.spaces
        await asyncio.to_thread(spaces.ensure, space_id, profile)
        saved: list[str] = []
        for i, att in enumerate(msg.attachments):
            if adapter is None:
                break
            try:
                data = await adapter.download(att, MAX_ATTACHMENT_BYTES)
                saved.append(
                    await asyncio.to_thread(
                        spaces.save_inbox_file, space_id, _safe_name(att, i), data
                    )
                )
            except Exception as exc:
                log.warning("attachment not saved", name=att.name, error=str(exc))
        return saved


def _safe_name(att: Attachment, index: int) -> str:
    name = Path(att.name or f"file{index}").name
    cleaned = "".join(c if c.isalnum() or c in "._-" else "_" for c in name).lstrip(".")
    return f"{index:02d}-{cleaned or 'file'}"[:120]


__all__ = ["InboundHandler"]
