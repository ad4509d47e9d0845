"""The schema, the engine, and the SQL shapes every stage needs (batch insert, upsert, now).

One schema serves SQLite and PostgreSQL: JSON becomes JSONB on PostgreSQL (raw payloads plain
`json`), timestamps are stored as UTC and always come back timezone-aware, and upserts use
each dialect's own `INSERT ... ON CONFLICT`, so a batch of rows is one statement: on SQLite a
native executemany, on PostgreSQL one JSON parameter that the server unpacks.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.visitors import InternalTraversal

from .. import config, logs, records

RAW_FILLFACTOR = 50
OVERALL_STATES = records.OVERALL_STATES  # ("READY", "RUNNING", "FINISHED", "FAILED")

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
"""Queryable JSON (JSONB on PostgreSQL) for settings and status; raw payloads use plain `json`,
which PostgreSQL stores as text without parsing it into JSONB: a third cheaper to insert, and
payloads are archived far more often than they are queried."""


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(sa.types.TypeDecorator[dt.datetime]):
    """A timestamp that is stored in UTC and read back timezone-aware on every dialect.

    SQLite has no time zone type, so without this a value would come back naive and compare
    wrongly with aware ones; naive values are refused on the way in for the same reason.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: sa.Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: ghetl stores timezone-aware UTC only")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: sa.Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


metadata = sa.MetaData()


def _timestamps() -> list[sa.Column[Any]]:
    return [
        sa.Column("created_at", UTCDateTime, nullable=False, default=utcnow),
        sa.Column("updated_at", UTCDateTime, nullable=False, default=utcnow, onupdate=utcnow),
    ]


tenants = sa.Table(
    "tenants",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(200), nullable=False, unique=True),
    sa.Column("stream_key_hash", sa.String(200)),
    sa.Column("active", sa.Boolean, nullable=False, default=True),
    *_timestamps(),
)

integrations = sa.Table(
    "integrations",
    metadata,
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
    metadata,
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
    metadata,
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
    metadata,
    sa.Column("run_id", sa.String(40), primary_key=True),
    sa.Column("step", sa.String(100), primary_key=True),
    sa.Column("status", sa.String(30), primary_key=True),
    sa.Column("n", sa.Integer, nullable=False),
)

raw_extraction_data = sa.Table(
    "raw_extraction_data",
    metadata,
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

repositories = sa.Table(
    "repositories",
    metadata,
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

# Phase 4: a pull request and its children (DESIGN.md, "Phase 4 contract"). A child row belongs to
# its pull request alone (a commit in two pull requests is stored for each), so a complete refetch
# replaces them: what was rebased away or deleted on GitHub leaves here too.
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
    metadata,
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
    metadata,
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
    metadata,
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
    metadata,
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

embeddings = sa.Table(
    "embeddings",
    metadata,
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
    metadata,
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

# Messages the workers gave up on (poison, or out of attempts), kept where every back end can
# read them: `ghetl dead-letters` lists, replays and drops them. No foreign keys: a poison
# message may name a tenant or job that does not exist, and must still be kept.
dead_letters = sa.Table(
    "dead_letters",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("tenant_id", sa.Integer, index=True),
    sa.Column("job_id", sa.Integer),
    sa.Column("run_id", sa.String(40)),
    sa.Column("step", sa.String(100)),
    sa.Column("stage", sa.String(20), nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False, default=utcnow),
)

schema_info = sa.Table(
    "ghetl_schema",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("upgraded_at", UTCDateTime, nullable=False, default=utcnow),
)


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    """WAL lets readers (notebooks, the status board) work while a sync writes; the pysqlite
    driver's own transaction handling is switched off so that `_sqlite_begin` decides."""
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=60000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    """Take the write lock at BEGIN: a deferred transaction that reads and then writes can fail
    with 'database is locked' without waiting when another thread committed in between."""
    conn.exec_driver_sql("BEGIN IMMEDIATE")


_engines: dict[str, Engine] = {}


def engine(url: str | None = None) -> Engine:
    """One pooled engine per URL per process, so every stage shares connections."""
    url = url or config.database_url()
    if url not in _engines:
        try:
            _engines[url] = _create_engine(url)
        except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError, ValueError) as exc:
            raise ValueError(
                f"cannot use the database URL '{logs.safe_url(url)}' ({logs.first_line(exc)}); "
                "set GHETL_DATABASE_URL to "
                "postgresql+psycopg2://USER@HOST:5432/DATABASE or sqlite:///PATH"
            ) from exc
    return _engines[url]


def _create_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        eng = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 60},
                               json_serializer=_dumps, json_deserializer=orjson.loads)
        sa.event.listen(eng, "connect", _sqlite_on_connect)
        sa.event.listen(eng, "begin", _sqlite_begin)
        return eng
    return sa.create_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True,
                            json_serializer=_dumps, json_deserializer=orjson.loads)


def _dumps(value: Any) -> str:
    """JSON columns through orjson: raw payloads are most of the bytes a sync moves, and orjson
    reads and writes them several times faster than the json module."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def dispose_engines() -> None:
    """Close every pooled connection; needed after fork and in tests that drop databases."""
    for eng in _engines.values():
        eng.dispose()
    _engines.clear()


def dialect_insert(dialect: str, table: sa.Table) -> Any:
    """The INSERT of the dialect (a name, as `conn.dialect.name`), which is the one that has ON CONFLICT."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return insert(table)


class Unindexed(sa.ColumnElement[Any]):
    """A column that SQLite's planner must not look up by index (`+column`); the column itself
    on other dialects.

    For `id IN (100 ids) AND run_id = :run`, SQLite, which keeps no statistics, prefers the
    index on `run_id` to a hundred rowid lookups, and then reads every row of the run: at
    100 000 repositories each of the 2 000 status moves of a run read them all, and the
    statement took 15 ms instead of 3 (a seventh of the embedded run's time, growing with N²).
    Wrapping the run's column leaves the rowids as the only way in.
    """

    inherit_cache = True
    _traverse_internals = [("column", InternalTraversal.dp_clauseelement)]  # noqa: RUF012  (SQLAlchemy's own shape)

    def __init__(self, column: sa.ColumnElement[Any]) -> None:
        self.column = column
        self.type = column.type


@compiles(Unindexed)
def _unindexed(element: Unindexed, compiler: Any, **kw: Any) -> str:
    text: str = compiler.process(element.column, **kw)
    return text


@compiles(Unindexed, "sqlite")
def _unindexed_sqlite(element: Unindexed, compiler: Any, **kw: Any) -> str:
    return f"+{compiler.process(element.column, **kw)}"


def insert(conn: Connection, table: sa.Table, rows: Sequence[dict[str, Any]]) -> list[int]:
    """Insert rows as one statement; return their new ids in the order of `rows`."""
    if not rows:
        return []
    if conn.dialect.name != "postgresql":
        stmt = table.insert().returning(table.c.id, sort_by_parameter_order=True)
        return list(conn.execute(stmt, list(rows)).scalars())
    # Ids come from the sequence in the order of ORDER BY; RETURNING itself promises no order.
    return sorted(conn.execute(_insert_statement(table, tuple(rows[0])), _batch_params(table, rows)).scalars())


def upsert(
    conn: Connection,
    table: sa.Table,
    rows: Sequence[dict[str, Any]],
    keys: Iterable[str],
    *,
    changed_when: str | None = None,
    newest: tuple[str, str] | None = None,
) -> None:
    """Insert rows, or update the existing row with the same keys, as one statement.

    On PostgreSQL the whole batch travels as one JSON parameter that the server unpacks with
    `json_populate_recordset`: a multi-row VALUES of a hundred 25-column rows has 2 500
    parameters for SQLAlchemy to process, psycopg2 to quote and PostgreSQL to parse, which
    cost over ten times the client CPU. SQLite gets a native executemany.
    PostgreSQL refuses a statement that updates one row twice, so rows repeating a key are
    merged, the last one winning. With `changed_when` (a column name), an existing row is only
    touched when that column's value differs, so a redelivered message writes nothing at all.
    With `newest` (GitHub's version column, then the time the payload was fetched), an existing
    row is never replaced by an older version: a late message of an earlier run, or a payload
    taken over from one, cannot undo what a later one stored.
    """
    if not rows:
        return
    keys = tuple(keys)
    rows = list({tuple(row[k] for k in keys): row for row in rows}.values())
    if "updated_at" in table.c and "updated_at" not in rows[0]:
        now = utcnow()
        rows = [{**row, "updated_at": now} for row in rows]
    postgres = conn.dialect.name == "postgresql"
    stmt = _upsert_statement(table, tuple(rows[0]), keys, changed_when, newest, postgres)
    conn.execute(stmt, _batch_params(table, rows) if postgres else rows)


@functools.lru_cache(maxsize=64)
def _insert_statement(table: sa.Table, columns: tuple[str, ...]) -> Any:
    """Built once per table and row shape: building a statement costs more than running it."""
    return table.insert().from_select(columns, _batch_select(table, columns, ordered=True)).returning(table.c.id)


@functools.lru_cache(maxsize=64)
def _upsert_statement(
    table: sa.Table, columns: tuple[str, ...], keys: tuple[str, ...], changed_when: str | None,
    newest: tuple[str, str] | None, postgres: bool,
) -> Any:
    stmt: postgresql.Insert | sqlite.Insert
    if postgres:
        stmt = postgresql.insert(table).from_select(columns, _batch_select(table, columns))
    else:
        stmt = sqlite.insert(table)
    updated = {c: stmt.excluded[c] for c in columns if c not in keys and c != "created_at"}
    conditions = []
    if changed_when is not None:
        conditions.append(table.c[changed_when].is_distinct_from(stmt.excluded[changed_when]))
    if newest is not None:
        conditions.append(_not_older(table, stmt.excluded, *newest))
    return stmt.on_conflict_do_update(
        index_elements=keys, set_=updated, where=sa.and_(*conditions) if conditions else None
    )


def _not_older(table: sa.Table, excluded: Any, version: str, fetched: str) -> Any:
    """The incoming row is at least as new as the stored one: a later version, or the same
    version fetched no earlier. A stored row without a version yields to anything."""
    old_v, new_v, old_f, new_f = table.c[version], excluded[version], table.c[fetched], excluded[fetched]
    return sa.or_(old_v.is_(None), new_v > old_v,
                  sa.and_(new_v == old_v, sa.or_(old_f.is_(None), new_f.is_(None), new_f >= old_f)))


def _beside(column: sa.Column[Any]) -> tuple[Any, Any] | None:
    """How a column travels beside the JSON batch, if it does: (array type, cast of each element).

    A raw payload (plain `json`) inside the batch would be parsed twice, as part of the batch
    and again into its column; bytes would have to be spelled as hex inside JSON. As a text[]
    or a bytea[] each value is read once: a third less server CPU for embeddings, measured.
    """
    if _is_plain_json(column):
        return postgresql.ARRAY(sa.Text), postgresql.JSON
    if isinstance(column.type, sa.LargeBinary):
        return postgresql.ARRAY(postgresql.BYTEA), None
    return None


@functools.lru_cache(maxsize=64)
def _beside_columns(table: sa.Table, columns: tuple[str, ...]) -> tuple[str, ...]:
    """The columns of a row shape that travel beside the batch: decided once per shape, as the
    statement is, rather than again for every batch."""
    return tuple(c for c in columns if _beside(table.c[c]))


@functools.lru_cache(maxsize=64)
def _is_plain_json(column: sa.Column[Any]) -> bool:
    """`json` on PostgreSQL (raw payloads), not one of the JSONB columns; asked for every batch."""
    impl = column.type.dialect_impl(_POSTGRESQL)
    return isinstance(impl, postgresql.JSON) and not isinstance(impl, postgresql.JSONB)


_POSTGRESQL = postgresql.dialect()  # type: ignore[no-untyped-call]  # SQLAlchemy leaves the dialect's __init__ unannotated


def _batch_select(table: sa.Table, columns: tuple[str, ...], *, ordered: bool = False) -> Any:
    """SELECT the columns from `json_populate_recordset(NULL::table, :rows)`, numbered by `ordinality`,
    joined by position with one unnested array per column that travels beside the batch.

    Each value goes through the input function of its column's type, as a literal would.
    """
    beside = _beside_columns(table, columns)
    records = sa.func.json_populate_recordset(
        sa.literal_column(f"NULL::{table.name}"), sa.cast(sa.bindparam("rows"), postgresql.JSON)
    ).table_valued(*(c for c in columns if c not in beside), with_ordinality="ordinality")
    source: Any = records
    values: dict[str, Any] = {c: records.c[c] for c in columns if c not in beside}
    for n, name in enumerate(beside):
        travels = _beside(table.c[name])
        assert travels is not None, name  # _beside_columns chose it for that
        array_type, element_cast = travels
        unnested = sa.func.unnest(sa.cast(sa.bindparam(f"beside_{n}"), array_type))
        array = unnested.table_valued("value", with_ordinality="n").render_derived(name=f"beside_{n}")
        source = source.join(array, array.c.n == records.c.ordinality)
        values[name] = array.c.value if element_cast is None else sa.cast(array.c.value, element_cast)
    select = sa.select(*(values[c] for c in columns)).select_from(source)
    return select.order_by(records.c.ordinality) if ordered else select


def _batch_params(table: sa.Table, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The JSON batch and the arrays beside it. Datetimes are written by orjson itself (a naive
    one as UTC, the only time ghetl stores); Python-side defaults are added by SQLAlchemy."""
    beside = _beside_columns(table, tuple(rows[0]))
    records = [{k: v for k, v in row.items() if k not in beside} for row in rows] if beside else rows
    params: dict[str, Any] = {
        "rows": orjson.dumps(list(records), option=orjson.OPT_NAIVE_UTC | orjson.OPT_NON_STR_KEYS).decode()
    }
    for n, name in enumerate(beside):
        as_text = _is_plain_json(table.c[name])
        params[f"beside_{n}"] = [_dumps(row[name]) if as_text else row[name] for row in rows]
    return params
