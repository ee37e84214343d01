"""The whole schema as SQLAlchemy 2 typed models; Alembic migrations must match it exactly.

Types are chosen to behave the same on SQLite and PostgreSQL: strings with CHECK constraints
instead of native enums, JSON, timezone-aware timestamps stored in UTC.
"""

from __future__ import annotations

import enum
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Dialect,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from mercury.core.run_reason import RunReason  # the runs table stores the runner's

sql_text = text  # `text` is also a column name below; this alias avoids the shadowing

# Deterministic constraint names, so migrations can drop or alter them on every database.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Row ids that grow with traffic: 64-bit on PostgreSQL, but plain INTEGER on SQLite, where
# only an INTEGER PRIMARY KEY is the auto-incrementing rowid.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that goes in as any aware datetime and always comes out aware, in UTC.

    SQLite has no time zones: values are stored as naive UTC text (which also keeps
    comparisons in SQL correct) and get their UTC tzinfo back on the way out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use an aware UTC datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class MessageRole(enum.StrEnum):
    """Who wrote a message: a user who addressed the bot, the bot, or chatter it only overheard
    (and a user's message the bot turned away)."""

    USER = "user"
    ASSISTANT = "assistant"
    AMBIENT = "ambient"
    # Turned away (rate limit, permission, pause): kept so that a redelivered platform
    # event is still known as a duplicate, but never part of a run's history.
    REFUSED = "refused"


class JobStatus(enum.StrEnum):
    """A job's place in the queue: queued -> running -> done | failed | aborted."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    ABORTED = "aborted"


FINAL_JOB_STATUSES = frozenset({JobStatus.DONE, JobStatus.FAILED, JobStatus.ABORTED})


def _str_enum(enum_cls: type[enum.StrEnum], name: str) -> Enum:
    # Non-native: a VARCHAR plus a named CHECK constraint, identical on SQLite and PostgreSQL,
    # and adding a value later needs no ALTER TYPE.
    return Enum(
        enum_cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=16,
        validate_strings=True,
        values_callable=lambda members: [m.value for m in members],
    )


class Base(DeclarativeBase):
    """Declarative base carrying the naming convention."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
        list[Any]: JSON(),
    }


class Space(Base):
    """One isolated agent workspace: its own files, history, roles and preferences."""

    __tablename__ = "spaces"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    profile: Mapped[str] = mapped_column(
        String(64), default="general", server_default=sql_text("'general'")
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    paused_until: Mapped[datetime | None]
    # Messages before this instant are left out of the agent's history (/reset).
    context_reset_at: Mapped[datetime | None]


class Conversation(Base):
    """A platform chat (channel, group, DM) linked to the space that answers it."""

    __tablename__ = "conversations"
    __table_args__ = (UniqueConstraint("platform", "chat_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    space_id: Mapped[str] = mapped_column(ForeignKey("spaces.id", ondelete="CASCADE"), index=True)
    platform: Mapped[str] = mapped_column(String(32))
    chat_id: Mapped[str] = mapped_column(String(255))
    # The thread replies go into, where the platform has threads (Slack thread_ts, ...).
    thread_id: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Message(Base):
    """A stored chat message, inbound or outbound."""

    __tablename__ = "messages"
    __table_args__ = (
        # A redelivered platform event carries the same message id: recognise it.
        # Partial, because outbound and synthetic messages may have no platform id.
        Index(
            "uq_messages_platform_platform_message_id",
            "platform",
            "platform_message_id",
            unique=True,
            sqlite_where=sql_text("platform_message_id IS NOT NULL"),
            postgresql_where=sql_text("platform_message_id IS NOT NULL"),
        ),
        Index("ix_messages_space_id_created_at", "space_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    space_id: Mapped[str] = mapped_column(ForeignKey("spaces.id", ondelete="CASCADE"))
    conversation_id: Mapped[int | None] = mapped_column(
        ForeignKey("conversations.id", ondelete="SET NULL"), index=True
    )
    platform: Mapped[str] = mapped_column(String(32))
    platform_message_id: Mapped[str | None] = mapped_column(String(255))
    role: Mapped[MessageRole] = mapped_column(_str_enum(MessageRole, "message_role"))
    author_id: Mapped[str | None] = mapped_column(String(255))
    author_name: Mapped[str | None] = mapped_column(String(255))
    text: Mapped[str] = mapped_column(Text, default="")
    attachments: Mapped[list[Any]] = mapped_column(default=list)
    is_bot: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    """One entry of the persistent queue: a message (or task) waiting for, or getting, an answer."""

    __tablename__ = "jobs"
    __table_args__ = (
        # The dispatcher's query: queued jobs per space in id (FIFO) order.
        Index("ix_jobs_status_space_id_id", "status", "space_id", "id"),
        # One running job per space, enforced by the database itself.
        Index(
            "uq_jobs_space_id_running",
            "space_id",
            unique=True,
            sqlite_where=sql_text("status = 'running'"),
            postgresql_where=sql_text("status = 'running'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    space_id: Mapped[str] = mapped_column(ForeignKey("spaces.id", ondelete="CASCADE"))
    message_id: Mapped[int | None] = mapped_column(
        ForeignKey("messages.id", ondelete="SET NULL"), index=True
    )
    status: Mapped[JobStatus] = mapped_column(
        _str_enum(JobStatus, "job_status"), default=JobStatus.QUEUED
    )
    # How many times a process started it; a crash-requeue loop stops at the limit.
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=sql_text("0"))
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default=sql_text("0"))
    enqueued_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)
    # The process (instance + pid + boot id) that claimed it; tells stale jobs from live ones.
    owner: Mapped[str | None] = mapped_column(String(128))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Until when `owner` holds the running job (0013); renewed while it runs. Past it, any
    # live process may requeue or fail it (storage/jobs.py). NULL: claimed before leases.
    lease_until: Mapped[datetime | None]
    # When someone (/stop, the dashboard) asked the process running it to stop its run
    # (0014): with a gateway and workers the one that hears /stop is not the one running it.
    abort_requested_at: Mapped[datetime | None]


class ReplyStatus(enum.StrEnum):
    """An outbox reply: pending -> sending -> sent | failed.

    `sending` is written before the platform call and `sent` after it, so a process that
    dies in between leaves a record that the reply may already be out (it is not sent
    twice, and its job is not run again).
    """

    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"


class Reply(Base):
    """The outbox: a job's answer, stored before it is sent (exactly-once delivery).

    Stored in the same transaction that records the run, sent, then marked sent in the
    same transaction that finishes the job. A job with a reply is never run again; a reply
    produced but not sent before a crash is delivered at the next start.
    """

    __tablename__ = "replies"
    __table_args__ = (Index("ix_replies_status", "status"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), unique=True)
    space_id: Mapped[str] = mapped_column(ForeignKey("spaces.id", ondelete="CASCADE"))
    status: Mapped[ReplyStatus] = mapped_column(
        _str_enum(ReplyStatus, "reply_status"), default=ReplyStatus.PENDING
    )
    # The job's final status once the reply is out: a failure notice finishes it failed.
    job_status: Mapped[JobStatus] = mapped_column(_str_enum(JobStatus, "reply_job_status"))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=sql_text("0"))
    # Where and what: platform, chat_id, thread_id, reply_to, text, files [{path, name}].
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)


class Notice(Base):
    """A worker's message that is not a job's reply (0014): an interim message, a notice, a
    task's report. A worker has no chat connections, so it stores these and the gateway
    sends them, with the replies' life: pending -> sending -> sent | failed."""

    __tablename__ = "notices"
    __table_args__ = (Index("ix_notices_status", "status"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    space_id: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[ReplyStatus] = mapped_column(
        _str_enum(ReplyStatus, "notice_status"), default=ReplyStatus.PENDING
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=sql_text("0"))
    # The same as a reply's: platform, chat_id, thread_id, reply_to, text, files (none).
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)


class Run(Base):
    """One container execution, with its outcome and cost."""

    __tablename__ = "runs"
    __table_args__ = (
        Index("ix_runs_space_id_started_at", "space_id", "started_at"),
        Index("ix_runs_started_at", "started_at"),  # the dashboard's newest-first list
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    job_id: Mapped[int | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="SET NULL"), index=True
    )
    space_id: Mapped[str] = mapped_column(ForeignKey("spaces.id", ondelete="CASCADE"))
    reason: Mapped[RunReason] = mapped_column(_str_enum(RunReason, "run_reason"))
    exit_code: Mapped[int | None] = mapped_column(Integer)
    duration_ms: Mapped[int | None] = mapped_column(BigInteger)
    image: Mapped[str | None] = mapped_column(String(255))
    container_name: Mapped[str | None] = mapped_column(String(255))
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_usd: Mapped[float | None] = mapped_column(Float)
    model: Mapped[str | None] = mapped_column(String(200))
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    # What the run's dashboard page shows, each bounded by storage/runs.py (0006).
    prompt_summary: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[list[Any] | None]  # result.json's model attempts, cleaned
    model_calls: Mapped[list[Any] | None]  # the host's metered calls of the run
    log_tail: Mapped[str | None] = mapped_column(Text)  # container log end, failed runs
    tool_calls: Mapped[list[Any] | None]  # result.json's tool calls, bounded (0009)
    extensions: Mapped[list[Any] | None]  # the extensions the run was granted


class Role(Base):
    """A user's role in one space (admin, member, or a custom role)."""

    __tablename__ = "roles"

    space_id: Mapped[str] = mapped_column(
        ForeignKey("spaces.id", ondelete="CASCADE"), primary_key=True
    )
    platform: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    role: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class RolePermission(Base):
    """A permission granted to a custom role in one space."""

    __tablename__ = "role_permissions"

    space_id: Mapped[str] = mapped_column(
        ForeignKey("spaces.id", ondelete="CASCADE"), primary_key=True
    )
    role: Mapped[str] = mapped_column(String(64), primary_key=True)
    permission: Mapped[str] = mapped_column(String(128), primary_key=True)


class Mute(Base):
    """A user the bot ignores in one space, until a time or (until NULL) for good."""

    __tablename__ = "mutes"

    space_id: Mapped[str] = mapped_column(
        ForeignKey("spaces.id", ondelete="CASCADE"), primary_key=True
    )
    platform: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    until: Mapped[datetime | None]
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Preference(Base):
    """A per-space setting the agent sees in input.json (`preferences {k: v}`)."""

    __tablename__ = "preferences"

    space_id: Mapped[str] = mapped_column(
        ForeignKey("spaces.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class PersonNote(Base):
    """What the agent remembers about one person in one space (0011): given only to the
    runs that person triggers, written only through their own runs (storage/person_notes.py)."""

    __tablename__ = "person_notes"

    space_id: Mapped[str] = mapped_column(
        ForeignKey("spaces.id", ondelete="CASCADE"), primary_key=True
    )
    user_key: Mapped[str] = mapped_column(String(300), primary_key=True)  # "platform:user_id"
    text: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    updated_by: Mapped[str | None] = mapped_column(String(300))  # e.g. "run:<run id>"


class Task(Base):
    """A scheduled prompt: by cron expression, fixed interval, or once at a time."""

    __tablename__ = "tasks"
    __table_args__ = (
        CheckConstraint(
            "(CASE WHEN cron IS NULL THEN 0 ELSE 1 END)"
            " + (CASE WHEN interval_s IS NULL THEN 0 ELSE 1 END)"
            " + (CASE WHEN run_at IS NULL THEN 0 ELSE 1 END) = 1",
            name="one_schedule",
        ),
        CheckConstraint("interval_s IS NULL OR interval_s > 0", name="interval_positive"),
        Index("ix_tasks_enabled_next_run_at", "enabled", "next_run_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    space_id: Mapped[str] = mapped_column(ForeignKey("spaces.id", ondelete="CASCADE"), index=True)
    # Where the answer is posted; a scheduled run is a synthetic message in this chat.
    conversation_id: Mapped[int | None] = mapped_column(
        ForeignKey("conversations.id", ondelete="SET NULL")
    )
    prompt: Mapped[str] = mapped_column(Text)
    cron: Mapped[str | None] = mapped_column(String(128))
    interval_s: Mapped[int | None] = mapped_column(Integer)
    run_at: Mapped[datetime | None]
    created_by: Mapped[str | None] = mapped_column(String(255))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    next_run_at: Mapped[datetime | None]
    last_run_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # A silent task posts only what fails (and what its agent sends itself).
    silent: Mapped[bool] = mapped_column(Boolean, default=False, server_default=sql_text("false"))
    # A slot missed while Mercury was down: "once" (run at start) or "skip".
    catch_up: Mapped[str] = mapped_column(
        String(8), default="once", server_default=sql_text("'once'")
    )
    # Failed attempts of the current due run, and when the next retry is due.
    failures: Mapped[int] = mapped_column(Integer, default=0, server_default=sql_text("0"))
    retry_at: Mapped[datetime | None]
    # What became of the task's last due run: queued | ok | failed | refused | skipped,
    # why in plain words, and when (pipeline/scheduler.py).
    last_outcome: Mapped[str | None] = mapped_column(String(32))
    last_detail: Mapped[str | None] = mapped_column(Text)
    last_outcome_at: Mapped[datetime | None]


class ExtensionState(Base):
    """A JSON value an extension keeps between runs."""

    __tablename__ = "extension_state"

    extension: Mapped[str] = mapped_column(String(128), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Usage(Base):
    """Tokens, cost and run count per space, UTC day and model (upserted after each run)."""

    __tablename__ = "usage"

    space_id: Mapped[str] = mapped_column(
        ForeignKey("spaces.id", ondelete="CASCADE"), primary_key=True
    )
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    runs: Mapped[int] = mapped_column(Integer, default=0)


class ModelCall(Base):
    """One metered model call, written as it ends: what spending caps count (0007).

    The usage table sums whole runs when they end; caps need every call at once, with who
    caused it (the run's user, its task), so that a restart, a crash mid-run or a run that
    keeps retrying cannot spend past a cap. Rows older than the longest cap period are
    pruned at start (pipeline/budget.py)."""

    __tablename__ = "model_calls"
    __table_args__ = (
        Index("ix_model_calls_space_id_at", "space_id", "at"),
        # A task's recent runs (its usual cost, asked before each run and for every list
        # of tasks) without reading every stored call.
        Index("ix_model_calls_task_id_at", "task_id", "at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    space_id: Mapped[str] = mapped_column(ForeignKey("spaces.id", ondelete="CASCADE"))
    user_key: Mapped[str | None] = mapped_column(String(255))  # "platform:user_id"
    task_id: Mapped[int | None] = mapped_column(Integer)  # no FK: a task may be deleted
    run_id: Mapped[str] = mapped_column(String(64))
    provider: Mapped[str] = mapped_column(String(32))
    model: Mapped[str | None] = mapped_column(String(200))
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_usd: Mapped[float | None] = mapped_column(Float)  # None: the model has no price
    status: Mapped[int | None] = mapped_column(Integer)
    incomplete: Mapped[bool] = mapped_column(Boolean, default=False)


class BudgetAlert(Base):
    """An admin was warned that a cap is nearly used: once per cap, subject and period."""

    __tablename__ = "budget_alerts"

    scope: Mapped[str] = mapped_column(String(32), primary_key=True)
    # The space id; "space_id user_key" for a user's cap; "*" for the instance's.
    subject: Mapped[str] = mapped_column(String(300), primary_key=True)
    period: Mapped[date] = mapped_column(Date, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Session(Base):
    """A browser login (dashboard and web chat): only the SHA-256 of its id is stored,
    so a copy of this table logs nobody in."""

    __tablename__ = "sessions"

    id_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    username: Mapped[str] = mapped_column(String(128))
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)


class ProcessRow(Base):
    """A running (or last run) Mercury process, refreshed every `interval_s` (0012): how
    `mercury status`, another process, knows whether Mercury is alive."""

    __tablename__ = "processes"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # the dispatcher's owner id
    instance: Mapped[str] = mapped_column(String(64))
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    version: Mapped[str] = mapped_column(String(64))
    interval_s: Mapped[float] = mapped_column(Float)
    started_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    stopped_at: Mapped[datetime | None]


class AdapterStatusRow(Base):
    """One adapter's state as its process last wrote it (AdapterState, 0012)."""

    __tablename__ = "adapter_status"

    process_id: Mapped[str] = mapped_column(
        ForeignKey("processes.id", ondelete="CASCADE"), primary_key=True
    )
    adapter: Mapped[str] = mapped_column(String(32), primary_key=True)
    connected: Mapped[bool] = mapped_column(Boolean)
    last_event_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)  # one scrubbed line
    last_error_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]
