"""Initial schema: spaces, conversations, messages, the jobs queue, runs, roles, mutes,
preferences, scheduled tasks, extension state and daily usage.

Revision ID: 0001
Revises:
Create Date: 2026-11-24

Hand-checked against mercury/storage/models.py; tests compare the two after upgrading.
Self-contained on purpose: a migration must not import the models, which keep changing.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Row ids that grow with traffic: BIGINT on PostgreSQL, INTEGER (the rowid) on SQLite.
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)

MESSAGE_ROLES = ("user", "assistant", "ambient")
JOB_STATUSES = ("queued", "running", "done", "failed", "aborted")
RUN_REASONS = ("ok", "error", "crashed", "oom", "timeout", "aborted")


def _enum(values: tuple[str, ...], name: str) -> sa.Enum:
    # Non-native enum: VARCHAR(16), the same on SQLite and PostgreSQL. Its CHECK is spelled
    # out by _check_in so that its name does not depend on a naming convention.
    return sa.Enum(*values, name=name, native_enum=False, create_constraint=False, length=16)


def _check_in(table: str, column: str, values: tuple[str, ...], name: str) -> sa.CheckConstraint:
    allowed = ", ".join(f"'{v}'" for v in values)
    return sa.CheckConstraint(f"{column} IN ({allowed})", name=op.f(f"ck_{table}_{name}"))


def _space_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["space_id"], ["spaces.id"], name=op.f(f"fk_{table}_space_id_spaces"), ondelete="CASCADE"
    )


def upgrade() -> None:
    op.create_table(
        "spaces",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column(
            "profile", sa.String(length=64), server_default=sa.text("'general'"), nullable=False
        ),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("paused_until", TS, nullable=True),
        sa.Column("context_reset_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_spaces")),
    )

    op.create_table(
        "conversations",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("space_id", sa.String(length=64), nullable=False),
        sa.Column("platform", sa.String(length=32), nullable=False),
        sa.Column("chat_id", sa.String(length=255), nullable=False),
        sa.Column("thread_id", sa.String(length=255), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        _space_fk("conversations"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_conversations")),
        sa.UniqueConstraint("platform", "chat_id", name=op.f("uq_conversations_platform_chat_id")),
    )
    op.create_index(op.f("ix_conversations_space_id"), "conversations", ["space_id"])

    op.create_table(
        "messages",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("space_id", sa.String(length=64), nullable=False),
        sa.Column("conversation_id", BIG_ID, nullable=True),
        sa.Column("platform", sa.String(length=32), nullable=False),
        sa.Column("platform_message_id", sa.String(length=255), nullable=True),
        sa.Column("role", _enum(MESSAGE_ROLES, "message_role"), nullable=False),
        sa.Column("author_id", sa.String(length=255), nullable=True),
        sa.Column("author_name", sa.String(length=255), nullable=True),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("attachments", sa.JSON(), nullable=False),
        sa.Column("is_bot", sa.Boolean(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        _check_in("messages", "role", MESSAGE_ROLES, "message_role"),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name=op.f("fk_messages_conversation_id_conversations"),
            ondelete="SET NULL",
        ),
        _space_fk("messages"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_messages")),
    )
    op.create_index(op.f("ix_messages_conversation_id"), "messages", ["conversation_id"])
    op.create_index("ix_messages_space_id_created_at", "messages", ["space_id", "created_at"])
    # Recognises a redelivered platform event; partial because outbound messages may have no id.
    op.create_index(
        "uq_messages_platform_platform_message_id",
        "messages",
        ["platform", "platform_message_id"],
        unique=True,
        sqlite_where=sa.text("platform_message_id IS NOT NULL"),
        postgresql_where=sa.text("platform_message_id IS NOT NULL"),
    )

    op.create_table(
        "jobs",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("space_id", sa.String(length=64), nullable=False),
        sa.Column("message_id", BIG_ID, nullable=True),
        sa.Column("status", _enum(JOB_STATUSES, "job_status"), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("priority", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("enqueued_at", TS, nullable=False),
        sa.Column("started_at", TS, nullable=True),
        sa.Column("finished_at", TS, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("owner", sa.String(length=128), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=False),
        _check_in("jobs", "status", JOB_STATUSES, "job_status"),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name=op.f("fk_jobs_message_id_messages"),
            ondelete="SET NULL",
        ),
        _space_fk("jobs"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    op.create_index(op.f("ix_jobs_message_id"), "jobs", ["message_id"])
    op.create_index("ix_jobs_status_space_id_id", "jobs", ["status", "space_id", "id"])
    # At most one running job per space, enforced by the database.
    op.create_index(
        "uq_jobs_space_id_running",
        "jobs",
        ["space_id"],
        unique=True,
        sqlite_where=sa.text("status = 'running'"),
        postgresql_where=sa.text("status = 'running'"),
    )

    op.create_table(
        "runs",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("job_id", BIG_ID, nullable=True),
        sa.Column("space_id", sa.String(length=64), nullable=False),
        sa.Column("reason", _enum(RUN_REASONS, "run_reason"), nullable=False),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("duration_ms", sa.BigInteger(), nullable=True),
        sa.Column("image", sa.String(length=255), nullable=True),
        sa.Column("container_name", sa.String(length=255), nullable=True),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=True),
        sa.Column("model", sa.String(length=200), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("finished_at", TS, nullable=True),
        _check_in("runs", "reason", RUN_REASONS, "run_reason"),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_runs_job_id_jobs"), ondelete="SET NULL"
        ),
        _space_fk("runs"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
    )
    op.create_index(op.f("ix_runs_job_id"), "runs", ["job_id"])
    op.create_index("ix_runs_space_id_started_at", "runs", ["space_id", "started_at"])

    op.create_table(
        "roles",
        sa.Column("space_id", sa.String(length=64), nullable=False),
        sa.Column("platform", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("role", sa.String(length=64), nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        _space_fk("roles"),
        sa.PrimaryKeyConstraint("space_id", "platform", "user_id", name=op.f("pk_roles")),
    )

    op.create_table(
        "role_permissions",
        sa.Column("space_id", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=64), nullable=False),
        sa.Column("permission", sa.String(length=128), nullable=False),
        _space_fk("role_permissions"),
        sa.PrimaryKeyConstraint(
            "space_id", "role", "permission", name=op.f("pk_role_permissions")
        ),
    )

    op.create_table(
        "mutes",
        sa.Column("space_id", sa.String(length=64), nullable=False),
        sa.Column("platform", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("until", TS, nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        _space_fk("mutes"),
        sa.PrimaryKeyConstraint("space_id", "platform", "user_id", name=op.f("pk_mutes")),
    )

    op.create_table(
        "preferences",
        sa.Column("space_id", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        _space_fk("preferences"),
        sa.PrimaryKeyConstraint("space_id", "key", name=op.f("pk_preferences")),
    )

    op.create_table(
        "tasks",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("space_id", sa.String(length=64), nullable=False),
        sa.Column("conversation_id", BIG_ID, nullable=True),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("cron", sa.String(length=128), nullable=True),
        sa.Column("interval_s", sa.Integer(), nullable=True),
        sa.Column("run_at", TS, nullable=True),
        sa.Column("created_by", sa.String(length=255), nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("next_run_at", TS, nullable=True),
        sa.Column("last_run_at", TS, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        # Exactly one way of scheduling per task.
        sa.CheckConstraint(
            "(CASE WHEN cron IS NULL THEN 0 ELSE 1 END)"
            " + (CASE WHEN interval_s IS NULL THEN 0 ELSE 1 END)"
            " + (CASE WHEN run_at IS NULL THEN 0 ELSE 1 END) = 1",
            name=op.f("ck_tasks_one_schedule"),
        ),
        sa.CheckConstraint(
            "interval_s IS NULL OR interval_s > 0", name=op.f("ck_tasks_interval_positive")
        ),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name=op.f("fk_tasks_conversation_id_conversations"),
            ondelete="SET NULL",
        ),
        _space_fk("tasks"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tasks")),
    )
    op.create_index("ix_tasks_enabled_next_run_at", "tasks", ["enabled", "next_run_at"])
    op.create_index(op.f("ix_tasks_space_id"), "tasks", ["space_id"])

    op.create_table(
        "extension_state",
        sa.Column("extension", sa.String(length=128), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("value", sa.JSON(), nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("extension", "key", name=op.f("pk_extension_state")),
    )

    op.create_table(
        "usage",
        sa.Column("space_id", sa.String(length=64), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=False),
        sa.Column("runs", sa.Integer(), nullable=False),
        _space_fk("usage"),
        sa.PrimaryKeyConstraint("space_id", "day", "model", name=op.f("pk_usage")),
    )


def downgrade() -> None:
    # Children before parents; dropping a table drops its indexes and constraints.
    for table in (
        "usage",
        "extension_state",
        "tasks",
        "preferences",
        "mutes",
        "role_permissions",
        "roles",
        "runs",
        "jobs",
        "messages",
        "conversations",
        "spaces",
    ):
        op.drop_table(table)
