"""Revision 0004: the `github_pull_requests` step's tables: pull requests, their commits, reviews
and comments.

Frozen like 0002: the tables as this revision created them, on a MetaData of its own.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

from ghetl.store.db import UTCDateTime, utcnow

revision = "0004_github_pull_requests"
down_revision = "0003_dead_letters"
branch_labels = None
depends_on = None

meta = sa.MetaData()

# What the tables refer to, as created by earlier revisions: named here for the keys, never created here.
REFERENCED = ("integrations", "repositories")
sa.Table("integrations", meta, sa.Column("id", sa.Integer, primary_key=True), sa.Column("tenant_id", sa.Integer))
sa.Table("repositories", meta, sa.Column("id", sa.Integer, primary_key=True))

_OF_INTEGRATION = (["tenant_id", "integration_id"], ["integrations.tenant_id", "integrations.id"])


def _timestamps() -> list[sa.Column[Any]]:
    return [
        sa.Column("created_at", UTCDateTime, nullable=False, default=utcnow),
        sa.Column("updated_at", UTCDateTime, nullable=False, default=utcnow, onupdate=utcnow),
    ]


_PULL_REQUEST_CHILD = (["pull_request_id"], ["pull_requests.id"])


def _of_pull_request(name: str) -> list[Any]:
    return [
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("tenant_id", sa.Integer, nullable=False),
        sa.Column("integration_id", sa.Integer, nullable=False),
        sa.Column("pull_request_id", sa.Integer, nullable=False, index=True),
        sa.Column("external_id", sa.String(100), nullable=False),
        sa.Column("last_synced_at", UTCDateTime, nullable=False),
        sa.ForeignKeyConstraint(*_PULL_REQUEST_CHILD, name=f"fk_{name}_pull_request", ondelete="CASCADE"),
    ]


pull_requests = sa.Table(
    "pull_requests",
    meta,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("tenant_id", sa.Integer, nullable=False),
    sa.Column("integration_id", sa.Integer, nullable=False),
    sa.Column("external_id", sa.String(100), nullable=False),
    sa.Column("repository_id", sa.Integer, sa.ForeignKey("repositories.id", name="fk_pull_requests_repository",
                                                          ondelete="CASCADE"), nullable=False),
    sa.Column("database_id", sa.BigInteger),
    sa.Column("number", sa.Integer, nullable=False),
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("body", sa.Text),
    sa.Column("url", sa.String(1000)),
    sa.Column("state", sa.String(10), nullable=False),
    sa.Column("is_draft", sa.Boolean, nullable=False, default=False),
    sa.Column("author_login", sa.String(200)),
    sa.Column("merged_by_login", sa.String(200)),
    sa.Column("base_ref", sa.String(500)),
    sa.Column("head_ref", sa.String(500)),
    sa.Column("merge_commit_sha", sa.String(64)),
    sa.Column("additions", sa.Integer),
    sa.Column("deletions", sa.Integer),
    sa.Column("changed_files", sa.Integer),
    sa.Column("commits_total", sa.Integer),
    sa.Column("reviews_total", sa.Integer),
    sa.Column("comments_total", sa.Integer),
    sa.Column("review_decision", sa.String(30)),
    sa.Column("gh_created_at", UTCDateTime),
    sa.Column("gh_updated_at", UTCDateTime),
    sa.Column("closed_at", UTCDateTime),
    sa.Column("merged_at", UTCDateTime),
    sa.Column("first_commit_at", UTCDateTime),
    sa.Column("first_review_at", UTCDateTime),
    sa.Column("first_approval_at", UTCDateTime),
    sa.Column("fetched_at", UTCDateTime),
    sa.Column("last_synced_at", UTCDateTime, nullable=False),
    *_timestamps(),
    sa.UniqueConstraint("external_id", "tenant_id", "integration_id", name="uq_pull_requests_external"),
    sa.UniqueConstraint("repository_id", "number", name="uq_pull_requests_number"),
    sa.ForeignKeyConstraint(*_OF_INTEGRATION, name="fk_pull_requests_integration"),
)

pull_request_commits = sa.Table(
    "pull_request_commits",
    meta,
    *_of_pull_request("pull_request_commits"),
    sa.Column("sha", sa.String(64), nullable=False),
    sa.Column("message_headline", sa.Text),
    sa.Column("author_name", sa.String(300)),
    sa.Column("author_email", sa.String(300)),
    sa.Column("author_login", sa.String(200)),
    sa.Column("authored_at", UTCDateTime),
    sa.Column("committer_name", sa.String(300)),
    sa.Column("committed_at", UTCDateTime),
    sa.Column("additions", sa.Integer),
    sa.Column("deletions", sa.Integer),
    sa.UniqueConstraint("pull_request_id", "sha", name="uq_pull_request_commits_sha"),
)

pull_request_reviews = sa.Table(
    "pull_request_reviews",
    meta,
    *_of_pull_request("pull_request_reviews"),
    sa.Column("state", sa.String(30), nullable=False),
    sa.Column("author_login", sa.String(200)),
    sa.Column("body", sa.Text),
    sa.Column("submitted_at", UTCDateTime),
    sa.Column("commit_sha", sa.String(64)),
    sa.UniqueConstraint("pull_request_id", "external_id", name="uq_pull_request_reviews_external"),
)

pull_request_comments = sa.Table(
    "pull_request_comments",
    meta,
    *_of_pull_request("pull_request_comments"),
    sa.Column("kind", sa.String(10), nullable=False),
    sa.Column("author_login", sa.String(200)),
    sa.Column("body", sa.Text),
    sa.Column("gh_created_at", UTCDateTime),
    sa.Column("gh_updated_at", UTCDateTime),
    sa.Column("path", sa.Text),
    sa.Column("line", sa.Integer),
    sa.Column("thread_external_id", sa.String(100)),
    sa.Column("review_external_id", sa.String(100)),
    sa.Column("reply_to_external_id", sa.String(100)),
    sa.Column("thread_resolved", sa.Boolean),
    sa.UniqueConstraint("pull_request_id", "external_id", name="uq_pull_request_comments_external"),
)


TABLES = (pull_requests, pull_request_commits, pull_request_reviews, pull_request_comments)


def upgrade() -> None:
    for table in TABLES:
        table.create(op.get_bind())


def downgrade() -> None:
    for table in reversed(TABLES):
        table.drop(op.get_bind())
