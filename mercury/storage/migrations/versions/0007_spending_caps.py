"""Spending caps: every metered model call is stored as it ends (model_calls), admins'
80 % warnings are remembered (budget_alerts), and runs may end with reason "budget".

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD = ("ok", "error", "crashed", "oom", "timeout", "aborted", "disk")
NEW = (*OLD, "budget")


def _allowed(values: tuple[str, ...]) -> str:
    return "reason IN (" + ", ".join(f"'{v}'" for v in values) + ")"


def _set(values: tuple[str, ...]) -> None:
    with op.batch_alter_table("runs", recreate="auto") as batch:
        batch.drop_constraint(op.f("ck_runs_run_reason"), type_="check")
        batch.create_check_constraint(op.f("ck_runs_run_reason"), _allowed(values))


def upgrade() -> None:
    op.create_table(
        "model_calls",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "space_id",
            sa.String(64),
            sa.ForeignKey(
                "spaces.id", ondelete="CASCADE", name=op.f("fk_model_calls_space_id_spaces")
            ),
            nullable=False,
        ),
        sa.Column("user_key", sa.String(255), nullable=True),
        sa.Column("task_id", sa.Integer(), nullable=True),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("model", sa.String(200), nullable=True),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=True),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("incomplete", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_calls")),
    )
    op.create_index(op.f("ix_model_calls_at"), "model_calls", ["at"])
    op.create_index(op.f("ix_model_calls_space_id_at"), "model_calls", ["space_id", "at"])
    op.create_index(op.f("ix_model_calls_task_id_at"), "model_calls", ["task_id", "at"])
    op.create_table(
        "budget_alerts",
        sa.Column("scope", sa.String(32), nullable=False),
        sa.Column("subject", sa.String(300), nullable=False),
        sa.Column("period", sa.Date(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("scope", "subject", "period", name=op.f("pk_budget_alerts")),
    )
    _set(NEW)


def downgrade() -> None:
    op.execute("UPDATE runs SET reason = 'error' WHERE reason = 'budget'")
    _set(OLD)
    op.drop_table("budget_alerts")
    op.drop_index(op.f("ix_model_calls_task_id_at"), table_name="model_calls")
    op.drop_index(op.f("ix_model_calls_space_id_at"), table_name="model_calls")
    op.drop_index(op.f("ix_model_calls_at"), table_name="model_calls")
    op.drop_table("model_calls")
