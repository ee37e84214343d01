"""Typed repository functions: the only way the rest of Mercury reads or writes the database.

Every function takes a `Store` first: either a `Database`, and then it runs in its own
transaction, or an `AsyncSession` the caller opened with `db.transaction()`, so that several
calls commit together (e.g. store a message and enqueue its job atomically)::

    async with db.transaction() as s:
        msg = await add_message(s, ...)
        await enqueue_job(s, msg.space_id, message_id=msg.id, payload=...)

Results are small frozen dataclasses, safe to hand to code that never saw a session.
Writes that may race (redelivered events, counters) use INSERT ... ON CONFLICT, which
SQLite (3.35+) and PostgreSQL both speak, rather than catching IntegrityError.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, fields
from datetime import date, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from mercury.storage.db import Database
from mercury.storage.errors import DuplicateMessage, NotFound
from mercury.storage.models import (
    FINAL_JOB_STATUSES,
    Base,
    Conversation,
    ExtensionState,
    Job,
    JobStatus,
    Message,
    MessageRole,
    Mute,
    Preference,
    Reply,
    Role,
    RolePermission,
    Run,
    RunReason,
    Space,
    Task,
    Usage,
    utcnow,
)

Store = Database | AsyncSession
R = TypeVar("R")

# A job whose process died this many times is failed instead of requeued: a message that
# crashes the host must not crash it forever.
DEFAULT_MAX_ATTEMPTS = 2


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class SpaceRecord:
    id: str
    name: str
    profile: str
    created_at: datetime
    paused_until: datetime | None
    context_reset_at: datetime | None


@dataclass(frozen=True, slots=True)
class ConversationRecord:
    id: int
    space_id: str
    platform: str
    chat_id: str
    thread_id: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class MessageRecord:
    id: int
    space_id: str
    conversation_id: int | None
    platform: str
    platform_message_id: str | None
    role: MessageRole
    author_id: str | None
    author_name: str | None
    text: str
    attachments: list[Any]
    is_bot: bool
    created_at: datetime


@dataclass(frozen=True, slots=True)
class JobRecord:
    id: int
    space_id: str
    message_id: int | None
    status: JobStatus
    attempts: int
    priority: int
    enqueued_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    owner: str | None
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class StaleJobs:
    """What start-up recovery did with the running jobs of a dead process."""

    requeued: list[JobRecord] = field(default_factory=list)
    failed: list[JobRecord] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class RunRecord:
    id: int
    job_id: int | None
    space_id: str
    reason: RunReason
    exit_code: int | None
    duration_ms: int | None
    image: str | None
    container_name: str | None
    input_tokens: int
    output_tokens: int
    cost_usd: float | None
    model: str | None
    error: str | None
    started_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class RoleRecord:
    space_id: str
    platform: str
    user_id: str
    role: str


@dataclass(frozen=True, slots=True)
class MuteRecord:
    space_id: str
    platform: str
    user_id: str
    until: datetime | None
    reason: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class TaskRecord:
    id: int
    space_id: str
    conversation_id: int | None
    prompt: str
    cron: str | None
    interval_s: int | None
    run_at: datetime | None
    created_by: str | None
    enabled: bool
    next_run_at: datetime | None
    last_run_at: datetime | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class UsageRecord:
    space_id: str
    day: date
    model: str
    input_tokens: int
    output_tokens: int
    cost_usd: float
    runs: int


def _rec(cls: type[R], obj: Any) -> R:
    """Build a record from an ORM object or a result Row (both have attribute access)."""
    return cls(**{f.name: getattr(obj, f.name) for f in fields(cls)})  # type: ignore[arg-type]


# --------------------------------------------------------------------------- plumbing


@asynccontextmanager
async def _tx(store: Store) -> AsyncIterator[AsyncSession]:
    if isinstance(store, AsyncSession):
        # The caller owns the transaction and commits it.
        yield store
    else:
        async with store.transaction() as session:
            yield session


def _insert(session: AsyncSession, model: type[Base]) -> Any:
    """A dialect-specific INSERT, the kind that has on_conflict_do_nothing/do_update."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(model)
    return sqlite.insert(model)


async def _upsert(
    session: AsyncSession,
    model: type[Base],
    values: dict[str, Any],
    key: list[str],
    set_: dict[str, Any],
) -> None:
    stmt = _insert(session, model).values(**values)
    stmt = stmt.on_conflict_do_update(index_elements=key, set_=set_)
    await session.execute(stmt)


def _columns(model: type[Base]) -> list[Any]:
    return list(model.__table__.columns)  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- spaces


async def get_or_create_space(
    store: Store, space_id: str, *, name: str | None = None, profile: str = "general"
) -> SpaceRecord:
    """The space with this id, created (with `name`, default the id) if it does not exist."""
    async with _tx(store) as s:
        stmt = _insert(s, Space).values(
            id=space_id, name=name or space_id, profile=profile, created_at=utcnow()
        )
        await s.execute(stmt.on_conflict_do_nothing(index_elements=["id"]))
        space = await s.get(Space, space_id, populate_existing=True)
        assert space is not None  # inserted or already there, inside this transaction
        return _rec(SpaceRecord, space)


async def get_space(store: Store, space_id: str) -> SpaceRecord | None:
    """The space, or None."""
    async with _tx(store) as s:
        space = await s.get(Space, space_id, populate_existing=True)
        return None if space is None else _rec(SpaceRecord, space)


async def list_spaces(store: Store) -> list[SpaceRecord]:
    """Every space, by id."""
    async with _tx(store) as s:
        rows = await s.scalars(select(Space).order_by(Space.id))
        return [_rec(SpaceRecord, r) for r in rows]


async def _update_space(store: Store, space_id: str, **values: Any) -> SpaceRecord:
    async with _tx(store) as s:
        space = await s.get(Space, space_id, populate_existing=True)
        if space is None:
            raise NotFound(f"space {space_id!r} does not exist")
        for k, v in values.items():
            setattr(space, k, v)
        await s.flush()
        return _rec(SpaceRecord, space)


async def set_space_profile(store: Store, space_id: str, profile: str) -> SpaceRecord:
    """Switch the agent profile a space runs with."""
    return await _update_space(store, space_id, profile=profile)


async def pause_space(store: Store, space_id: str, until: datetime | None) -> SpaceRecord:
    """Pause a space until `until`; None resumes it."""
    return await _update_space(store, space_id, paused_until=until)


async def reset_context(store: Store, space_id: str, at: datetime | None = None) -> SpaceRecord:
    """Hide the history before `at` (default now) from the agent (/reset)."""
    return await _update_space(store, space_id, context_reset_at=at or utcnow())


# --------------------------------------------------------------------------- conversations


async def link_conversation(
    store: Store, platform: str, chat_id: str, space_id: str, *, thread_id: str | None = None
) -> ConversationRecord:
    """Route a platform chat to a space (re-linking it if it pointed elsewhere)."""
    async with _tx(store) as s:
        stmt = _insert(s, Conversation).values(
            platform=platform,
            chat_id=chat_id,
            space_id=space_id,
            thread_id=thread_id,
            created_at=utcnow(),
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["platform", "chat_id"],
            set_={"space_id": space_id, "thread_id": thread_id},
        ).returning(*_columns(Conversation))
        row = (await s.execute(stmt)).one()
        return _rec(ConversationRecord, row)


async def get_conversation(store: Store, platform: str, chat_id: str) -> ConversationRecord | None:
    """The link for this platform chat, or None."""
    async with _tx(store) as s:
        conv = await s.scalar(
            select(Conversation).where(
                Conversation.platform == platform, Conversation.chat_id == chat_id
            )
        )
        return None if conv is None else _rec(ConversationRecord, conv)


async def space_for_conversation(store: Store, platform: str, chat_id: str) -> str | None:
    """The id of the space that answers this platform chat, or None if it is not linked."""
    conv = await get_conversation(store, platform, chat_id)
    return None if conv is None else conv.space_id


async def latest_conversation(store: Store, space_id: str) -> ConversationRecord | None:
    """The conversation most recently linked to a space (where its scheduled runs answer)."""
    async with _tx(store) as s:
        row = await s.scalar(
            select(Conversation)
            .where(Conversation.space_id == space_id)
            .order_by(Conversation.created_at.desc(), Conversation.id.desc())
            .limit(1)
        )
        return None if row is None else _rec(ConversationRecord, row)


async def get_conversation_by_id(store: Store, conversation_id: int) -> ConversationRecord | None:
    async with _tx(store) as s:
        row = await s.get(Conversation, conversation_id)
        return None if row is None else _rec(ConversationRecord, row)


async def unlink_conversation(store: Store, platform: str, chat_id: str) -> bool:
    """Forget a chat's link; True if there was one."""
    async with _tx(store) as s:
        result = await s.execute(
            delete(Conversation).where(
                Conversation.platform == platform, Conversation.chat_id == chat_id
            )
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- messages


async def add_message(
    store: Store,
    *,
    space_id: str,
    platform: str,
    role: MessageRole,
    text: str,
    platform_message_id: str | None = None,
    conversation_id: int | None = None,
    author_id: str | None = None,
    author_name: str | None = None,
    attachments: list[Any] | None = None,
    is_bot: bool = False,
    created_at: datetime | None = None,
) -> MessageRecord:
    """Store a message. Raises DuplicateMessage if this platform message id is already stored."""
    values = {
        "space_id": space_id,
        "platform": platform,
        "platform_message_id": platform_message_id,
        "conversation_id": conversation_id,
        "role": MessageRole(role),
        "author_id": author_id,
        "author_name": author_name,
        "text": text,
        "attachments": attachments or [],
        "is_bot": is_bot,
        "created_at": created_at or utcnow(),
    }
    async with _tx(store) as s:
        stmt = _insert(s, Message).values(**values)
        if platform_message_id is not None:
            # Must name the partial unique index exactly, WHERE clause included.
            stmt = stmt.on_conflict_do_nothing(
                index_elements=["platform", "platform_message_id"],
                index_where=Message.platform_message_id.is_not(None),
            )
        row = (await s.execute(stmt.returning(*_columns(Message)))).one_or_none()
        if row is None:
            assert platform_message_id is not None
            raise DuplicateMessage(platform, platform_message_id)
        return _rec(MessageRecord, row)


async def has_message(store: Store, platform: str, platform_message_id: str) -> bool:
    """True if this platform message id is already stored."""
    async with _tx(store) as s:
        found = await s.scalar(
            select(Message.id).where(
                Message.platform == platform, Message.platform_message_id == platform_message_id
            )
        )
        return found is not None


async def recent_messages(
    store: Store,
    space_id: str,
    limit: int = 50,
    since: datetime | None = None,
    *,
    include_before_reset: bool = False,
    roles: Collection[MessageRole] | None = None,
    answering: int | None = None,
) -> list[MessageRecord]:
    """The last `limit` messages of a space, oldest first, newer than `since`.

    Messages from before the space's last /reset are left out unless include_before_reset.
    `roles`: only messages with one of these roles (a run's history names the roles it
    takes, so a refused message, or any role added later, stays out unless asked for).
    `answering`: the history of the run that answers message id `answering` ends there:
    any later message is left out, except the bot's own replies. Ids grow in arrival
    order, and a space's jobs run one at a time in FIFO order, so every reply that exists
    when the run starts answers an earlier message; anything else newer is the future.
    The filters are in the query, not applied afterwards, so that `limit` counts only
    messages that are kept (a flood of refused messages cannot push the real ones out).
    """
    async with _tx(store) as s:
        cutoff = since
        if not include_before_reset:
            reset_at = await s.scalar(select(Space.context_reset_at).where(Space.id == space_id))
            if reset_at is not None and (cutoff is None or reset_at > cutoff):
                cutoff = reset_at
        q = select(Message).where(Message.space_id == space_id)
        if roles is not None:
            q = q.where(Message.role.in_(list(roles)))
        if answering is not None:
            q = q.where((Message.id <= answering) | (Message.role == MessageRole.ASSISTANT))
        if cutoff is not None:
            q = q.where(Message.created_at >= cutoff)
        q = q.order_by(Message.created_at.desc(), Message.id.desc()).limit(limit)
        rows = list(await s.scalars(q))
        return [_rec(MessageRecord, m) for m in reversed(rows)]


# --------------------------------------------------------------------------- jobs


async def enqueue_job(
    store: Store,
    space_id: str,
    *,
    payload: dict[str, Any] | None = None,
    message_id: int | None = None,
    priority: int = 0,
) -> JobRecord:
    """Append a job to the space's queue."""
    async with _tx(store) as s:
        job = Job(
            space_id=space_id,
            message_id=message_id,
            status=JobStatus.QUEUED,
            attempts=0,
            priority=priority,
            enqueued_at=utcnow(),
            payload=payload or {},
        )
        s.add(job)
        await s.flush()
        return _rec(JobRecord, job)


async def get_job(store: Store, job_id: int) -> JobRecord | None:
    """The job, or None."""
    async with _tx(store) as s:
        job = await s.get(Job, job_id, populate_existing=True)
        return None if job is None else _rec(JobRecord, job)


async def list_jobs(
    store: Store,
    *,
    status: JobStatus | Iterable[JobStatus] | None = None,
    space_id: str | None = None,
    limit: int = 100,
) -> list[JobRecord]:
    """Jobs in id (FIFO) order, optionally by status(es) and space."""
    q = select(Job)
    if status is not None:
        statuses = [status] if isinstance(status, JobStatus) else list(status)
        q = q.where(Job.status.in_(statuses))
    if space_id is not None:
        q = q.where(Job.space_id == space_id)
    async with _tx(store) as s:
        rows = await s.scalars(q.order_by(Job.id).limit(limit))
        return [_rec(JobRecord, j) for j in rows]


async def claim_next_jobs(
    store: Store,
    *,
    owner: str,
    max_total: int,
    busy_spaces: Collection[str] = (),
    now: datetime | None = None,
) -> list[JobRecord]:
    """Mark up to `max_total` queued jobs running for `owner` and return them.

    Per space only the oldest queued job is eligible (FIFO), and only if the space has no
    running job and is not in `busy_spaces`: one job at a time per space. Across spaces,
    higher priority first, then the oldest. A unique partial index backs the one-running
    rule, so this assumes one dispatcher per database (which is how Mercury runs).
    """
    if max_total <= 0:
        return []
    now = now or utcnow()
    running_spaces = select(Job.space_id).where(Job.status == JobStatus.RUNNING)
    heads = select(Job.space_id, func.min(Job.id).label("head_id")).where(
        Job.status == JobStatus.QUEUED, Job.space_id.not_in(running_spaces)
    )
    if busy_spaces:
        heads = heads.where(Job.space_id.not_in(list(busy_spaces)))
    head_ids = heads.group_by(Job.space_id).subquery()
    pick = (
        select(Job.id)
        .join(head_ids, Job.id == head_ids.c.head_id)
        .order_by(Job.priority.desc(), Job.id)
        .limit(max_total)
    )
    claimed: list[JobRecord] = []
    async with _tx(store) as s:
        for job_id in list(await s.scalars(pick)):
            stmt = (
                update(Job)
                .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
                .values(
                    status=JobStatus.RUNNING,
                    owner=owner,
                    started_at=now,
                    finished_at=None,
                    attempts=Job.attempts + 1,
                )
                .returning(*_columns(Job))
            )
            row = (await s.execute(stmt)).one_or_none()
            if row is not None:
                claimed.append(_rec(JobRecord, row))
    return claimed


async def finish_job(
    store: Store, job_id: int, status: JobStatus, error: str | None = None
) -> bool:
    """Move a queued or running job to done/failed/aborted. False if it was already final."""
    status = JobStatus(status)
    if status not in FINAL_JOB_STATUSES:
        raise ValueError(f"finish_job needs a final status, not {status.value!r}")
    async with _tx(store) as s:
        result = await s.execute(
            update(Job)
            .where(Job.id == job_id, Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))
            .values(status=status, error=error, finished_at=utcnow())
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]


async def requeue_job(store: Store, job_id: int, *, not_started: bool = False) -> bool:
    """Put a running job back in the queue at its place (shutdown cut its run short).

    `not_started`: the job was claimed but never run (held back, e.g. low disk), so its
    claim does not count as an attempt.
    """
    values: dict[str, Any] = {
        "status": JobStatus.QUEUED,
        "owner": None,
        "started_at": None,
        "finished_at": None,
    }
    if not_started:
        values["attempts"] = Job.attempts - 1
    async with _tx(store) as s:
        result = await s.execute(
            update(Job)
            .where(
                Job.id == job_id,
                Job.status.in_([JobStatus.RUNNING, JobStatus.ABORTED]),
                # Its answer is in the outbox: it is delivered, never run again.
                Job.id.not_in(select(Reply.job_id)),
            )
            .values(**values)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]


async def abort_queued_jobs(store: Store, space_id: str, error: str = "aborted") -> int:
    """Abort every job still waiting in a space's queue (/stop); returns how many."""
    async with _tx(store) as s:
        result = await s.execute(
            update(Job)
            .where(Job.space_id == space_id, Job.status == JobStatus.QUEUED)
            .values(status=JobStatus.ABORTED, error=error, finished_at=utcnow())
        )
        return int(result.rowcount)  # type: ignore[attr-defined]


async def requeue_or_fail_stale_running(
    store: Store, owner: str, *, max_attempts: int = DEFAULT_MAX_ATTEMPTS
) -> StaleJobs:
    """Recover the `running` jobs not owned by `owner` (this process): their process died.

    A job started fewer than `max_attempts` times goes back to the queue, keeping its place;
    otherwise it is failed. Callers tell the chat about both, so nothing is silently lost.
    """
    now = utcnow()
    stale_filter: ColumnElement[bool] = (
        (Job.status == JobStatus.RUNNING)
        & (Job.owner.is_(None) | (Job.owner != owner))
        # A job whose answer is in the outbox is never run again: the outbox delivers it.
        & Job.id.not_in(select(Reply.job_id))
    )
    async with _tx(store) as s:
        requeued = (
            await s.execute(
                update(Job)
                .where(stale_filter, Job.attempts < max_attempts)
                .values(status=JobStatus.QUEUED, owner=None, started_at=None)
                .returning(*_columns(Job))
            )
        ).all()
        failed = (
            await s.execute(
                update(Job)
                .where(stale_filter, Job.attempts >= max_attempts)
                .values(
                    status=JobStatus.FAILED,
                    finished_at=now,
                    error=(
                        "the Mercury process running this job stopped "
                        f"{max_attempts} times; giving up"
                    ),
                )
                .returning(*_columns(Job))
            )
        ).all()
    return StaleJobs(
        requeued=sorted((_rec(JobRecord, r) for r in requeued), key=lambda j: j.id),
        failed=sorted((_rec(JobRecord, r) for r in failed), key=lambda j: j.id),
    )


# --------------------------------------------------------------------------- runs and usage


async def record_run(
    store: Store,
    *,
    space_id: str,
    reason: RunReason,
    job_id: int | None = None,
    exit_code: int | None = None,
    duration_ms: int | None = None,
    image: str | None = None,
    container_name: str | None = None,
    input_tokens: int = 0,
    output_tokens: int = 0,
    cost_usd: float | None = None,
    model: str | None = None,
    error: str | None = None,
    started_at: datetime | None = None,
    finished_at: datetime | None = None,
) -> RunRecord:
    """Store the outcome of one container execution."""
    async with _tx(store) as s:
        run = Run(
            space_id=space_id,
            reason=RunReason(reason),
            job_id=job_id,
            exit_code=exit_code,
            duration_ms=duration_ms,
            image=image,
            container_name=container_name,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost_usd=cost_usd,
            model=model,
            error=error,
            started_at=started_at or utcnow(),
            finished_at=finished_at,
        )
        s.add(run)
        await s.flush()
        return _rec(RunRecord, run)


async def list_runs(
    store: Store, *, space_id: str | None = None, limit: int = 50
) -> list[RunRecord]:
    """The most recent runs, newest first."""
    q = select(Run)
    if space_id is not None:
        q = q.where(Run.space_id == space_id)
    async with _tx(store) as s:
        rows = await s.scalars(q.order_by(Run.started_at.desc(), Run.id.desc()).limit(limit))
        return [_rec(RunRecord, r) for r in rows]


async def add_usage(
    store: Store,
    space_id: str,
    *,
    model: str,
    input_tokens: int = 0,
    output_tokens: int = 0,
    cost_usd: float = 0.0,
    runs: int = 1,
    day: date | None = None,
) -> None:
    """Add to the (space, UTC day, model) counters, creating the row on first use."""
    day = day or utcnow().date()
    async with _tx(store) as s:
        stmt = _insert(s, Usage).values(
            space_id=space_id,
            day=day,
            model=model,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost_usd=cost_usd,
            runs=runs,
        )
        # Adding in SQL, not read-modify-write, so concurrent runs cannot lose an update.
        stmt = stmt.on_conflict_do_update(
            index_elements=["space_id", "day", "model"],
            set_={
                "input_tokens": Usage.input_tokens + stmt.excluded.input_tokens,
                "output_tokens": Usage.output_tokens + stmt.excluded.output_tokens,
                "cost_usd": Usage.cost_usd + stmt.excluded.cost_usd,
                "runs": Usage.runs + stmt.excluded.runs,
            },
        )
        await s.execute(stmt)


async def usage_for_space(
    store: Store, space_id: str, *, since: date | None = None
) -> list[UsageRecord]:
    """Usage rows of a space by day then model, from `since` (inclusive) on."""
    q = select(Usage).where(Usage.space_id == space_id)
    if since is not None:
        q = q.where(Usage.day >= since)
    async with _tx(store) as s:
        rows = await s.scalars(q.order_by(Usage.day, Usage.model))
        return [_rec(UsageRecord, u) for u in rows]


# --------------------------------------------------------------------------- roles


async def set_role(store: Store, space_id: str, platform: str, user_id: str, role: str) -> None:
    """Give a user a role in a space (replacing any previous one)."""
    now = utcnow()
    async with _tx(store) as s:
        await _upsert(
            s,
            Role,
            {
                "space_id": space_id,
                "platform": platform,
                "user_id": user_id,
                "role": role,
                "updated_at": now,
            },
            ["space_id", "platform", "user_id"],
            {"role": role, "updated_at": now},
        )


async def get_role(store: Store, space_id: str, platform: str, user_id: str) -> str | None:
    """The user's stored role in the space, or None (the caller applies the default)."""
    async with _tx(store) as s:
        return await s.scalar(
            select(Role.role).where(
                Role.space_id == space_id, Role.platform == platform, Role.user_id == user_id
            )
        )


async def remove_role(store: Store, space_id: str, platform: str, user_id: str) -> bool:
    """Drop the user's stored role; True if there was one."""
    async with _tx(store) as s:
        result = await s.execute(
            delete(Role).where(
                Role.space_id == space_id, Role.platform == platform, Role.user_id == user_id
            )
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]


async def list_roles(store: Store, space_id: str) -> list[RoleRecord]:
    """Every stored role in a space."""
    async with _tx(store) as s:
        rows = await s.scalars(
            select(Role).where(Role.space_id == space_id).order_by(Role.platform, Role.user_id)
        )
        return [_rec(RoleRecord, r) for r in rows]


async def grant_permission(store: Store, space_id: str, role: str, permission: str) -> None:
    """Add a permission to a custom role in a space (idempotent)."""
    async with _tx(store) as s:
        stmt = _insert(s, RolePermission).values(
            space_id=space_id, role=role, permission=permission
        )
        await s.execute(stmt.on_conflict_do_nothing())


async def revoke_permission(store: Store, space_id: str, role: str, permission: str) -> bool:
    """Remove a permission from a custom role; True if it had it."""
    async with _tx(store) as s:
        result = await s.execute(
            delete(RolePermission).where(
                RolePermission.space_id == space_id,
                RolePermission.role == role,
                RolePermission.permission == permission,
            )
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]


async def role_permissions(store: Store, space_id: str, role: str) -> set[str]:
    """The permissions of a custom role in a space."""
    async with _tx(store) as s:
        rows = await s.scalars(
            select(RolePermission.permission).where(
                RolePermission.space_id == space_id, RolePermission.role == role
            )
        )
        return set(rows)


# --------------------------------------------------------------------------- mutes


async def mute(
    store: Store,
    space_id: str,
    platform: str,
    user_id: str,
    *,
    until: datetime | None = None,
    reason: str | None = None,
) -> None:
    """Ignore a user in a space until `until` (None: until unmuted)."""
    async with _tx(store) as s:
        await _upsert(
            s,
            Mute,
            {
                "space_id": space_id,
                "platform": platform,
                "user_id": user_id,
                "until": until,
                "reason": reason,
                "created_at": utcnow(),
            },
            ["space_id", "platform", "user_id"],
            {"until": until, "reason": reason},
        )


async def unmute(store: Store, space_id: str, platform: str, user_id: str) -> bool:
    """Lift a mute; True if there was one."""
    async with _tx(store) as s:
        result = await s.execute(
            delete(Mute).where(
                Mute.space_id == space_id, Mute.platform == platform, Mute.user_id == user_id
            )
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]


def _active_mute(now: datetime) -> ColumnElement[bool]:
    return Mute.until.is_(None) | (Mute.until > now)


async def is_muted(
    store: Store, space_id: str, platform: str, user_id: str, *, now: datetime | None = None
) -> bool:
    """True if the user is muted in the space at `now` (an expired mute does not count)."""
    async with _tx(store) as s:
        found = await s.scalar(
            select(Mute.user_id).where(
                Mute.space_id == space_id,
                Mute.platform == platform,
                Mute.user_id == user_id,
                _active_mute(now or utcnow()),
            )
        )
        return found is not None


async def list_mutes(
    store: Store, space_id: str, *, now: datetime | None = None
) -> list[MuteRecord]:
    """The mutes in force in a space."""
    async with _tx(store) as s:
        rows = await s.scalars(
            select(Mute)
            .where(Mute.space_id == space_id, _active_mute(now or utcnow()))
            .order_by(Mute.platform, Mute.user_id)
        )
        return [_rec(MuteRecord, m) for m in rows]


# --------------------------------------------------------------------------- preferences


async def get_preferences(store: Store, space_id: str) -> dict[str, str]:
    """All preferences of a space as {key: value}."""
    async with _tx(store) as s:
        rows = await s.execute(
            select(Preference.key, Preference.value)
            .where(Preference.space_id == space_id)
            .order_by(Preference.key)
        )
        return {k: v for k, v in rows}


async def set_preference(store: Store, space_id: str, key: str, value: str) -> None:
    """Set one preference of a space."""
    now = utcnow()
    async with _tx(store) as s:
        await _upsert(
            s,
            Preference,
            {"space_id": space_id, "key": key, "value": value, "updated_at": now},
            ["space_id", "key"],
            {"value": value, "updated_at": now},
        )


async def delete_preference(store: Store, space_id: str, key: str) -> bool:
    """Remove one preference; True if it was set."""
    async with _tx(store) as s:
        result = await s.execute(
            delete(Preference).where(Preference.space_id == space_id, Preference.key == key)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- tasks


async def add_task(
    store: Store,
    space_id: str,
    prompt: str,
    *,
    cron: str | None = None,
    interval_s: int | None = None,
    run_at: datetime | None = None,
    next_run_at: datetime | None = None,
    created_by: str | None = None,
    conversation_id: int | None = None,
) -> TaskRecord:
    """Schedule a prompt by exactly one of cron, interval_s or run_at.

    `next_run_at` defaults to run_at, or now + interval_s; a cron task needs the scheduler
    (which parses cron) to pass it, since storage does not interpret cron expressions.
    """
    if sum(x is not None for x in (cron, interval_s, run_at)) != 1:
        raise ValueError("a task needs exactly one of cron, interval_s or run_at")
    if interval_s is not None and interval_s <= 0:
        raise ValueError("interval_s must be positive")
    now = utcnow()
    if next_run_at is None:
        if run_at is not None:
            next_run_at = run_at
        elif interval_s is not None:
            next_run_at = now + timedelta(seconds=interval_s)
    async with _tx(store) as s:
        task = Task(
            space_id=space_id,
            conversation_id=conversation_id,
            prompt=prompt,
            cron=cron,
            interval_s=interval_s,
            run_at=run_at,
            created_by=created_by,
            enabled=True,
            next_run_at=next_run_at,
            last_run_at=None,
            created_at=now,
        )
        s.add(task)
        await s.flush()
        return _rec(TaskRecord, task)


async def list_tasks(
    store: Store, space_id: str | None = None, *, enabled_only: bool = False
) -> list[TaskRecord]:
    """Tasks by id, of one space or all."""
    q = select(Task)
    if space_id is not None:
        q = q.where(Task.space_id == space_id)
    if enabled_only:
        q = q.where(Task.enabled.is_(True))
    async with _tx(store) as s:
        rows = await s.scalars(q.order_by(Task.id))
        return [_rec(TaskRecord, t) for t in rows]


async def cancel_task(store: Store, task_id: int, *, space_id: str | None = None) -> bool:
    """Delete a task; with `space_id`, only if it belongs to that space. True if deleted."""
    q = delete(Task).where(Task.id == task_id)
    if space_id is not None:
        q = q.where(Task.space_id == space_id)
    async with _tx(store) as s:
        result = await s.execute(q)
        return bool(result.rowcount)  # type: ignore[attr-defined]


async def due_tasks(store: Store, now: datetime | None = None) -> list[TaskRecord]:
    """Enabled tasks whose next run is at or before `now`, soonest first."""
    async with _tx(store) as s:
        rows = await s.scalars(
            select(Task)
            .where(Task.enabled.is_(True), Task.next_run_at <= (now or utcnow()))
            .order_by(Task.next_run_at, Task.id)
        )
        return [_rec(TaskRecord, t) for t in rows]


async def mark_task_ran(
    store: Store, task_id: int, *, ran_at: datetime, next_run_at: datetime | None
) -> None:
    """Record a run of a task; next_run_at None (a one-shot that ran) disables it."""
    async with _tx(store) as s:
        await s.execute(
            update(Task)
            .where(Task.id == task_id)
            .values(last_run_at=ran_at, next_run_at=next_run_at, enabled=next_run_at is not None)
        )


# --------------------------------------------------------------------------- extension state


async def get_extension_state(store: Store, extension: str, key: str, default: Any = None) -> Any:
    """The JSON value an extension stored under `key`, or `default`."""
    async with _tx(store) as s:
        row = await s.get(ExtensionState, (extension, key), populate_existing=True)
        return default if row is None else row.value


async def set_extension_state(store: Store, extension: str, key: str, value: Any) -> None:
    """Store a JSON-serialisable value for an extension under `key`."""
    now = utcnow()
    async with _tx(store) as s:
        await _upsert(
            s,
            ExtensionState,
            {"extension": extension, "key": key, "value": value, "updated_at": now},
            ["extension", "key"],
            {"value": value, "updated_at": now},
        )


async def delete_extension_state(store: Store, extension: str, key: str) -> bool:
    """Remove a stored extension value; True if it existed."""
    async with _tx(store) as s:
        result = await s.execute(
            delete(ExtensionState).where(
                ExtensionState.extension == extension, ExtensionState.key == key
            )
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]
