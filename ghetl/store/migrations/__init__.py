"""ghetl's Alembic revisions (`versions/`); `ghetl.store.migrate` runs them."""
