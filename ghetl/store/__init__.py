"""The database: `db` holds the schema, the engine and the bulk statements; `migrate` brings a
database to the schema's head with the Alembic revisions in `migrations/`; `http_cache` keeps
GitHub's ETags, which make an unchanged page free."""
