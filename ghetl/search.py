"""Search a tenant's repositories by meaning: cosine similarity over the stored vectors.

Only vectors of the embedder in use take part (model name and dimension must match), so a
tenant half re-embedded after a model switch is never searched with mixed vectors; the rows
still missing are named in a warning and get their vectors on the next sync.

Brute force in numpy: every vector of the tenant is read from the database and compared with
the query in one matrix product. Measured by `benchmarks/bench_embedding.py` on this project's
2-core machine with 384-dimension vectors: on SQLite a query takes about 0.05 s at 10,000
repositories and 0.5 s at 100,000, nearly all of it reading the vectors (the matrix product
itself is under 10 ms at 100,000); on PostgreSQL about twice that. So it is fine up to tens of
thousands of repositories per tenant; past about 100,000, or for many queries a second, keep
the vectors in an index (pgvector, FAISS) instead of reading them all for every query.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import sqlalchemy as sa

from . import db, embeddings, tenants
from .db import embeddings as embeddings_table
from .db import repositories

log = logging.getLogger(__name__)

COLUMNS = ["rank", "full_name", "description", "score"]


def search(
    tenant: str | int,
    text: str,
    *,
    limit: int = 10,
    engine: sa.Engine | None = None,
    embedder: embeddings.Embedder | None = None,
) -> pd.DataFrame:
    """The `limit` active repositories closest to `text`: rank, full_name, description, score.

    `score` is the cosine similarity (1 is identical meaning); `embedder` defaults to the one
    GHETL_EMBEDDER names, which must be the one the tenant was synced with.
    """
    if not text.strip():
        raise ValueError("search text must not be empty")
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    engine = engine or db.engine()
    embedder = embedder or embeddings.get_embedder()
    with engine.connect() as conn:
        tenant_row = tenants.get_tenant(conn, tenant)
        rows = conn.execute(_vectors_of(tenant_row["id"], embedder)).all()
        active = conn.execute(
            sa.select(sa.func.count()).where(repositories.c.tenant_id == tenant_row["id"], repositories.c.active.is_(True))
        ).scalar_one()
    if active > len(rows):
        log.warning("%d of %d repositories of tenant %s have no %s vector yet; run: ghetl sync --tenant %s",
                    active - len(rows), active, tenant_row["name"], embedder.model, tenant_row["name"])
    if not rows:
        return pd.DataFrame(columns=COLUMNS)
    matrix = embeddings.from_bytes([r.vector for r in rows], embedder.dimension)
    scores = matrix @ embedder.embed([text])[0]
    order = np.argsort(-scores, kind="stable")[:limit]
    return pd.DataFrame(
        [(n + 1, rows[i].full_name, rows[i].description, float(scores[i])) for n, i in enumerate(order)],
        columns=COLUMNS,
    )


def _vectors_of(tenant_id: int, embedder: embeddings.Embedder) -> sa.Select:
    """The tenant's active repositories with their vector of this embedder's model."""
    return (
        sa.select(repositories.c.full_name, repositories.c.description, embeddings_table.c.vector)
        .join(
            embeddings_table,
            sa.and_(
                embeddings_table.c.tenant_id == repositories.c.tenant_id,
                embeddings_table.c.integration_id == repositories.c.integration_id,
                embeddings_table.c.external_id == repositories.c.external_id,
                embeddings_table.c.table_name == repositories.name,
            ),
        )
        .where(
            repositories.c.tenant_id == tenant_id,
            repositories.c.active.is_(True),
            embeddings_table.c.model == embedder.model,
            embeddings_table.c.dimension == embedder.dimension,
        )
        .order_by(repositories.c.full_name)
    )
