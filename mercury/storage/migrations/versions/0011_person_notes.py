"""Per-person memory in shared spaces: one note per (space, person) that only the runs
that person triggers are given, and only their own runs may write.

Revision ID: 0011
Revises: 0010
Create Date: 2027-02-15

A new table, nothing existing changes; a space's notes go with the space (ON DELETE
CASCADE). The key is the "platform:user_id" user key of roles, mutes and spending caps.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "person_notes",
        sa.Column("space_id", sa.String(length=64), nullable=False),
        sa.Column("user_key", sa.String(length=300), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("updated_by", sa.String(length=300), nullable=True),
        sa.ForeignKeyConstraint(
            ["space_id"],
            ["spaces.id"],
            name=op.f("fk_person_notes_space_id_spaces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("space_id", "user_key", name=op.f("pk_person_notes")),
    )


def downgrade() -> None:
    op.drop_table("person_notes")
