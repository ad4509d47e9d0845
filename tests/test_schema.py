"""`ghetl init` on a database an older ghetl created: it upgrades in place and loses nothing."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from ghetl import db, tenants
from ghetl.db import embeddings, repositories

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
    return {(tuple(fk["constrained_columns"]), fk["referred_table"]) for fk in sa.inspect(engine).get_foreign_keys(table)}


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


def test_init_upgrades_schema_1_keeping_every_row(backend, tenant):
    first = backend.sync(tenant)
    assert first.overall == "FINISHED"
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

    assert db.init(backend.engine) == db.SCHEMA_VERSION

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

    db.init(backend.engine)
    result = backend.sync(tenant, full=True)

    assert result.overall == "FINISHED"
    assert backend.scalar(f"select active from repositories where external_id = '{gone}'")
    assert backend.scalar(f"select content_hash from repositories where external_id = '{kept}'") != ""


def test_init_refuses_a_database_a_newer_ghetl_upgraded(backend):
    with backend.engine.begin() as conn:
        conn.execute(db.schema_info.insert().values(version=db.SCHEMA_VERSION + 1))
    before = foreign_keys(backend.engine, "repositories")

    with pytest.raises(ValueError, match=f"schema {db.SCHEMA_VERSION + 1}, newer"):
        db.init(backend.engine)

    assert foreign_keys(backend.engine, "repositories") == before
    assert backend.scalar("select count(*) from ghetl_schema") == 2
