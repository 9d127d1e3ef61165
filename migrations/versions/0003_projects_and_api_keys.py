"""projects own datasets and experiments; API keys of a project, stored as hashes

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
# app.db.models.DEFAULT_PROJECT_ID, copied: a migration must not change when the app does
DEFAULT_PROJECT_ID = uuid.UUID("00000000-0000-0000-0000-000000000001")
OWNED = ("datasets", "experiments")


def upgrade() -> None:
    projects = op.create_table(
        "projects",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("limits", JSON_TYPE, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_projects")),
        sa.UniqueConstraint("name", name=op.f("uq_projects_name")),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("project_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("prefix", sa.String(length=32), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("scope", sa.String(length=10), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"],
                                name=op.f("fk_api_keys_project_id_projects"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
    )
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_api_keys_prefix"), ["prefix"], unique=False)
        batch_op.create_index(batch_op.f("ix_api_keys_project_id"), ["project_id"],
                              unique=False)

    # the project every existing dataset and experiment (and so run) moves into;
    # with authentication off every request acts as it
    op.bulk_insert(projects, [{"id": DEFAULT_PROJECT_ID, "name": "default",
                               "created_at": datetime.now(UTC), "limits": {}}])
    for table in OWNED:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("project_id", sa.Uuid(), nullable=True))
        rows = sa.table(table, sa.column("project_id", sa.Uuid()))
        op.execute(rows.update().values(project_id=DEFAULT_PROJECT_ID))
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.alter_column("project_id", existing_type=sa.Uuid(), nullable=False)
            batch_op.create_foreign_key(batch_op.f(f"fk_{table}_project_id_projects"),
                                        "projects", ["project_id"], ["id"],
                                        ondelete="RESTRICT")
            batch_op.create_index(batch_op.f(f"ix_{table}_project_id"), ["project_id"],
                                  unique=False)


def downgrade() -> None:
    # every project's rows stay, in one namespace again; keys and projects go
    for table in reversed(OWNED):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(batch_op.f(f"ix_{table}_project_id"))
            batch_op.drop_constraint(batch_op.f(f"fk_{table}_project_id_projects"),
                                     type_="foreignkey")
            batch_op.drop_column("project_id")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_keys_project_id"))
        batch_op.drop_index(batch_op.f("ix_api_keys_prefix"))
    op.drop_table("api_keys")
    op.drop_table("projects")
