"""An inbound message: look up its space and author, ask the router, then act on the answer.

The decision itself is `core.router.route` (pure); this module only does the I/O around
it: storage lookups, storing the message, running commands, enqueueing the job.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from mercury.adapters.base import Adapter
from mercury.config import Config
from mercury.core.commands import HELP_TEXT, Command, CommandKind
from mercury.core.messages import Attachment, InboundMessage, Reply
from mercury.core.permissions import permissions_of, role_of, user_key
from mercury.core.ratelimit import RateLedger, RateRule
from mercury.core.router import DISK_WAIT_NOTICE, Action, RouteContext, route, status_text
from mercury.core.spaces import default_space_id
from mercury.core.triggers import TriggerMode, TriggerRule
from mercury.logging import get_logger
from mercury.pipeline.dispatcher import Dispatcher
from mercury.pipeline.runs import MODEL_PREF, JobPayload
from mercury.sandbox.runner import ContainerRunner
from mercury.storage import Database, DuplicateMessage, JobStatus, MessageRole, repo, utcnow

log = get_logger("mercury.inbound")

MAX_ATTACHMENT_BYTES = 25 * 1024**2


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
    ) -> None:
        self.config = config
        self.db = db
        self.dispatcher = dispatcher
        self.runner = runner
        self.adapters = adapters
        self.rule = trigger_rule(config)
        self.ledger = RateLedger(rate_rule(config))
        self.admins = set(config.permissions.admins)

    async def seed_ledger(self) -> None:
        """Rate limits survive restarts: count today's accepted requests from the queue."""
        now = utcnow()
        since = now.replace(hour=0, minute=0, second=0, microsecond=0)
        jobs = await repo.list_jobs(self.db, limit=100_000)
        self.ledger.seed(
            (j.space_id, str(j.payload.get("user_key", "")), j.enqueued_at)
            for j in jobs
            if j.enqueued_at >= since and j.payload.get("user_key")
        )

    async def __call__(self, msg: InboundMessage) -> None:
        try:
            await self._handle(msg)
        except Exception:
            # One bad message must not stop the adapter from serving the next.
            log.exception("inbound message failed", platform=msg.platform)

    async def _space_for(self, msg: InboundMessage) -> str:
        conv = msg.conversation
        space_id = await repo.space_for_conversation(self.db, conv.platform, conv.chat_id)
        if space_id is None:
            space_id = default_space_id(conv)
            await repo.get_or_create_space(self.db, space_id, profile=self.config.agent.profile)
            await repo.link_conversation(self.db, conv.platform, conv.chat_id, space_id)
        return space_id

    async def _handle(self, msg: InboundMessage) -> None:
        now = utcnow()
        if await repo.has_message(self.db, msg.platform, msg.platform_message_id):
            log.info("redelivered event ignored", platform=msg.platform)
            return
        space_id = await self._space_for(msg)
        space = await repo.get_or_create_space(self.db, space_id)
        key = user_key(msg.platform, msg.author_id)
        roles = {
            f"{r.platform}:{r.user_id}": r.role for r in await repo.list_roles(self.db, space_id)
        }
        role = role_of(key, roles, self.admins, self.config.permissions.default_role)
        custom: dict[str, set[str]] = {}
        if role not in ("admin", "member"):
            custom[role] = await repo.role_permissions(self.db, space_id, role)
        paused_until = space.paused_until
        rule = self.rule
        # Adapters that know the bot's handle ("@name_bot") let the router strip it.
        handles = tuple(getattr(self.adapters.get(msg.platform), "bot_handles", ()) or ())
        if handles:
            rule = replace(rule, bot_handles=handles)
        ctx = RouteContext(
            rule=rule,
            role=role,
            permissions=permissions_of(role, custom),
            rate_rule=self.ledger.rule,
            recent=self.ledger.recent(space_id, key, now),
            used_today=self.ledger.used_today(key, now),
            paused=paused_until is not None,
            paused_until=None
            if paused_until is None or paused_until.year >= 9999
            else paused_until,
            muted=await repo.is_muted(self.db, space_id, msg.platform, msg.author_id, now=now),
        )
        decision = route(msg, ctx, now)
        log.debug("routed", action=decision.action.value, reason=decision.reason)
        if decision.action is Action.IGNORE:
            return

        store_role = MessageRole.AMBIENT if decision.store_as == "ambient" else MessageRole.USER
        conv_rec = await repo.get_conversation(self.db, msg.platform, msg.conversation.chat_id)
        attachments: list[str] = []
        if decision.action is Action.RUN and msg.attachments:
            attachments = await self._save_attachments(msg, space_id, space.profile)
        try:
            async with self.db.transaction() as s:
                stored = await repo.add_message(
                    s,
                    space_id=space_id,
                    platform=msg.platform,
                    role=store_role,
                    text=msg.text,
                    platform_message_id=msg.platform_message_id,
                    conversation_id=conv_rec.id if conv_rec else None,
                    author_id=msg.author_id,
                    author_name=msg.author_name,
                    attachments=attachments or [a.name for a in msg.attachments],
                    is_bot=msg.from_bot,
                    created_at=msg.ts,
                )
                if decision.action is Action.RUN:
                    verdict = self.ledger.acquire(space_id, key, role, now)
                    if not verdict.allowed:  # a concurrent message took the last slot
                        decision_notice = verdict.message
                        await self._notify(msg, decision_notice)
                        return
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
                    ).to_dict()
                    payload["user_key"] = key
                    await repo.enqueue_job(s, space_id, payload=payload, message_id=stored.id)
        except DuplicateMessage:
            log.info("redelivered event ignored", platform=msg.platform)
            return
        if decision.action is Action.RUN:
            self.dispatcher.wake()
            if self.runner.disk_low():
                # Accepted and queued, but nothing starts until there is room again.
                await self._notify(msg, DISK_WAIT_NOTICE)
        elif decision.action is Action.REFUSE and decision.notice:
            await self._notify(msg, decision.notice)
        elif decision.action is Action.COMMAND and decision.command is not None:
            text = await self._command(decision.command, space_id, msg)
            await self._notify(msg, text)

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

    async def _command(self, cmd: Command, space_id: str, msg: InboundMessage) -> str:
        kind = cmd.kind
        if kind is CommandKind.STOP:
            cleared = await repo.abort_queued_jobs(self.db, space_id, "stopped by /stop")
            stopped = await self.runner.abort(space_id)
            parts = ["Stopped the running request." if stopped else "Nothing was running."]
            if cleared:
                parts.append(f"Cleared {cleared} waiting message(s).")
            return " ".join(parts)
        if kind is CommandKind.PAUSE:
            until = (
                utcnow() + timedelta(seconds=cmd.duration_s)
                if cmd.duration_s
                else datetime(9999, 1, 1, tzinfo=UTC)  # until /resume; survives restarts
            )
            await repo.pause_space(self.db, space_id, until)
            if cmd.duration_s:
                return f"Paused until {until:%Y-%m-%d %H:%M} UTC. /resume to continue sooner."
            return "Paused. Send /resume to continue."
        if kind is CommandKind.RESUME:
            await repo.pause_space(self.db, space_id, None)
            return "Resumed."
        if kind is CommandKind.HELP:
            return HELP_TEXT
        if kind is CommandKind.CLEAR:
            await repo.reset_context(self.db, space_id)
            return "Cleared: the next message starts a fresh conversation."
        if kind is CommandKind.STATUS:
            space = await repo.get_space(self.db, space_id)
            queued = await repo.list_jobs(self.db, status=JobStatus.QUEUED, space_id=space_id)
            prefs = await repo.get_preferences(self.db, space_id)
            paused_until = space.paused_until if space else None
            return status_text(
                running=space_id in self.runner.active_spaces(),
                queue_length=len(queued),
                model=prefs.get(MODEL_PREF) or self.config.model.chain[0].model,
                paused=paused_until is not None and paused_until > utcnow(),
                paused_until=None
                if paused_until is None or paused_until.year >= 9999
                else paused_until,
                now=utcnow(),
            )
        if kind is CommandKind.MODEL_LIST:
            prefs = await repo.get_preferences(self.db, space_id)
            current = prefs.get(MODEL_PREF) or self.config.model.chain[0].model
            return "Models:\n" + "\n".join(
                f"{i + 1}. {leg.provider}/{leg.model}"
                + (" (current)" if leg.model == current else "")
                for i, leg in enumerate(self.config.model.chain)
            )
        if kind is CommandKind.MODEL_SWITCH:
            chain = self.config.model.chain
            wanted = (cmd.model or "").strip()
            leg = None
            if wanted.isdigit() and 1 <= int(wanted) <= len(chain):
                leg = chain[int(wanted) - 1]
            else:
                leg = next(
                    (x for x in chain if wanted in (x.model, f"{x.provider}/{x.model}")), None
                )
            if leg is None:
                return f"No model {wanted!r} in the chain; /model list shows them."
            await repo.set_preference(self.db, space_id, MODEL_PREF, leg.model)
            return f"This space now uses {leg.provider}/{leg.model} first."
        return HELP_TEXT


def _safe_name(att: Attachment, index: int) -> str:
    name = Path(att.name or f"file{index}").name
    cleaned = "".join(c if c.isalnum() or c in "._-" else "_" for c in name).lstrip(".")
    return f"{index:02d}-{cleaned or 'file'}"[:120]


__all__ = ["InboundHandler"]
