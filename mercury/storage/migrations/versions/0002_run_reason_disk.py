"""Runs may end with reason "disk": the space outgrew disk.space_size, or the host's free
disk fell below disk.min_free while it ran.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

Only the CHECK constraint of runs.reason changes; batch mode rebuilds the table on SQLite,
which cannot alter a constraint in place.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD = ("ok", "error", "crashed", "oom", "timeout", "aborted")
NEW = (*OLD, "disk")


def _allowed(values: tuple[str, ...]) -> str:
    return "reason IN (" + ", ".join(f"'{v}'" for v in values) + ")"


def _set(values: tuple[str, ...]) -> None:
    with op.batch_alter_table("runs", recreate="auto") as batch:
        batch.drop_constraint(op.f("ck_runs_run_reason"), type_="check")
        batch.create_check_constraint(op.f("ck_runs_run_reason"), _allowed(values))


def upgrade() -> None:
    _set(NEW)


def downgrade() -> None:
    op.execute("UPDATE runs SET reason = 'crashed' WHERE reason = 'disk'")
    _set(OLD)
