"""ghetl's Alembic revisions (`versions/`); `ghetl.migrate` runs them."""
