"""Search a tenant's repositories by meaning: cosine similarity over the stored vectors.

Only vectors of the embedder in use take part (model name and dimension must match), so a
tenant half re-embedded after a model switch is never searched with mixed vectors; the rows
still missing are counted in a warning and get their vectors on the next sync.

Brute force in numpy: every vector of the tenant is read from the database and compared with
the query in one matrix product. Measured by `benchmarks/bench_embedding.py` on this project's
shared 2-core machine (384 dimensions, 1.5 KB a vector): a query takes about 0.1 s at 10,000
repositories and 0.9 s at 100,000 on SQLite, 0.2 s and 1.8 s on PostgreSQL; the numpy part is
under 40 ms even at 100,000, the rest is reading 150 MB of vectors. So brute force is fine up to
a few tens of thousands of repositories per tenant; from about 100,000, or for many queries a
second, keep the vectors in an index (pgvector, FAISS) instead of reading them all every time.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import sqlalchemy as sa

from . import db, embeddings, tenants
from .db import embeddings as embeddings_table
from .db import repositories

if TYPE_CHECKING:
    import pandas as pd

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
    Pandas is imported here, not at the top: `import ghetl` must stay quick for the CLI and
    for workers, which never search.
    """
    import pandas as pd

    if not text.strip():
        raise ValueError("search text must not be empty")
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    engine = engine or db.engine()
    embedder = embedder or embeddings.get_embedder()
    with engine.connect() as conn:
        tenant_row = tenants.get_tenant(conn, tenant)
        active = {(integration, ext) for integration, ext in conn.execute(_active_keys(tenant_row["id"])).all()}
        stored = [(integration, ext, vector) for integration, ext, vector
                  in conn.execute(_vectors_of(tenant_row["id"], embedder)).all() if (integration, ext) in active]
        if len(active) > len(stored):
            log.warning("%d of %d repositories of tenant %s have no %s vector yet; run: ghetl sync --tenant %s",
                        len(active) - len(stored), len(active), tenant_row["name"], embedder.model, tenant_row["name"])
        if not stored:
            return pd.DataFrame(columns=COLUMNS)
        scores = embeddings.from_bytes([r[2] for r in stored], embedder.dimension) @ embedder.embed([text])[0]
        best = [(stored[i][:2], float(scores[i])) for i in _best(scores, [r[:2] for r in stored], limit)]
        details = {(integration, ext): (name, description) for integration, ext, name, description
                   in conn.execute(_details(tenant_row["id"], [key for key, _ in best])).all()}
    return pd.DataFrame([(n, *details[key], score) for n, (key, score) in enumerate(best, 1)], columns=COLUMNS)


def _best(scores: np.ndarray, keys: list[tuple[int, str]], limit: int) -> list[int]:
    """Indexes of the `limit` highest scores; ties go by key, so the same search gives the same answer."""
    k = min(limit, len(scores))
    kth = np.partition(scores, len(scores) - k)[len(scores) - k]
    candidates = [int(i) for i in np.flatnonzero(scores >= kth)]
    return sorted(candidates, key=lambda i: (-scores[i], keys[i]))[:limit]


# Plain queries matched up here rather than one SQL join: on freshly filled PostgreSQL tables
# (no statistics yet) the planner chose a nested loop that took 20 s for 10,000 rows.
def _active_keys(tenant_id: int) -> sa.Select:
    return sa.select(repositories.c.integration_id, repositories.c.external_id).where(
        repositories.c.tenant_id == tenant_id, repositories.c.active.is_(True)
    )


def _vectors_of(tenant_id: int, embedder: embeddings.Embedder) -> sa.Select:
    """The tenant's repository vectors of this embedder's model."""
    columns = embeddings_table.c
    return sa.select(columns.integration_id, columns.external_id, columns.vector).where(
        embeddings_table.c.tenant_id == tenant_id,
        embeddings_table.c.table_name == repositories.name,
        embeddings_table.c.model == embedder.model,
        embeddings_table.c.dimension == embedder.dimension,
    )


def _details(tenant_id: int, keys: list[tuple[int, str]]) -> sa.Select:
    return sa.select(
        repositories.c.integration_id, repositories.c.external_id, repositories.c.full_name, repositories.c.description
    ).where(
        repositories.c.tenant_id == tenant_id,
        sa.tuple_(repositories.c.integration_id, repositories.c.external_id).in_(keys),
    )
