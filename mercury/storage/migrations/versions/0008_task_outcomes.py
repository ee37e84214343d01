"""Scheduled tasks say what became of them: silent tasks, catch-up after downtime, retries
of a failed run, and the last outcome (queued, ok, failed, refused, skipped) with why.

Revision ID: 0008
Revises: 0007
Create Date: 2027-01-20

Every new column has a server default or is nullable, so existing tasks migrate as they
were: not silent, caught up once, no failures, no outcome yet. Batch mode lets SQLite drop
the columns again on downgrade.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(
            sa.Column("silent", sa.Boolean(), server_default=sa.text("false"), nullable=False)
        )
        batch.add_column(
            sa.Column("catch_up", sa.String(8), server_default=sa.text("'once'"), nullable=False)
        )
        batch.add_column(
            sa.Column("failures", sa.Integer(), server_default=sa.text("0"), nullable=False)
        )
        batch.add_column(sa.Column("retry_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("last_outcome", sa.String(32), nullable=True))
        batch.add_column(sa.Column("last_detail", sa.Text(), nullable=True))
        batch.add_column(sa.Column("last_outcome_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("last_outcome_at")
        batch.drop_column("last_detail")
        batch.drop_column("last_outcome")
        batch.drop_column("retry_at")
        batch.drop_column("failures")
        batch.drop_column("catch_up")
        batch.drop_column("silent")
