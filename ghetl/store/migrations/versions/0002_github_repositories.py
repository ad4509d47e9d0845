"""Revision 0002: the `github_repositories` step's table, `repositories`.

Frozen: the tables exactly as this revision created them, on a MetaData of its own, so that
what later revisions change in `ghetl.db` never changes what this one does. An older ghetl's
database (before Alembic, `ghetl_schema` version 1 to 4) is brought to this shape by
`ghetl.migrate.upgrade_legacy` and then stamped with it.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

from ghetl.store.db import JSON, UTCDateTime, utcnow

revision = "0002_github_repositories"
down_revision = "0001_core"
branch_labels = None
depends_on = None

meta = sa.MetaData()

# What the table refers to, as created by 0001_core: named here for the keys, never created here.
REFERENCED = ("integrations",)
sa.Table("integrations", meta, sa.Column("id", sa.Integer, primary_key=True), sa.Column("tenant_id", sa.Integer))

_OF_INTEGRATION = (["tenant_id", "integration_id"], ["integrations.tenant_id", "integrations.id"])


def _timestamps() -> list[sa.Column[Any]]:
    return [
        sa.Column("created_at", UTCDateTime, nullable=False, default=utcnow),
        sa.Column("updated_at", UTCDateTime, nullable=False, default=utcnow, onupdate=utcnow),
    ]


repositories = sa.Table(
    "repositories",
    meta,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("tenant_id", sa.Integer, nullable=False),
    sa.Column("integration_id", sa.Integer, nullable=False),
    sa.Column("external_id", sa.String(100), nullable=False),
    sa.Column("name", sa.String(300), nullable=False),
    sa.Column("full_name", sa.String(500), nullable=False),
    sa.Column("owner", sa.String(200)),
    sa.Column("description", sa.Text),
    sa.Column("url", sa.String(1000)),
    sa.Column("is_private", sa.Boolean, nullable=False, default=False),
    sa.Column("visibility", sa.String(20)),
    sa.Column("fork", sa.Boolean, nullable=False, default=False),
    sa.Column("archived", sa.Boolean, nullable=False, default=False),
    sa.Column("topics", JSON, nullable=False, default=list),
    sa.Column("license", sa.String(100)),
    sa.Column("language", sa.String(100)),
    sa.Column("default_branch", sa.String(300)),
    sa.Column("stargazers_count", sa.Integer, nullable=False, default=0),
    sa.Column("forks_count", sa.Integer, nullable=False, default=0),
    sa.Column("open_issues_count", sa.Integer, nullable=False, default=0),
    sa.Column("repo_created_at", UTCDateTime),
    sa.Column("repo_updated_at", UTCDateTime),
    sa.Column("pushed_at", UTCDateTime),
    sa.Column("active", sa.Boolean, nullable=False, default=True),
    sa.Column("content_hash", sa.String(64), nullable=False),
    # When the payload this row holds was fetched: with repo_updated_at, what tells a late
    # older payload from a newer one (see upsert's `newest`).
    sa.Column("fetched_at", UTCDateTime),
    *_timestamps(),
    # GitHub's id leads: a stage looks up a batch of ids, and with the id first PostgreSQL
    # finds them by index even before the table has statistics (a first sync).
    sa.UniqueConstraint("external_id", "tenant_id", "integration_id", name="uq_repositories_external"),
    sa.ForeignKeyConstraint(*_OF_INTEGRATION, name="fk_repositories_integration"),
)


def upgrade() -> None:
    repositories.create(op.get_bind())


def downgrade() -> None:
    repositories.drop(op.get_bind())
