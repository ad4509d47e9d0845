"""`ghetl init` on a database an older ghetl created: it upgrades in place and loses nothing."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from ghetl import tenants
from ghetl.store import db, migrate
from ghetl.store.db import embeddings, repositories

from .conftest import Backend

DATA = Path(__file__).parent / "data"

OLD_ORDER = {
    "uq_repositories_external": ("repositories", ["tenant_id", "integration_id", "external_id"]),
    "uq_embeddings_record_model": ("embeddings", ["tenant_id", "integration_id", "table_name", "external_id", "model"]),
}


def unique_columns(engine: sa.Engine) -> dict[str, list[str]]:
    inspector = sa.inspect(engine)
    return {u["name"]: u["column_names"] for t in ("repositories", "embeddings")
            for u in inspector.get_unique_constraints(t)}


SCHEMA_2_KEYS = {  # table: the foreign keys schema 2 declared, one per column
    "raw_extraction_data": [("tenant_id", "tenants"), ("integration_id", "integrations"), ("job_id", "etl_jobs")],
    "repositories": [("tenant_id", "tenants"), ("integration_id", "integrations")],
    "embeddings": [("tenant_id", "tenants"), ("integration_id", "integrations")],
    "etl_jobs": [("tenant_id", "tenants"), ("integration_id", "integrations")],
}


def foreign_keys(engine: sa.Engine, table: str) -> set[tuple[tuple[str, ...], str]]:
    return {(tuple(fk["constrained_columns"]), fk["referred_table"])
            for fk in sa.inspect(engine).get_foreign_keys(table)}


def as_schema_2(conn: sa.Connection) -> None:
    """Put back what schema 2 had: per-column foreign keys, no composite ones or their targets."""
    for table, keys in SCHEMA_2_KEYS.items():
        for fk in sa.inspect(conn).get_foreign_keys(table):
            conn.exec_driver_sql(f'ALTER TABLE {table} DROP CONSTRAINT "{fk["name"]}"')
        for column, referred in keys:
            conn.exec_driver_sql(f"ALTER TABLE {table} ADD FOREIGN KEY ({column}) REFERENCES {referred} (id)")
    conn.exec_driver_sql("ALTER TABLE integrations DROP CONSTRAINT uq_integrations_tenant")
    conn.exec_driver_sql("ALTER TABLE etl_jobs DROP CONSTRAINT uq_etl_jobs_scope")


def raw_storage(engine: sa.Engine) -> tuple[str, list[str] | None]:
    """How PostgreSQL compresses new raw payloads (p: pglz, l: lz4) and the raw table's options."""
    with engine.connect() as conn:
        return tuple(conn.exec_driver_sql(
            "SELECT a.attcompression, c.reloptions FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
            "WHERE c.relname = 'raw_extraction_data' AND a.attname = 'raw_data'"
        ).one())


def as_legacy(conn: sa.Connection, version: int) -> None:
    """What a ghetl from before Alembic left: no alembic_version, its own schema version, and
    none of the tables and columns added since."""
    conn.exec_driver_sql("DROP TABLE alembic_version")
    for table in ("pull_request_comments", "pull_request_reviews", "pull_request_commits", "pull_requests",
                  "dead_letters"):
        conn.exec_driver_sql(f"DROP TABLE {table}")
    conn.execute(db.schema_info.delete())
    conn.execute(db.schema_info.insert().values(version=version))
    for table, column in (("raw_extraction_data", "carried_over"), ("repositories", "fetched_at")):
        conn.exec_driver_sql(f"ALTER TABLE {table} DROP COLUMN {column}")


def test_init_upgrades_schema_1_keeping_every_row(backend, tenant):
    first = backend.sync(tenant)
    assert first.overall == "FINISHED"
    with backend.engine.begin() as conn:
        as_legacy(conn, 1)
    if backend.engine.dialect.name == "postgresql":
        with backend.engine.begin() as conn:
            for name, (table, columns) in OLD_ORDER.items():
                conn.exec_driver_sql(f"ALTER TABLE {table} DROP CONSTRAINT {name}, "
                                     f"ADD CONSTRAINT {name} UNIQUE ({', '.join(columns)})")
            conn.exec_driver_sql("ALTER TABLE raw_extraction_data ALTER COLUMN raw_data SET COMPRESSION pglz, "
                                 "RESET (fillfactor)")
            as_schema_2(conn)
        assert len(foreign_keys(backend.engine, "raw_extraction_data")) == 3
        assert unique_columns(backend.engine)["uq_repositories_external"][0] == "tenant_id"
        assert raw_storage(backend.engine) == ("p", None)

    assert migrate.init(backend.engine) == migrate.SCHEMA_VERSION

    with backend.engine.connect() as conn:
        stored = conn.execute(sa.select(sa.func.count()).select_from(repositories)).scalar()
        vectors = conn.execute(sa.select(sa.func.count()).select_from(embeddings)).scalar()
    assert stored == vectors == first.counts["github_repositories"]["embedded"] > 0
    if backend.engine.dialect.name == "postgresql":
        assert unique_columns(backend.engine) == {
            "uq_repositories_external": ["external_id", "tenant_id", "integration_id"],
            "uq_embeddings_record_model": ["external_id", "tenant_id", "integration_id", "table_name", "model"],
        }
        assert raw_storage(backend.engine) == ("l", [f"fillfactor={db.RAW_FILLFACTOR}"])
        assert foreign_keys(backend.engine, "raw_extraction_data") == {
            (("job_id", "tenant_id", "integration_id"), "etl_jobs")}
        for table in ("repositories", "embeddings", "etl_jobs"):
            assert foreign_keys(backend.engine, table) == {(("tenant_id", "integration_id"), "integrations")}
    again = backend.sync(tenant, full=True)
    assert again.overall == "FINISHED"
    with backend.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(repositories)).scalar() == stored


def test_a_row_cannot_name_another_tenants_integration(backend, tenant):
    """The tenant and the integration are checked as a pair: each exists, but not together."""
    with backend.engine.begin() as conn:
        other_tenant, _ = tenants.add_tenant(conn, "someone-else")
        own_tenant = tenants.get_tenant(conn, tenant)["id"]
        integration_id = conn.execute(sa.select(db.integrations.c.id).where(
            db.integrations.c.tenant_id == own_tenant)).scalar_one()
    row = {"tenant_id": other_tenant, "integration_id": integration_id, "external_id": "1", "name": "x",
           "full_name": "o/x", "content_hash": "0" * 64}
    with pytest.raises(sa.exc.IntegrityError), backend.engine.begin() as conn:
        conn.execute(repositories.insert().values(**row))
    with backend.engine.begin() as conn:
        conn.execute(repositories.insert().values(**{**row, "tenant_id": own_tenant}))
        assert conn.execute(sa.select(sa.func.count()).select_from(repositories)).scalar() == 1


def test_init_lets_repositories_deactivated_by_an_earlier_ghetl_come_back(backend, sandbox, tenant):
    backend.sync(tenant)
    gone, kept = (str(r["id"]) for r in sandbox.repos("acme")[:2])
    with backend.engine.begin() as conn:  # what an earlier ghetl's deactivation left: the hash kept
        conn.execute(repositories.update().where(repositories.c.external_id == gone).values(active=False))
        as_legacy(conn, 3)

    migrate.init(backend.engine)
    result = backend.sync(tenant, full=True)

    assert result.overall == "FINISHED"
    assert backend.scalar(f"select active from repositories where external_id = '{gone}'")
    assert backend.scalar(f"select content_hash from repositories where external_id = '{kept}'") != ""


def test_init_refuses_a_database_a_newer_ghetl_upgraded(backend):
    with backend.engine.begin() as conn:
        conn.execute(db.schema_info.insert().values(version=migrate.SCHEMA_VERSION + 1))
    before = foreign_keys(backend.engine, "repositories")

    with pytest.raises(ValueError, match=f"schema {migrate.SCHEMA_VERSION + 1}, newer"):
        migrate.init(backend.engine)

    assert foreign_keys(backend.engine, "repositories") == before
    assert backend.scalar("select count(*) from ghetl_schema") == 2


def test_init_refuses_a_revision_it_does_not_know(backend):
    with backend.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0099_from_the_future'")

    with pytest.raises(ValueError, match="revision 0099_from_the_future, which this ghetl does not know"):
        migrate.init(backend.engine)


def test_a_new_database_is_exactly_the_schema_in_code(backend):
    """The frozen revisions and `ghetl.db`'s tables agree: Alembic's own comparison finds nothing."""
    with backend.engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), db.metadata)
        assert migrate.revision(conn) == ScriptDirectory.from_config(migrate.alembic_config()).get_current_head()
    assert differences == []


def load_schema_4(backend: Backend) -> None:
    """A database as the last ghetl before Alembic made it (two syncs of 15 repositories, one
    full after a change and a deletion), from its dump in tests/data."""
    dialect = backend.engine.dialect.name
    dump = gzip.decompress((DATA / f"schema-4-{dialect}.sql.gz").read_bytes()).decode()
    raw = backend.engine.raw_connection()
    try:
        if dialect == "sqlite":
            for table in sa.inspect(backend.engine).get_table_names():
                raw.execute(f"DROP TABLE {table}")
            raw.executescript(dump)
        else:
            cursor = raw.cursor()
            cursor.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
            cursor.execute("\n".join(line for line in dump.splitlines() if not line.startswith("\\")))
            raw.commit()
    finally:
        raw.close()
    backend.engine.dispose()


def every_row(engine: sa.Engine, tables: list[str]) -> dict[str, set[tuple[Any, ...]]]:
    """Every row of every table, as it is stored (JSON values as their canonical text)."""
    def cell(value: Any) -> Any:
        return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value

    with engine.connect() as conn:
        return {t: {tuple(cell(v) for v in r) for r in conn.exec_driver_sql(f"SELECT * FROM {t}")} for t in tables}


def test_init_upgrades_a_schema_4_database_keeping_every_row(backend, make_sandbox, token):
    load_schema_4(backend)
    tables = [t for t in sa.inspect(backend.engine).get_table_names() if t != "ghetl_schema"]
    before = every_row(backend.engine, tables)
    assert sum(len(rows) for rows in before.values()) > 50

    assert migrate.init(backend.engine) == migrate.SCHEMA_VERSION

    after = every_row(backend.engine, tables)
    for table in tables:
        width = len(next(iter(before[table]), ()))
        assert {row[:width] for row in after[table]} == before[table], table
    with backend.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), db.metadata) == []
    sandbox = make_sandbox(orgs={"acme": 15}, seed=5)
    with backend.engine.begin() as conn:
        conn.execute(db.integrations.update().values(api_url=sandbox.url))
    result = backend.sync("acme-corp", full=True)
    assert result.overall == "FINISHED", result.error
    assert backend.scalar("SELECT count(*) FROM repositories WHERE active") == 15
