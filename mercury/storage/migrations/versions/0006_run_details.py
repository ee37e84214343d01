"""A run record keeps what its dashboard page shows: prompt summary, attempts, model calls
and, for a failed run, the container log tail; and runs get an index for newest-first.

Revision ID: 0006
Revises: 0005
Create Date: 2027-01-11

The new columns are nullable: runs recorded before this revision simply have no details.
Batch mode lets SQLite drop the columns again on downgrade.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("prompt_summary", sa.Text(), nullable=True))
        batch.add_column(sa.Column("attempts", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("model_calls", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("log_tail", sa.Text(), nullable=True))
    op.create_index(op.f("ix_runs_started_at"), "runs", ["started_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_runs_started_at"), table_name="runs")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("log_tail")
        batch.drop_column("model_calls")
        batch.drop_column("attempts")
        batch.drop_column("prompt_summary")
