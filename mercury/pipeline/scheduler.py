"""Scheduled tasks: a due task is checked like a message of its creator, then queued.

Every `tick` the scheduler takes the due tasks (a regular slot, or a retry of a failed run)
and for each:

- a slot missed while Mercury was down, of a task with `catch_up: skip`, is skipped
  (outcome "skipped"); with "once" (the default) it runs once, then the schedule goes on;
- the task is checked like a message of the user who created it (task_gate.py, decided
  by core/tasks.py: pause, mute, permission, spending caps, rate limit). A refused task
  records why (outcome "refused") and says so once in its conversation, per streak of
  refusals of one kind; a refused recurring task waits for its next slot, a refused
  one-shot task is disabled;
- else its job is queued (outcome "queued") in the conversation it was created for, else
  the space's most recently linked one, with its creator's role and user key (so the run
  counts against that user's rate limit and daily spending cap).

Interval and cron tasks are rescheduled from the time they ran (a Mercury that was down
does not replay every missed run); a cron expression is matched on the space's clock (its
own time zone, else `scheduler.timezone`; core/when.py). A one-shot task is disabled once
its run is queued.

The run executor tells the scheduler how each task job ended (`TaskHook`, runs.py): a
success is recorded ("ok"; a `silent` task's reply is kept in history, not posted); a
failed run is retried `scheduler.retries.attempts` times, `backoff` apart and doubling,
with nothing posted, and after the last try reported once in the chat. A run stopped by a
spending cap is not retried. Retries do not move the task's regular schedule; a slot that
falls due while a retry waits is that retry.

`run_now` (the dashboard's Run now button, `mercury tasks run`) goes through the same
checks, without moving the schedule; a refusal raises RunNowRefused, for the operator.

Several Mercury processes may tick on one database (scale-out, or a restarted gateway
whose old process still runs). Taking a due run is a claim (storage/tasks.py): the update
that records it, in the transaction that queues the job, applies only while the task is
as this tick read it. The scheduler that loses a claim does nothing more with that task:
no job, no record, no notice; so each slot runs once, a refusal is said once and a retry
is taken once, however many schedulers tick.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Any

from croniter import croniter

from mercury.adapters.base import Adapter
from mercury.config import Config
from mercury.core.messages import ConversationRef, Reply
from mercury.core.permissions import MEMBER_ROLE
from mercury.core.run_reason import RunReason
from mercury.core.tasks import (
    MISSED,
    NO_CONVERSATION,
    Refusal,
    RefusalKind,
    RetryRule,
    after_failure,
    failed_detail,
    failure_report,
    refusal_notice,
    retrying_detail,
    should_announce,
    skips_missed,
    stopped_notice,
)
from mercury.core.when import next_cron_in_zone, space_timezone
from mercury.logging import get_logger
from mercury.pipeline.dispatcher import Dispatcher
from mercury.pipeline.payload import JobPayload
from mercury.pipeline.task_gate import (
    Admission,
    BudgetProbe,
    TaskGate,
    admission,
    task_cost_estimate,
)
from mercury.storage import ConversationRecord, Database, JobRecord, Store, TaskRecord, repo, utcnow
from mercury.storage.tasks import (
    FAILED,
    OK,
    REFUSED,
    SKIPPED,
    due_tasks,
    get_task,
    note_task_outcome,
    pass_task_slot,
    start_task_run,
)

if TYPE_CHECKING:
    from mercury.pipeline.service import Pipeline

log = get_logger("mercury.scheduler")


def next_cron_run(expr: str, after: datetime) -> datetime:
    """The first time after `after` that the 5-field cron `expr` matches (UTC)."""
    return croniter(expr, after).get_next(datetime)


def next_run(task: TaskRecord, now: datetime, zone: tzinfo = UTC) -> datetime | None:
    """The task's next slot after `now` (a cron expression on `zone`'s clock); None for a
    one-shot task."""
    if task.interval_s:
        return now + timedelta(seconds=task.interval_s)
    if task.cron:
        return next_cron_in_zone(task.cron, now, zone)
    return None


def resume_at(task: TaskRecord, now: datetime, zone: tzinfo = UTC) -> datetime | None:
    """When a task runs next if (re)started at `now`: its pending slot while still ahead,
    else its schedule's next; None for a one-time task whose time has passed. Runs missed
    while it was paused are not made up. (The CLI's and the dashboard's resume.)"""
    if task.next_run_at is not None and task.next_run_at > now:
        return task.next_run_at
    following = next_run(task, now, zone)
    if following is not None:
        return following
    if task.run_at is not None and task.run_at > now:
        return task.run_at
    return None


def one_shot(task: TaskRecord) -> bool:
    return task.cron is None and task.interval_s is None


def _taken_elsewhere(task: TaskRecord) -> None:
    """A claim was lost: another scheduler took this due run (or the task changed)."""
    log.debug("due task taken by another scheduler", task_id=task.id)


class RunNowRefused(Exception):
    """A task cannot be run now; the message says why, for the operator."""


# --------------------------------------------------------------------------- queueing


async def answer_conversation(db: Store, task: TaskRecord) -> ConversationRecord | None:
    """Where a task answers: its own conversation, else its space's latest one."""
    if task.conversation_id:
        return await repo.get_conversation_by_id(db, task.conversation_id)
    return await repo.latest_conversation(db, task.space_id)


async def enqueue_task(
    db: Store,
    task: TaskRecord,
    conv: ConversationRecord,
    *,
    role: str = MEMBER_ROLE,
    user_key: str | None = None,
) -> JobRecord:
    """Queue one run of `task` in its space, answering in `conv`, like any message: with its
    creator's role, and user key when known (their rate limit and caps count it)."""
    payload = JobPayload(
        platform=conv.platform,
        chat_id=conv.chat_id,
        thread_id=conv.thread_id,
        reply_to=None,
        message_id=None,
        prompt=task.prompt,
        author_id="scheduler",
        author_name=f"scheduled task {task.id}",
        role=role,
        user_key=user_key,
        task_id=task.id,
    )
    return await repo.enqueue_job(db, task.space_id, payload=payload.to_dict())


async def _queue(
    db: Database,
    task: TaskRecord,
    conv: ConversationRecord,
    entry: Admission,
    now: datetime,
    *,
    next_run_at: datetime | None,
    move: bool,
    claim: bool,
) -> JobRecord | None:
    """Record the run as queued and queue its job, together (no run lost in between).

    With `claim` the record is a claim of the due run `task` was read as: when another
    scheduler took it first, nothing is queued and None is returned. The claim is the
    transaction's first statement, so on SQLite it takes the write lock before anything
    is read (no lock upgrade to fail) and on PostgreSQL it waits for a rival's update."""
    async with db.transaction() as s:
        seen = task if claim else None
        if not await start_task_run(
            s, task.id, ran_at=now, next_run_at=next_run_at, move=move, seen=seen
        ):
            return None
        return await enqueue_task(s, task, conv, role=entry.role, user_key=entry.user_key)


def _run_now_refusal(task: TaskRecord, refusal: Refusal, pause_ends: datetime | None) -> str:
    if refusal.kind is RefusalKind.PAUSED:
        until = f" until {pause_ends:%Y-%m-%d %H:%M} UTC" if pause_ends else " until it is resumed"
        return f"space {task.space_id} is paused{until}; resume it first"
    return f"task {task.id} was not run: {refusal.detail}"


async def run_task_now(
    db: Database, task_id: int, now: datetime | None = None, *, gate: TaskGate | None = None
) -> JobRecord:
    """Queue a task's job now, as if it were due, leaving its schedule as it is.

    Checked like a due task (`admission`; without `gate`: pause, mute and permission with
    the default role settings). Raises RunNowRefused when there is no such task, a check
    refuses it, or the space has no conversation to answer in; a refusal is the operator's
    to read, so nothing is recorded or posted. The caller wakes the dispatcher
    (Scheduler.run_now does).
    """
    now = now or utcnow()
    gate = gate or TaskGate()
    task = await get_task(db, task_id)
    if task is None:
        raise RunNowRefused(f"there is no task {task_id}")
    entry = await admission(db, gate, task, now)
    if entry.refusal is not None:
        space = await repo.get_space(db, task.space_id)
        ends = space.pause_ends if space is not None else None
        raise RunNowRefused(_run_now_refusal(task, entry.refusal, ends))
    conv = await answer_conversation(db, task)
    if conv is None:
        raise RunNowRefused(f"space {task.space_id} has no conversation to answer in")
    job = await _queue(
        db, task, conv, entry, now, next_run_at=task.next_run_at, move=False, claim=False
    )
    if job is None:  # deleted since it was read
        raise RunNowRefused(f"there is no task {task_id}")
    if gate.ledger is not None and entry.user_key is not None:
        gate.ledger.record(task.space_id, entry.user_key, now)
    log.info("task run now", task_id=task.id, space=task.space_id, job=job.id)
    return job


# --------------------------------------------------------------------------- the scheduler


class Scheduler:
    """Takes due tasks every `tick` seconds; told by the executor how their jobs ended."""

    def __init__(
        self,
        db: Database,
        dispatcher: Dispatcher,
        *,
        tick: float,
        gate: TaskGate | None = None,
        adapters: Mapping[str, Adapter] | None = None,
        retries: RetryRule | None = None,
        executor: Any = None,
        timezone: str = "UTC",
        clock: Callable[[], datetime] = utcnow,
        started_at: datetime | None = None,
    ) -> None:
        self.db = db
        self.dispatcher = dispatcher
        self.tick_s = tick
        self.timezone = timezone  # a space's cron clock unless it set its own
        self.gate = gate or TaskGate()
        self.adapters: Mapping[str, Adapter] = adapters or {}
        self.retries = retries or RetryRule()
        self.clock = clock
        # Due times before this are "missed while Mercury was down" (catch_up); set by
        # start() unless given.
        self.started_at = started_at
        self._task: asyncio.Task[None] | None = None
        if executor is not None:
            executor.tasks = self  # the run executor's TaskHook (runs.py)

    @classmethod
    def for_app(cls, config: Config, db: Database, pipeline: Pipeline) -> Scheduler:
        """The running Mercury's scheduler, wired to its pipeline."""
        section = config.scheduler
        return cls(
            db,
            pipeline.dispatcher,
            tick=section.tick,
            gate=TaskGate.for_pipeline(config, pipeline),
            adapters=pipeline.adapters,
            retries=RetryRule(section.retries.attempts, section.retries.backoff),
            executor=pipeline.executor,
            timezone=section.timezone,
        )

    def start(self) -> None:
        if self.started_at is None:
            self.started_at = self.clock()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick(self.clock())
            except Exception:  # a bad task must not stop the others
                log.exception("scheduler tick failed")
            await asyncio.sleep(self.tick_s)

    async def due(self, now: datetime) -> list[TaskRecord]:
        """The tasks due at `now`, as read for this tick (each is then claimed as read)."""
        return await due_tasks(self.db, now)

    async def tick(self, now: datetime) -> int:
        """Take every due task (see the module docstring); returns how many were queued."""
        enqueued = 0
        for task in await self.due(now):
            try:
                enqueued += await self._take(task, now)
            except Exception:  # one task's trouble must not hold the others
                log.exception("a due task could not be taken", task_id=task.id)
        if enqueued:
            self.dispatcher.wake()
        return enqueued

    async def _take(self, task: TaskRecord, now: datetime) -> bool:
        """Skip, refuse or queue one due task; True when its job was queued."""
        slot_due = task.enabled and task.next_run_at is not None and task.next_run_at <= now
        retry_due = task.retry_at is not None and task.retry_at <= now
        times = [t for t, due in ((task.next_run_at, slot_due), (task.retry_at, retry_due)) if due]
        due_at = min(t for t in times if t is not None)
        following = task.next_run_at
        if slot_due:
            try:
                following = next_run(task, now, await self._zone(task))
            except (ValueError, KeyError) as exc:
                log.warning("task has a bad schedule; disabled", task_id=task.id, error=str(exc))
                following = None
        if skips_missed(task.catch_up, due_at, self.started_at):
            if await pass_task_slot(
                self.db,
                task.id,
                SKIPPED,
                MISSED,
                now,
                next_run_at=following,
                move=slot_due,
                seen=task,
            ):
                log.info("task skipped: missed while mercury was down", task_id=task.id)
            else:
                _taken_elsewhere(task)
            return False
        conv = await answer_conversation(self.db, task)
        entry = await admission(self.db, self.gate, task, now)
        refusal = NO_CONVERSATION if conv is None else entry.refusal
        if refusal is not None:
            await self._refused(task, refusal, conv, now, next_run_at=following, move=slot_due)
            return False
        assert conv is not None
        job = await _queue(
            self.db, task, conv, entry, now, next_run_at=following, move=slot_due, claim=True
        )
        if job is None:
            _taken_elsewhere(task)
            return False
        if self.gate.ledger is not None and entry.user_key is not None:
            self.gate.ledger.record(task.space_id, entry.user_key, now)
        log.info(
            "task queued",
            task_id=task.id,
            space=task.space_id,
            job=job.id,
            retry=task.failures or None,
        )
        return True

    async def _zone(self, task: TaskRecord) -> tzinfo:
        """The clock a cron task's expression is matched on: its space's zone."""
        if not task.cron:
            return UTC
        return space_timezone(await repo.get_preferences(self.db, task.space_id), self.timezone)

    async def _refused(
        self,
        task: TaskRecord,
        refusal: Refusal,
        conv: ConversationRecord | None,
        now: datetime,
        *,
        next_run_at: datetime | None,
        move: bool,
    ) -> None:
        """Record a refusal, and say it in the chat once per streak of its kind."""
        told = should_announce(task.last_outcome, task.last_detail, refusal)
        if not await pass_task_slot(
            self.db,
            task.id,
            REFUSED,
            refusal.detail,
            now,
            next_run_at=next_run_at,
            move=move,
            seen=task,
        ):
            _taken_elsewhere(task)
            return
        log.info(
            "task refused",
            task_id=task.id,
            space=task.space_id,
            reason=refusal.detail,
            told=told and conv is not None,
        )
        if told and conv is not None:
            text = refusal_notice(task.id, task.prompt, refusal, one_shot=one_shot(task))
            await self._say(conv, text)

    async def _say(self, conv: ConversationRecord, text: str) -> None:
        adapter = self.adapters.get(conv.platform)
        if adapter is None:
            log.warning("no adapter to tell a task's chat", platform=conv.platform)
            return
        ref = ConversationRef(conv.platform, conv.chat_id, conv.thread_id)
        try:
            await adapter.send(Reply(ref, text))
        except Exception:
            log.exception("telling a task's chat failed", platform=conv.platform)

    async def run_now(self, task_id: int) -> JobRecord:
        """Queue a task's job now (see `run_task_now`) and wake the dispatcher for it."""
        job = await run_task_now(self.db, task_id, self.clock(), gate=self.gate)
        self.dispatcher.wake()
        return job

    # ------------------------------------------------------------------ TaskHook (runs.py)

    async def silent(self, task_id: int) -> bool:
        """Whether a task's run shows nothing while it works (no typing, status, preview)."""
        task = await get_task(self.db, task_id)
        return task is not None and task.silent

    async def ended(
        self, job: JobRecord, task_id: int, reason: RunReason, text: str | None
    ) -> str | None:
        """A task's job ended with `reason` (its answer or notice: `text`): record the
        outcome, plan a retry, and return what to post in the chat (None: nothing)."""
        now = self.clock()
        task = await get_task(self.db, task_id)
        if task is None:
            return text  # deleted while it ran: answer as any job
        if reason is RunReason.OK:
            await note_task_outcome(self.db, task.id, OK, None, now, failures=0)
            return None if task.silent else text
        if reason is RunReason.ABORTED:  # /stop: said already, not retried
            await note_task_outcome(self.db, task.id, FAILED, "stopped with /stop", now, failures=0)
            return text
        if reason is RunReason.BUDGET:
            detail = "spending cap: reached while it ran (not retried)"
            await note_task_outcome(self.db, task.id, REFUSED, detail, now, failures=0)
            log.info("task run stopped by a spending cap", task_id=task.id, job=job.id)
            return stopped_notice(task.id, task.prompt, text)
        # A paused recurring task is not retried (set_task_enabled dropped its retry).
        may_retry = task.enabled or one_shot(task)
        step = after_failure(self.retries if may_retry else RetryRule(0), task.failures, now)
        if not step.final:
            detail = retrying_detail(reason.value, step, self.retries, now)
            await note_task_outcome(
                self.db,
                task.id,
                FAILED,
                detail,
                now,
                failures=step.failures,
                retry_at=step.retry_at,
            )
            log.info(
                "task run failed; retrying", task_id=task.id, job=job.id, retry_at=step.retry_at
            )
            return None
        detail = failed_detail(reason.value, step.failures)
        await note_task_outcome(self.db, task.id, FAILED, detail, now, failures=0)
        log.warning("task failed after its tries", task_id=task.id, job=job.id, tries=step.failures)
        return failure_report(task.id, task.prompt, text, step.failures)


__all__ = [
    "Admission",
    "BudgetProbe",
    "RunNowRefused",
    "Scheduler",
    "TaskGate",
    "admission",
    "answer_conversation",
    "enqueue_task",
    "next_cron_run",
    "next_run",
    "one_shot",
    "run_task_now",
    "task_cost_estimate",
]
