"""Messages may have role "refused": a message the rate limit (or a permission, a pause)
turned away is kept, but only as a record.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

A refused message used to be stored as a user turn, so later runs were given a request
nobody accepted. It is still stored (so a redelivered platform event is recognised as a
duplicate), under a role that history selection leaves out.

Only the CHECK constraint of messages.role changes; batch mode rebuilds the table on
SQLite, which cannot alter a constraint in place.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD = ("user", "assistant", "ambient")
NEW = (*OLD, "refused")


def _allowed(values: tuple[str, ...]) -> str:
    return "role IN (" + ", ".join(f"'{v}'" for v in values) + ")"


def _set(values: tuple[str, ...]) -> None:
    with op.batch_alter_table("messages", recreate="auto") as batch:
        batch.drop_constraint(op.f("ck_messages_message_role"), type_="check")
        batch.create_check_constraint(op.f("ck_messages_message_role"), _allowed(values))


def upgrade() -> None:
    _set(NEW)


def downgrade() -> None:
    # The old schema has no place for a refused message. Deleting it would let a redelivered
    # event run after all; as "ambient" it stays a duplicate marker and, like any overheard
    # chatter, context only (never a request).
    op.execute("UPDATE messages SET role = 'ambient' WHERE role = 'refused'")
    _set(OLD)
