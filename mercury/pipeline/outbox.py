"""Delivering the reply outbox: every answer reaches its chat once, across crashes.

The executor stores a job's answer (`storage.replies.add_reply`) in the transaction that
records its run; this module sends it and marks it sent in the transaction that finishes
the job. At start, `ReplyOutbox.resume` delivers what a dead process stored but did not
send, and settles what it was sending when it died (see storage/replies.py for why such a
reply is not sent again).

Files travel with a reply: the runner's copies (data_dir/outputs/<run>) are moved to
data_dir/replies/<job> when the reply is stored, because start-up removes every outputs
folder, and removed once the reply is settled.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from mercury.adapters.base import Adapter, RateLimited
from mercury.core.messages import ConversationRef, OutboundFile, Reply
from mercury.logging import first_line, get_logger
from mercury.storage import Database, ReplyStatus, notices, replies
from mercury.storage.notices import NoticeRecord
from mercury.storage.replies import ReplyRecord

log = get_logger("mercury.outbox")

T = TypeVar("T")

# Waits between send attempts when the platform refuses or cannot be reached: about a
# minute in all, then the reply is failed (and the operator sees why in the log).
SEND_RETRY_DELAYS = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
# The longest a platform's retry-after is waited for before the next attempt.
MAX_RETRY_AFTER_S = 120.0
# Waits between attempts of a write that must not be lost (capped, retried forever).
STORE_RETRY_DELAYS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0)
# A files folder with no unfinished reply is removed at start only once it is this old:
# with workers (docs/scale-out.md) a younger one may be a reply another process is storing.
STRAY_FILES_AGE_S = 3600.0

# What the outbox sends: a job's reply (storage.replies) or a worker's notice
# (storage.notices); both modules have the same mark_* functions.
Outgoing = ReplyRecord | NoticeRecord


async def until_stored(op: Callable[[], Awaitable[T]], what: str) -> T:
    """Run a database write until it succeeds (a locked or briefly gone database).

    For bookkeeping that must not be dropped: the record that a reply went out, a job's
    end. Only cancellation (shutdown) stops it; the work it records is then recovered at
    the next start.
    """
    attempt = 0
    while True:
        try:
            return await op()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            delay = STORE_RETRY_DELAYS[min(attempt, len(STORE_RETRY_DELAYS) - 1)]
            attempt += 1
            log.error(
                "a write failed; retrying",
                what=what,
                attempt=attempt,
                retry_in_s=delay,
                error=f"{type(exc).__name__}: {first_line(exc)}",
            )
            await asyncio.sleep(delay)


def replies_root(data_dir: Path) -> Path:
    return data_dir / "replies"


def keep_files(data_dir: Path, outputs: Path, job_id: int) -> Path | None:
    """Move a run's file copies where they wait for delivery; the new folder, or None.

    Idempotent: storing the outcome is retried, and a retry finds the files moved.
    """
    root = replies_root(data_dir)
    target = root / str(job_id)
    if not outputs.is_dir():
        return target if target.is_dir() else None
    root.mkdir(mode=0o700, exist_ok=True)
    if target.exists():
        shutil.rmtree(target, ignore_errors=True)
    os.replace(outputs, target)
    return target


def reply_payload(
    conv: ConversationRef,
    text: str,
    files: list[tuple[Path, str]],
    reply_to: str | None,
) -> dict[str, Any]:
    """What the outbox stores for a reply: enough to send it after a restart."""
    return {
        "platform": conv.platform,
        "chat_id": conv.chat_id,
        "thread_id": conv.thread_id,
        "reply_to": reply_to,
        "text": text,
        "files": [{"path": str(path), "name": name} for path, name in files],
    }


def reply_of(payload: Mapping[str, Any]) -> Reply:
    conv = ConversationRef(
        str(payload["platform"]), str(payload["chat_id"]), payload.get("thread_id")
    )
    files = tuple(
        OutboundFile(path=Path(f["path"]), name=str(f["name"]))
        for f in payload.get("files") or ()
        if Path(f["path"]).is_file()
    )
    return Reply(conv, str(payload.get("text", "")), files, reply_to=payload.get("reply_to"))


class ReplyOutbox:
    """Sends stored replies through the adapters and records each as sent exactly once."""

    def __init__(
        self,
        db: Database,
        adapters: Mapping[str, Adapter],
        data_dir: Path,
        *,
        send_retry_delays: tuple[float, ...] = SEND_RETRY_DELAYS,
    ) -> None:
        self.db = db
        self.adapters = adapters
        self.data_dir = data_dir
        self.send_retry_delays = send_retry_delays
        self._resume_task: asyncio.Task[None] | None = None

    async def deliver(self, reply: Outgoing) -> bool:
        """Send one pending reply (or notice); True once it is out (or was already)."""
        ledger = _ledger(reply)
        adapter = self.adapters.get(str(reply.payload.get("platform")))
        if adapter is None:
            why = f"no adapter for platform {reply.payload.get('platform')!r} is enabled"
            await self._settle(reply, None, why)
            return False
        message = reply_of(reply.payload)
        error = "not sent"
        retry_after = 0.0  # a platform's own word on when to try again (a 429)
        for attempt, delay in enumerate((0.0, *self.send_retry_delays)):
            if attempt:
                delay = max(delay, min(retry_after, MAX_RETRY_AFTER_S))
                retry_after = 0.0
            if delay:
                await asyncio.sleep(delay)
            claimed = await until_stored(
                lambda: ledger.mark_sending(self.db, reply.id), "reply sending mark"
            )
            if not claimed:
                return True  # someone else settled it (it is not pending any more)
            try:
                await adapter.send(message)
            except asyncio.CancelledError:
                # Shutdown mid-send: left `sending`; the next start treats it as out.
                raise
            except Exception as exc:
                if isinstance(exc, RateLimited):
                    retry_after = exc.retry_after
                error = f"{type(exc).__name__}: {first_line(exc)}"
                log.warning(
                    "sending a reply failed",
                    job_id=reply.job_id,
                    platform=message.conversation.platform,
                    attempt=attempt + 1,
                    error=error,
                )
                await until_stored(
                    functools.partial(ledger.back_to_pending, self.db, reply.id, error),
                    "reply retry mark",
                )
                continue
            await self._settle(reply, None, None)
            return True
        await self._settle(reply, None, error)
        return False

    async def settle(self, reply: Outgoing, note: str) -> None:
        """Record `reply` as out without sending it (it may be out already: `note` says
        why it is not sent again)."""
        await self._settle(reply, note, None)

    async def _settle(self, reply: Outgoing, note: str | None, failed: str | None) -> None:
        ledger = _ledger(reply)
        if failed is None:
            await until_stored(
                lambda: ledger.mark_sent(self.db, reply.id, note=note), "reply sent mark"
            )
        else:
            log.error("a reply could not be delivered", job_id=reply.job_id, error=failed)
            await until_stored(
                lambda: ledger.mark_failed(self.db, reply.id, failed), "reply failed mark"
            )
        if reply.job_id is not None:
            await asyncio.to_thread(
                shutil.rmtree, replies_root(self.data_dir) / str(reply.job_id), True
            )

    # ------------------------------------------------------------------ after a restart

    def resume(self) -> None:
        """In the background: settle what a dead process left in the outbox."""
        self._resume_task = asyncio.get_running_loop().create_task(self._resume())

    async def stop(self) -> None:
        if self._resume_task is not None and not self._resume_task.done():
            self._resume_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._resume_task

    async def _resume(self) -> None:
        left: list[Outgoing] = [
            *await until_stored(lambda: replies.unfinished_replies(self.db), "outbox read"),
            *await until_stored(lambda: notices.unfinished_notices(self.db), "notices read"),
        ]
        keep = {str(r.job_id) for r in left}
        root = replies_root(self.data_dir)
        if root.is_dir():
            old = time.time() - STRAY_FILES_AGE_S
            for folder in root.iterdir():
                if folder.name not in keep and _mtime(folder) < old:
                    await asyncio.to_thread(shutil.rmtree, folder, True)
        for reply in sorted(left, key=lambda r: r.created_at):
            if reply.status is ReplyStatus.SENDING:
                # The process died during the platform call: the chat most likely has it.
                log.warning(
                    "a reply was being sent when Mercury stopped; not sending it again",
                    job_id=reply.job_id,
                    platform=reply.payload.get("platform"),
                )
                await self._settle(reply, "unconfirmed: Mercury stopped during the send", None)
                continue
            log.info("delivering a reply stored before the restart", job_id=reply.job_id)
            try:
                await self.deliver(reply)
            except Exception:
                log.exception("delivering a stored reply failed", job_id=reply.job_id)


def _ledger(item: Outgoing) -> ModuleType:
    """The storage module that records `item`'s sending: replies or notices."""
    return notices if isinstance(item, NoticeRecord) else replies


def _mtime(path: Path) -> float:
    try:
        return path.lstat().st_mtime
    except OSError:
        return 0.0
