"""The schema's versions: `ghetl init` upgrades any database to the newest one, keeping every row.

Versions are Alembic revisions in `ghetl/store/migrations/versions/`, one per change, each step's
tables in a revision of their own (`0002_github_repositories`); SQLite runs them in batch mode,
since it cannot alter a constraint in place. Adding one: `alembic -c ghetl/store/migrations/alembic.ini
revision --autogenerate -m "what changes"` against a database at the newest revision
(GHETL_DATABASE_URL), then read and trim what it wrote.

A database of a ghetl from before Alembic (`ghetl_schema` versions 1 to 4) is first brought to
the shape of version 4 by the checks that ghetl ran (missing tables and columns, keys in
today's order, PostgreSQL storage settings), built from the frozen tables of the revisions
that match it, then stamped with the last of them and upgraded from there.

`ghetl_schema` is still written (version 5 onwards): a ghetl from before Alembic refuses a
database whose version is newer than its own, which keeps it from touching this one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine

from .db import RAW_FILLFACTOR, schema_info

log = logging.getLogger(__name__)

SCHEMA_VERSION = 5
LEGACY_REVISIONS = ("0001_core", "0002_github_repositories")
SCRIPTS = Path(__file__).parent / "migrations"


def alembic_config(conn: Connection | None = None) -> Config:
    """Alembic's configuration for ghetl's revisions, bound to `conn` when given."""
    config = Config(str(SCRIPTS / "alembic.ini"))
    config.set_main_option("script_location", str(SCRIPTS))
    config.attributes["connection"] = conn
    return config


def init(eng: Engine) -> int:
    """Upgrade the database to the newest revision in one transaction; safe to run any number of times.

    Returns the `ghetl_schema` version, which `ghetl init` prints.
    """
    with eng.begin() as conn:
        config = alembic_config(conn)
        _refuse_newer(conn, ScriptDirectory.from_config(config))
        before = revision(conn)
        if _legacy(conn):
            upgrade_legacy(conn, ScriptDirectory.from_config(config))
            command.stamp(config, LEGACY_REVISIONS[-1])
            before = f"ghetl schema {_legacy_version(conn)}"
        command.upgrade(config, "head")
        after = revision(conn)
        if after != before:
            log.info("schema upgraded from %s to revision %s", before or "an empty database", after)
        current = conn.execute(sa.select(sa.func.max(schema_info.c.version))).scalar()
        if current != SCHEMA_VERSION:
            conn.execute(schema_info.insert().values(version=SCHEMA_VERSION))
    return SCHEMA_VERSION


def revision(conn: Connection) -> str | None:
    """The Alembic revision the database is at (None before `ghetl init`)."""
    return MigrationContext.configure(conn).get_current_revision()


def _legacy_version(conn: Connection) -> int:
    return conn.execute(sa.select(sa.func.max(schema_info.c.version))).scalar() or 0


def _legacy(conn: Connection) -> bool:
    inspector = sa.inspect(conn)
    return inspector.has_table("tenants") and not inspector.has_table("alembic_version")


def _refuse_newer(conn: Connection, scripts: ScriptDirectory) -> None:
    """Stop before touching a database a newer ghetl upgraded: this one cannot know what it changed."""
    inspector = sa.inspect(conn)
    if inspector.has_table("alembic_version"):
        stored = revision(conn)
        if stored is not None and stored not in {s.revision for s in scripts.walk_revisions()}:
            raise ValueError(f"the database is at ghetl schema revision {stored}, which this ghetl does not know "
                             "(a newer ghetl upgraded it); run the newer ghetl against it, not this one")
    if inspector.has_table(schema_info.name):
        version = _legacy_version(conn)
        if version > SCHEMA_VERSION:
            raise ValueError(f"the database holds ghetl schema {version}, newer than this ghetl's {SCHEMA_VERSION}; "
                             "run the newer ghetl against it, not this one")


def upgrade_legacy(conn: Connection, scripts: ScriptDirectory) -> None:
    """Bring a database of a ghetl from before Alembic to the tables of LEGACY_REVISIONS.

    Additive only (new tables, new nullable columns, keys rebuilt in today's column order);
    nothing stored is dropped, and the one value rewritten is the content hash of inactive
    repositories.
    """
    meta = _frozen(scripts, LEGACY_REVISIONS)
    meta.create_all(conn)
    _add_missing_columns(conn, meta)
    _forget_hashes_of_inactive(conn)
    if conn.dialect.name == "postgresql":
        _match_unique_constraints(conn, meta)
        _match_foreign_keys(conn, meta)
        tune_raw_storage(conn)


def _frozen(scripts: ScriptDirectory, revisions: Iterable[str]) -> sa.MetaData:
    """The tables of these revisions, as each one created them, on one MetaData (for their keys)."""
    meta = sa.MetaData()
    for rev in revisions:
        module: Any = scripts.get_revision(rev).module
        for table in module.meta.sorted_tables:
            if table.name not in meta.tables and table.name not in getattr(module, "REFERENCED", ()):
                table.to_metadata(meta)
    return meta


def check_ready(eng: Engine) -> None:
    """Raise unless the database answers and holds ghetl's schema.

    Long-running commands (a worker, the status server) check this at start: otherwise they
    would start, then fail every message or every poll for as long as they run.
    """
    with eng.connect() as conn:
        if not sa.inspect(conn).has_table("alembic_version"):
            raise LookupError(f"no ghetl schema at {eng.url.render_as_string(hide_password=True)}; "
                              "check GHETL_DATABASE_URL and run: ghetl init")


def _add_missing_columns(conn: Connection, meta: sa.MetaData) -> None:
    inspector = sa.inspect(conn)
    for table in meta.sorted_tables:
        present = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in present:
                kind = column.type.compile(dialect=conn.dialect)
                conn.exec_driver_sql(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}')


def _forget_hashes_of_inactive(conn: Connection) -> None:
    """An earlier ghetl left an inactive repository its content hash, so when it came back
    unchanged it matched and stayed inactive; empty the hash as deactivation now does."""
    conn.exec_driver_sql("UPDATE repositories SET content_hash = '' WHERE NOT active AND content_hash != ''")


def tune_raw_storage(conn: Connection) -> None:
    """Half-full pages (see the table) and lz4 for the payloads where the server has it.

    Every payload is over PostgreSQL's 2 kB threshold, so each one is compressed as it lands:
    the default pglz made that half of the server's CPU for a raw insert (12 ms per page of
    100 repositories against 5.8 ms with lz4, measured), for the same size on disk within 7 %.
    Only new rows are written with lz4; stored ones stay readable as they are.
    """
    conn.exec_driver_sql(f"ALTER TABLE raw_extraction_data SET (fillfactor = {RAW_FILLFACTOR})")
    has_lz4 = conn.exec_driver_sql(
        "SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'"
    ).scalar()
    if not has_lz4:
        return
    current = conn.exec_driver_sql(
        "SELECT attcompression FROM pg_attribute "
        "WHERE attrelid = 'raw_extraction_data'::regclass AND attname = 'raw_data'"
    ).scalar()
    if current != "l":
        conn.exec_driver_sql("ALTER TABLE raw_extraction_data ALTER COLUMN raw_data SET COMPRESSION lz4")


def _match_unique_constraints(conn: Connection, meta: sa.MetaData) -> None:
    """Add the unique constraints an older schema lacks (schema 3 added those that composite
    foreign keys point at) and rebuild one whose columns are in an older order (schema 1 led
    with the tenant); the rows are untouched, only the indexes behind the constraints are built."""
    inspector = sa.inspect(conn)
    for table in meta.sorted_tables:
        present = {u["name"]: u["column_names"] for u in inspector.get_unique_constraints(table.name)}
        for constraint in table.constraints:
            if not isinstance(constraint, sa.UniqueConstraint):
                continue
            wanted = [c.name for c in constraint.columns]
            if constraint.name not in present:
                _add_constraint(conn, constraint)
            elif present[constraint.name] != wanted:
                conn.exec_driver_sql(
                    f"ALTER TABLE {table.name} DROP CONSTRAINT {constraint.name}, "
                    f"ADD CONSTRAINT {constraint.name} UNIQUE ({', '.join(wanted)})"
                )


def _match_foreign_keys(conn: Connection, meta: sa.MetaData) -> None:
    """Replace the foreign keys of an older schema with this one's: up to schema 2 every column
    had a key of its own (tenant, integration, job), schema 3 checks them together."""
    inspector = sa.inspect(conn)
    for table in meta.sorted_tables:
        wanted = {_fk_shape(fk.column_keys, fk.referred_table.name, [e.column.name for e in fk.elements]): fk
                  for fk in table.foreign_key_constraints}
        present = {_fk_shape(fk["constrained_columns"], fk["referred_table"], fk["referred_columns"]): fk["name"]
                   for fk in inspector.get_foreign_keys(table.name)}
        for shape in present.keys() - wanted.keys():
            conn.exec_driver_sql(f'ALTER TABLE {table.name} DROP CONSTRAINT "{present[shape]}"')
        for shape in wanted.keys() - present.keys():
            _add_constraint(conn, wanted[shape])


def _add_constraint(conn: Connection, constraint: sa.Constraint) -> None:
    """ALTER TABLE ... ADD CONSTRAINT, leaving the constraint in the schema's CREATE TABLE: the
    same objects create the tables of the next new database this process initialises."""
    conn.execute(sa.schema.AddConstraint(constraint, isolate_from_table=False))


def _fk_shape(columns: Iterable[str], referred_table: str, referred_columns: Iterable[str]) -> tuple[Any, ...]:
    return tuple(columns), referred_table, tuple(referred_columns)
