"""A run record keeps the tool calls of its run (built-in tools and extensions' MCP tools,
from result.json, bounded) and the extensions the run was granted.

Revision ID: 0009
Revises: 0008
Create Date: 2027-02-01

Both columns are nullable: older runs simply have none.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("tool_calls", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("extensions", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("extensions")
        batch.drop_column("tool_calls")
