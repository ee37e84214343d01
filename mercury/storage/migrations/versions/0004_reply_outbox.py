"""The reply outbox: a job's answer is stored before it is sent, and marked sent after.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

A crash between sending a reply and finishing its job used to run the job again (the user
got the answer twice). With the outbox a job that has a reply is never run again, and a
reply stored but not yet sent is delivered at the next start.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)
REPLY_STATUSES = ("pending", "sending", "sent", "failed")
JOB_STATUSES = ("queued", "running", "done", "failed", "aborted")


def _enum(values: tuple[str, ...], name: str) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, create_constraint=False, length=16)


def _check_in(column: str, values: tuple[str, ...], name: str) -> sa.CheckConstraint:
    allowed = ", ".join(f"'{v}'" for v in values)
    return sa.CheckConstraint(f"{column} IN ({allowed})", name=op.f(f"ck_replies_{name}"))


def upgrade() -> None:
    op.create_table(
        "replies",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("job_id", BIG_ID, nullable=False),
        sa.Column("space_id", sa.String(length=64), nullable=False),
        sa.Column("status", _enum(REPLY_STATUSES, "reply_status"), nullable=False),
        sa.Column("job_status", _enum(JOB_STATUSES, "reply_job_status"), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("sent_at", TS, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        _check_in("status", REPLY_STATUSES, "reply_status"),
        _check_in("job_status", JOB_STATUSES, "reply_job_status"),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_replies_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["space_id"],
            ["spaces.id"],
            name=op.f("fk_replies_space_id_spaces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_replies")),
        sa.UniqueConstraint("job_id", name=op.f("uq_replies_job_id")),
    )
    op.create_index("ix_replies_status", "replies", ["status"])


def downgrade() -> None:
    op.drop_index("ix_replies_status", table_name="replies")
    op.drop_table("replies")
