"""runs.status: a CHECK constraint on the run lifecycle's five statuses

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-20
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# written out, not imported: a migration keeps the values of its own day
STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


def upgrade() -> None:
    # batch mode: SQLite (the embedded database) rebuilds the table to add it
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.create_check_constraint(
            op.f("ck_runs_status"), f"status IN ({', '.join(repr(s) for s in STATUSES)})")


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_runs_status"), type_="check")
