"""Revision 0001: the job's core tables (tenants, integrations, jobs, runs, raw payloads, vectors, page cache).

Frozen: the tables exactly as this revision created them, on a MetaData of its own, so that
what later revisions change in `ghetl.db` never changes what this one does. An older ghetl's
database (before Alembic, `ghetl_schema` version 1 to 4) is brought to this shape by
`ghetl.migrate.upgrade_legacy` and then stamped with it.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

from ghetl.store.db import JSON, OVERALL_STATES, RAW_FILLFACTOR, UTCDateTime, utcnow

revision = "0001_core"
down_revision = None
branch_labels = None
depends_on = None

meta = sa.MetaData()


def _timestamps() -> list[sa.Column[Any]]:
    return [
        sa.Column("created_at", UTCDateTime, nullable=False, default=utcnow),
        sa.Column("updated_at", UTCDateTime, nullable=False, default=utcnow, onupdate=utcnow),
    ]


tenants = sa.Table(
    "tenants",
    meta,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(200), nullable=False, unique=True),
    sa.Column("stream_key_hash", sa.String(200)),
    sa.Column("active", sa.Boolean, nullable=False, default=True),
    *_timestamps(),
)

integrations = sa.Table(
    "integrations",
    meta,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("tenant_id", sa.Integer, sa.ForeignKey("tenants.id"), nullable=False, index=True),
    sa.Column("provider", sa.String(50), nullable=False, default="github"),
    sa.Column("owner", sa.String(200), nullable=False),
    sa.Column("owner_type", sa.String(20)),
    sa.Column("api_url", sa.String(500), nullable=False),
    sa.Column("token_env", sa.String(200), nullable=False),
    sa.Column("settings", JSON, nullable=False, default=dict),
    sa.Column("active", sa.Boolean, nullable=False, default=True),
    *_timestamps(),
    sa.UniqueConstraint("tenant_id", "id", name="uq_integrations_tenant"),
)

# The tables below reference their tenant and integration as one pair, through the
# integration's (tenant_id, id): one foreign-key check per row where a key per column took
# two (each check a lookup of its own, 2 to 3 ms of server CPU per page of 100 rows, measured),
# and a row can no longer name an integration of another tenant.
_OF_INTEGRATION = (["tenant_id", "integration_id"], ["integrations.tenant_id", "integrations.id"])

etl_jobs = sa.Table(
    "etl_jobs",
    meta,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("tenant_id", sa.Integer, nullable=False, index=True),
    sa.Column("integration_id", sa.Integer, nullable=False),
    sa.Column("job_name", sa.String(100), nullable=False),
    sa.Column("status", JSON, nullable=False),
    sa.Column("run_id", sa.String(40)),
    sa.Column("last_sync_date", UTCDateTime),
    sa.Column("last_run_started_at", UTCDateTime),
    sa.Column("last_run_finished_at", UTCDateTime),
    sa.Column("heartbeat_at", UTCDateTime),
    sa.Column("error_message", sa.Text),
    sa.Column("active", sa.Boolean, nullable=False, default=True),
    *_timestamps(),
    sa.UniqueConstraint("tenant_id", "integration_id", "job_name", name="uq_etl_jobs_integration_job"),
    sa.UniqueConstraint("id", "tenant_id", "integration_id", name="uq_etl_jobs_scope"),
    sa.ForeignKeyConstraint(*_OF_INTEGRATION, name="fk_etl_jobs_integration"),
)
etl_jobs.append_constraint(
    sa.CheckConstraint(etl_jobs.c.status["overall"].as_string().in_(OVERALL_STATES), name="ck_etl_jobs_overall")
)

etl_job_runs = sa.Table(
    "etl_job_runs",
    meta,
    sa.Column("run_id", sa.String(40), primary_key=True),
    sa.Column("job_id", sa.Integer, sa.ForeignKey("etl_jobs.id"), nullable=False, index=True),
    sa.Column("tenant_id", sa.Integer, sa.ForeignKey("tenants.id"), nullable=False),
    sa.Column("full", sa.Boolean, nullable=False, default=False),
    # Run without a token: GitHub showed it public repositories only (NULL in rows of older runs).
    sa.Column("anonymous", sa.Boolean, default=False),
    sa.Column("cutoff", UTCDateTime),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("finished_at", UTCDateTime),
    sa.Column("overall", sa.String(20), nullable=False, default="RUNNING"),
    sa.Column("totals", JSON, nullable=False, default=dict),
    sa.Column("stats", JSON, nullable=False, default=dict),
    sa.Column("error_message", sa.Text),
    # The process that owns the run: on its own host, a run whose process is gone is taken over at once.
    sa.Column("host", sa.String(255)),
    sa.Column("pid", sa.Integer),
    sa.Column("process_started", sa.Float),
)

etl_run_counts = sa.Table(
    "etl_run_counts",
    meta,
    sa.Column("run_id", sa.String(40), primary_key=True),
    sa.Column("step", sa.String(100), primary_key=True),
    sa.Column("status", sa.String(30), primary_key=True),
    sa.Column("n", sa.Integer, nullable=False),
)

raw_extraction_data = sa.Table(
    "raw_extraction_data",
    meta,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("tenant_id", sa.Integer, nullable=False),
    sa.Column("integration_id", sa.Integer, nullable=False),
    sa.Column("job_id", sa.Integer),
    sa.Column("run_id", sa.String(40)),
    sa.Column("entity_type", sa.String(100), nullable=False),
    sa.Column("external_id", sa.String(100), nullable=False),
    sa.Column("parent_external_id", sa.String(100)),
    sa.Column("raw_data", sa.JSON, nullable=False),
    sa.Column("status", sa.String(20), nullable=False, default="pending"),
    sa.Column("failed_stage", sa.String(20)),
    sa.Column("error_message", sa.Text),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    # How many later runs took the item over unfinished (see carryover.py); NULL is none.
    sa.Column("carried_over", sa.Integer, default=0),
    *_timestamps(),
    # No index holds `status`: each item changes it twice, and on PostgreSQL an update that
    # touches no indexed column and finds room on its page is a cheap in-page (HOT) update
    # instead of a new row version elsewhere with new index entries; half-full pages leave
    # that room (payloads are stored apart, so the rows themselves are small).
    sa.Index("ix_raw_extraction_data_run", "run_id", "entity_type"),
    sa.Index("ix_raw_extraction_data_entity", "tenant_id", "entity_type", "external_id"),
    # Its job, which is its tenant's and integration's (the job's own key checks those), in
    # one check; MATCH FULL, since a missing job would otherwise skip the check altogether.
    sa.ForeignKeyConstraint(["job_id", "tenant_id", "integration_id"],
                            ["etl_jobs.id", "etl_jobs.tenant_id", "etl_jobs.integration_id"],
                            name="fk_raw_extraction_data_job", match="FULL"),
    postgresql_with={"fillfactor": RAW_FILLFACTOR},
)

embeddings = sa.Table(
    "embeddings",
    meta,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("tenant_id", sa.Integer, nullable=False),
    sa.Column("integration_id", sa.Integer, nullable=False),
    sa.Column("table_name", sa.String(100), nullable=False),
    sa.Column("external_id", sa.String(100), nullable=False),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("dimension", sa.Integer, nullable=False),
    sa.Column("vector", sa.LargeBinary, nullable=False),
    sa.Column("content_hash", sa.String(64), nullable=False),
    *_timestamps(),
    sa.UniqueConstraint(
        "external_id", "tenant_id", "integration_id", "table_name", "model", name="uq_embeddings_record_model"
    ),
    sa.ForeignKeyConstraint(*_OF_INTEGRATION, name="fk_embeddings_integration"),
)

http_cache = sa.Table(
    "http_cache",
    meta,
    sa.Column("integration_id", sa.Integer, sa.ForeignKey("integrations.id"), primary_key=True),
    sa.Column("url", sa.String(1000), primary_key=True),
    sa.Column("etag", sa.String(200)),
    sa.Column("last_modified", sa.String(100)),
    sa.Column("item_ids", JSON, nullable=False, default=list),
    sa.Column("next_url", sa.String(1000)),
    sa.Column("fingerprint", sa.String(64)),
    sa.Column("oldest_updated_at", UTCDateTime),
    *_timestamps(),
)

schema_info = sa.Table(
    "ghetl_schema",
    meta,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("upgraded_at", UTCDateTime, nullable=False, default=utcnow),
)


def upgrade() -> None:
    bind = op.get_bind()
    meta.create_all(bind)
    if bind.dialect.name == "postgresql":
        from ghetl.store.migrate import tune_raw_storage

        tune_raw_storage(bind)


def downgrade() -> None:
    meta.drop_all(op.get_bind())
