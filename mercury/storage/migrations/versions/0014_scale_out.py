"""Scale-out: stop requests for running jobs, and the notices a worker hands the gateway.

Revision ID: 0014
Revises: 0013
Create Date: 2027-03-10

With a gateway and workers (docs/scale-out.md) the process that hears /stop is not the one
running the job: it marks the job (`jobs.abort_requested_at`) and the worker that holds it
stops its run. And a worker has no chat connections: what it would have sent directly (an
interim message, a notice, a task's report) is stored in `notices` and sent by the
gateway, exactly like a job's reply from the `replies` outbox. Batch mode lets SQLite
drop the column again.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | Sequence[str] | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)
STATUSES = ("pending", "sending", "sent", "failed")


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("abort_requested_at", TS, nullable=True))
    allowed = ", ".join(f"'{v}'" for v in STATUSES)
    op.create_table(
        "notices",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("space_id", sa.String(length=64), nullable=True),
        sa.Column(
            "status",
            sa.Enum(*STATUSES, name="notice_status", native_enum=False,
                    create_constraint=False, length=16),
            nullable=False,
        ),  # fmt: skip
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("sent_at", TS, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.CheckConstraint(f"status IN ({allowed})", name=op.f("ck_notices_notice_status")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notices")),
    )
    op.create_index("ix_notices_status", "notices", ["status"])


def downgrade() -> None:
    op.drop_index("ix_notices_status", table_name="notices")
    op.drop_table("notices")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("abort_requested_at")
