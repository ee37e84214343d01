"""Job leases: a running job is held until `lease_until`, renewed by the process running it.

Revision ID: 0013
Revises: 0012
Create Date: 2027-03-08

Groundwork for several Mercury processes on one PostgreSQL (issue 18): a worker renews
the lease on its running jobs; a job whose lease ran out (the worker was killed, its
machine went away) is requeued once by any live worker, then failed with a notice. The
column is nullable and existing rows keep NULL: a job claimed before this revision has
no lease, which recovery treats as already expired. Batch mode lets SQLite drop it again.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("lease_until")
