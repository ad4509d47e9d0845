"""Search a tenant's repositories or pull requests by meaning: cosine similarity over the stored vectors.

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

from .. import embeddings, tenants
from ..store import db
from ..store.db import embeddings as embeddings_table
from ..store.db import pull_requests, repositories

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

COLUMNS = ["rank", "full_name", "description", "score"]
PULL_REQUEST_COLUMNS = ["rank", "repository", "number", "title", "url", "score"]
ENTITIES = ("repositories", "pull_requests")


def search(
    tenant: str | int,
    text: str,
    *,
    limit: int = 10,
    engine: sa.Engine | None = None,
    embedder: embeddings.Embedder | None = None,
    entity: str = "repositories",
) -> pd.DataFrame:
    """The `limit` active repositories closest to `text`: rank, full_name, description, score;
    with `entity="pull_requests"`, pull requests: rank, repository, number, title, url, score.

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
    if entity not in ENTITIES:
        raise ValueError(f"unknown entity '{entity}'; choose one of: {', '.join(ENTITIES)}")
    table = repositories if entity == "repositories" else pull_requests
    columns = COLUMNS if entity == "repositories" else PULL_REQUEST_COLUMNS
    engine = engine or db.engine()
    embedder = embedder or embeddings.get_embedder()
    with engine.connect() as conn:
        tenant_row = tenants.get_tenant(conn, tenant)
        active = {(integration, ext) for integration, ext in conn.execute(_active_keys(table, tenant_row["id"])).all()}
        stored = [(integration, ext, vector) for integration, ext, vector
                  in conn.execute(_vectors_of(table, tenant_row["id"], embedder)).all() if (integration, ext) in active]
        if len(active) > len(stored):
            log.warning("%d of %d %s of tenant %s have no %s vector yet; run: ghetl sync --tenant %s",
                        len(active) - len(stored), len(active), entity.replace("_", " "), tenant_row["name"],
                        embedder.model, tenant_row["name"])
        if not stored:
            return pd.DataFrame(columns=columns)
        scores = embeddings.from_bytes([r[2] for r in stored], embedder.dimension) @ embedder.embed([text])[0]
        best = [(stored[i][:2], float(scores[i])) for i in _best(scores, [r[:2] for r in stored], limit)]
        details = {(row[0], row[1]): tuple(row[2:])
                   for row in conn.execute(_details(table, tenant_row["id"], [key for key, _ in best])).all()}
    return pd.DataFrame([(n, *details[key], score) for n, (key, score) in enumerate(best, 1)], columns=columns)


def _best(scores: np.ndarray, keys: list[tuple[int, str]], limit: int) -> list[int]:
    """Indexes of the `limit` highest scores; ties go by key, so the same search gives the same answer."""
    k = min(limit, len(scores))
    kth = np.partition(scores, len(scores) - k)[len(scores) - k]
    candidates = [int(i) for i in np.flatnonzero(scores >= kth)]
    return sorted(candidates, key=lambda i: (-scores[i], keys[i]))[:limit]


# Plain queries matched up here rather than one SQL join: on freshly filled PostgreSQL tables
# (no statistics yet) the planner chose a nested loop that took 20 s for 10,000 rows.
def _active_keys(table: sa.Table, tenant_id: int) -> sa.Select:
    query = sa.select(table.c.integration_id, table.c.external_id).where(table.c.tenant_id == tenant_id)
    return query.where(table.c.active.is_(True)) if "active" in table.c else query


def _vectors_of(table: sa.Table, tenant_id: int, embedder: embeddings.Embedder) -> sa.Select:
    """The tenant's vectors of this table and this embedder's model."""
    columns = embeddings_table.c
    return sa.select(columns.integration_id, columns.external_id, columns.vector).where(
        embeddings_table.c.tenant_id == tenant_id,
        embeddings_table.c.table_name == table.name,
        embeddings_table.c.model == embedder.model,
        embeddings_table.c.dimension == embedder.dimension,
    )


def _details(table: sa.Table, tenant_id: int, keys: list[tuple[int, str]]) -> sa.Select:
    """What a result shows: a repository's name and description, or a pull request's repository,
    number, title and link."""
    if table is repositories:
        shown: list[sa.ColumnElement] = [repositories.c.full_name, repositories.c.description]
        source: sa.FromClause = repositories
    else:
        shown = [repositories.c.full_name, pull_requests.c.number, pull_requests.c.title, pull_requests.c.url]
        source = pull_requests.join(repositories, repositories.c.id == pull_requests.c.repository_id)
    return sa.select(table.c.integration_id, table.c.external_id, *shown).select_from(source).where(
        table.c.tenant_id == tenant_id,
        sa.tuple_(table.c.integration_id, table.c.external_id).in_(keys),
    )
