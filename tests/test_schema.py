"""`ghetl init` on a database an older ghetl created: it upgrades in place and loses nothing."""

from __future__ import annotations

import sqlalchemy as sa

from ghetl import db
from ghetl.db import embeddings, repositories

OLD_ORDER = {
    "uq_repositories_external": ("repositories", ["tenant_id", "integration_id", "external_id"]),
    "uq_embeddings_record_model": ("embeddings", ["tenant_id", "integration_id", "table_name", "external_id", "model"]),
}


def unique_columns(engine: sa.Engine) -> dict[str, list[str]]:
    inspector = sa.inspect(engine)
    return {u["name"]: u["column_names"] for t in ("repositories", "embeddings")
            for u in inspector.get_unique_constraints(t)}


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
    again = backend.sync(tenant, full=True)
    assert again.overall == "FINISHED"
    with backend.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(repositories)).scalar() == stored
