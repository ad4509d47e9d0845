"""Revision 0003: dead letters, the messages the workers gave up on (`ghetl dead-letters`)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from ghetl.store.db import UTCDateTime

revision = "0003_dead_letters"
down_revision = "0002_github_repositories"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=True),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("run_id", sa.String(length=40), nullable=True),
        sa.Column("step", sa.String(length=100), nullable=True),
        sa.Column("stage", sa.String(length=20), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_dead_letters_tenant_id", "dead_letters", ["tenant_id"])


def downgrade() -> None:
    op.drop_index("ix_dead_letters_tenant_id", "dead_letters")
    op.drop_table("dead_letters")
