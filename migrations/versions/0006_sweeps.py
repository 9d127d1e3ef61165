"""sweeps: a base spec and a grid or random space; experiments.sweep_id and sweep_point

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-18
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "sweeps",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("project_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("spec", JSON_TYPE, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"],
                                name=op.f("fk_sweeps_project_id_projects"),
                                ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sweeps")),
    )
    with op.batch_alter_table("sweeps", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sweeps_project_id"), ["project_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_sweeps_created_at"), ["created_at"], unique=False)
    # null for every existing experiment: none came from a sweep
    with op.batch_alter_table("experiments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sweep_id", sa.Uuid(), nullable=True))
        batch_op.add_column(sa.Column("sweep_point", JSON_TYPE, nullable=True))
        batch_op.create_foreign_key(batch_op.f("fk_experiments_sweep_id_sweeps"), "sweeps",
                                    ["sweep_id"], ["id"], ondelete="CASCADE")
        batch_op.create_index(batch_op.f("ix_experiments_sweep_id"), ["sweep_id"],
                              unique=False)


def downgrade() -> None:
    # a sweep's experiments stay, as plain experiments
    with op.batch_alter_table("experiments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_experiments_sweep_id"))
        batch_op.drop_constraint(batch_op.f("fk_experiments_sweep_id_sweeps"),
                                 type_="foreignkey")
        batch_op.drop_column("sweep_point")
        batch_op.drop_column("sweep_id")
    with op.batch_alter_table("sweeps", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sweeps_created_at"))
        batch_op.drop_index(batch_op.f("ix_sweeps_project_id"))
    op.drop_table("sweeps")
