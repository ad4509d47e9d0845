"""Search a tenant's repositories by meaning: cosine similarity over the stored vectors.

Brute force in numpy: all vectors of the tenant and the current model are loaded and compared
with the query in one matrix product. At 384 dimensions that is about 1.5 MB per thousand
repositories and milliseconds per query up to a few hundred thousand rows; beyond that an
index (pgvector, FAISS) is the right tool.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import sqlalchemy as sa

from . import db, embeddings, tenants
from .db import embeddings as embeddings_table
from .db import repositories


def search(
    tenant: str | int,
    text: str,
    *,
    limit: int = 10,
    engine: sa.Engine | None = None,
    embedder: embeddings.Embedder | None = None,
) -> pd.DataFrame:
    """The `limit` active repositories closest to `text`: rank, full_name, description, score."""
    if not text.strip():
        raise ValueError("search text must not be empty")
    engine = engine or db.engine()
    embedder = embedder or embeddings.get_embedder()
    with engine.connect() as conn:
        tenant_id = tenants.get_tenant(conn, tenant)["id"]
        rows = conn.execute(
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
            )
        ).all()
    columns = ["rank", "full_name", "description", "score"]
    if not rows:
        return pd.DataFrame(columns=columns)
    matrix = np.stack([embeddings.from_bytes(r.vector, embedder.dimension) for r in rows])
    query = embedder.embed([text])[0]
    scores = matrix @ query
    order = np.argsort(-scores, kind="stable")[:limit]
    return pd.DataFrame(
        [(n + 1, rows[i].full_name, rows[i].description, float(scores[i])) for n, i in enumerate(order)],
        columns=columns,
    )
