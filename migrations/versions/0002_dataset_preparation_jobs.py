"""dataset preparation as a job: progress, stage, errors, attempts; ready-only fields nullable

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
NOT_NULL_WITH_DEFAULT = (("progress", sa.Float(), "0"), ("error_count", sa.Integer(), "0"),
                         ("attempt", sa.Integer(), "0"))


def upgrade() -> None:
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        # existing rows get a value through a server default, dropped below: the
        # application always sets these columns itself
        for name, type_, default in NOT_NULL_WITH_DEFAULT:
            batch_op.add_column(sa.Column(name, type_, nullable=False, server_default=default))
        batch_op.add_column(sa.Column("stage", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("errors", JSON_TYPE, nullable=True))
        for name in ("started_at", "heartbeat_at", "finished_at"):
            batch_op.add_column(sa.Column(name, sa.DateTime(timezone=True), nullable=True))
        batch_op.alter_column("summary", existing_type=JSON_TYPE, nullable=True)
        batch_op.alter_column("artifact_key", existing_type=sa.String(length=500),
                              nullable=True)
        # a prepared blob can pass 2 GiB
        batch_op.alter_column("size_bytes", existing_type=sa.Integer(),
                              type_=sa.BigInteger(), nullable=True)
    # every dataset so far was prepared inside its request: it is ready and done
    op.execute("UPDATE datasets SET progress = 1.0, finished_at = created_at "
               "WHERE status = 'ready'")
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        for name, type_, _ in NOT_NULL_WITH_DEFAULT:
            batch_op.alter_column(name, existing_type=type_, server_default=None)


def downgrade() -> None:
    # the old schema has no place for a dataset that is not ready (no summary, no
    # blob); no experiment can use one, so they are dropped
    op.execute("DELETE FROM datasets WHERE status <> 'ready'")
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.alter_column("size_bytes", existing_type=sa.BigInteger(),
                              type_=sa.Integer(), nullable=False)
        batch_op.alter_column("artifact_key", existing_type=sa.String(length=500),
                              nullable=False)
        batch_op.alter_column("summary", existing_type=JSON_TYPE, nullable=False)
        for name in ("finished_at", "heartbeat_at", "started_at", "errors", "stage",
                     "attempt", "error_count", "progress"):
            batch_op.drop_column(name)
