"""Alembic's entry point: runs the revisions on the connection `ghetl.store.migrate` hands over, or on
GHETL_DATABASE_URL when a developer runs the `alembic` command (autogenerate compares with
`ghetl.db.metadata`)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from ghetl import config
from ghetl.store import db


def run(connection: sa.Connection) -> None:
    context.configure(connection=connection, target_metadata=db.metadata, user_module_prefix="ghetl.store.db.",
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


given = context.config.attributes.get("connection")
if given is not None:
    run(given)
else:
    with db.engine(config.database_url()).begin() as conn:
        run(conn)
