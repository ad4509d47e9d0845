"""The step framework, shown with a job of this module's own: a parent entity listed per owner
and a child entity fetched per parent item, both served by the sandbox.

Nothing in the library names these entities: the steps, their tables and handlers live here,
which is what adding pull requests (or any later entity) amounts to.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from ghetl import steps
from ghetl.pipeline import jobs
from ghetl.steps import Batch, ExtractContext, RowContext, collect
from ghetl.steps.repositories import parse_time
from ghetl.store import db, http_cache

from .conftest import Backend, add_tenant
from .test_embeddings import vectors_by_model

toy_metadata = sa.MetaData()

toy_repos = sa.Table(
    "toy_repos", toy_metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("tenant_id", sa.Integer, nullable=False),
    sa.Column("integration_id", sa.Integer, nullable=False),
    sa.Column("external_id", sa.String(100), nullable=False),
    sa.Column("full_name", sa.String(300), nullable=False),
    sa.Column("description", sa.Text),
    sa.UniqueConstraint("external_id", "tenant_id", "integration_id"),
)

toy_details = sa.Table(
    "toy_details", toy_metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("tenant_id", sa.Integer, nullable=False),
    sa.Column("integration_id", sa.Integer, nullable=False),
    sa.Column("external_id", sa.String(100), nullable=False),
    sa.Column("parent_external_id", sa.String(100), nullable=False),
    sa.Column("default_branch", sa.String(300)),
    sa.Column("language", sa.String(100)),
    sa.UniqueConstraint("external_id", "tenant_id", "integration_id"),
)

KEYS = ("tenant_id", "integration_id", "external_id")


def extract_repos(ctx: ExtractContext) -> Iterator[Batch]:
    """The owner's listing through the shared collector (the parent): conditional pages, side by side."""
    cache = http_cache.PageCache(ctx.engine, ctx.tenant_id, ctx.integration["id"], "toy_repos", "toy")
    url = ctx.client.url(f"/orgs/{ctx.integration['owner']}/repos",
                         {"sort": "updated", "direction": "desc", "per_page": 50})
    for got in collect.listing(ctx, cache, url, lambda repo: parse_time(repo["updated_at"])):
        items = got.page.items if got.reused is None else got.reused
        landed = got.landing(cache, [str(r["id"]) for r in items])
        if items or landed:
            yield Batch(items, landed)


def repo_row(payload: dict[str, Any], ctx: RowContext) -> dict[str, Any]:
    return {"tenant_id": ctx["tenant_id"], "integration_id": ctx["integration_id"], "external_id": str(payload["id"]),
            "full_name": payload["full_name"], "description": payload.get("description")}


def extract_details(ctx: ExtractContext) -> Iterator[Batch]:
    """One request per parent item, made as soon as that parent's row is stored (the child),
    through the shared collector's chunks side by side."""
    names = (parent.payload["full_name"] for parent in ctx.parents())

    def fetch(chunk: list[str]) -> Batch:
        return Batch([ctx.client.get(ctx.client.url(f"/repos/{chunk[0]}"))[1]])

    yield from collect.in_chunks(ctx, names, fetch)


def detail_row(payload: dict[str, Any], ctx: RowContext) -> dict[str, Any]:
    assert ctx["parent_external_id"] is not None
    return {"tenant_id": ctx["tenant_id"], "integration_id": ctx["integration_id"],
            "external_id": payload["node_id"], "parent_external_id": ctx["parent_external_id"],
            "default_branch": payload.get("default_branch"), "language": payload.get("language")}


PARENT = steps.Step(
    name="toy_repos", display_name="Toy Repositories", order=1, table=toy_repos, extract=extract_repos,
    to_row=repo_row, upsert=lambda conn, rows: db.upsert(conn, toy_repos, rows, KEYS),
    embed_text=lambda row: f"{row['full_name']} {row.get('description') or ''}",
    embed_columns=("full_name", "description"),
)
CHILD = steps.Step(
    name="toy_details", display_name="Toy Details", order=2, table=toy_details, extract=extract_details,
    to_row=detail_row, upsert=lambda conn, rows: db.upsert(conn, toy_details, rows, KEYS),
    embed_text=lambda row: f"{row.get('language') or ''} {row.get('default_branch') or ''}",
    embed_columns=("language", "default_branch"),
    depends_on="toy_repos", key=lambda payload: payload["node_id"], parent_key=lambda payload: str(payload["id"]),
)


@pytest.fixture
def toy_job(backend: Backend) -> Iterator[dict[str, steps.Step]]:
    toy_metadata.create_all(backend.engine)
    with steps.registered(PARENT, CHILD) as registry:
        yield registry


def test_a_two_step_job_of_a_test_module_runs_to_true_completion(
    backend: Backend, make_sandbox: Any, token: str, toy_job: dict[str, steps.Step], monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox = make_sandbox(orgs={"acme": 230}, seed=5)
    tenant = add_tenant(backend, sandbox)
    result = backend.sync(tenant, workers=(4, 2))

    assert result.overall == "FINISHED", result.error
    truth = {str(r["id"]): r for r in sandbox.repos("acme")}
    assert {s: c["extracted"] for s, c in result.counts.items()} == {"toy_repos": 230, "toy_details": 230}
    assert all(c["embedded"] == 230 and c["failed"] == 0 for c in result.counts.values())
    parents = {r.external_id: r.full_name for r in backend.rows("SELECT external_id, full_name FROM toy_repos")}
    assert parents == {k: r["full_name"] for k, r in truth.items()}
    children = backend.rows("SELECT parent_external_id, language, default_branch FROM toy_details")
    assert sorted(c.parent_external_id for c in children) == sorted(truth)
    assert {c.parent_external_id: (c.language, c.default_branch) for c in children} == {
        k: (r.get("language"), r.get("default_branch")) for k, r in truth.items()}
    with backend.engine.connect() as conn:
        status = jobs.list_jobs(conn)[0]["status"]
    assert {step: {k: v for k, v in c.items() if k in ("extraction", "transform", "embedding")}
            for step, c in status["steps"].items()} == {
        step: {"extraction": "finished", "transform": "finished", "embedding": "finished"} for step in toy_job}
    assert dict(backend.rows("SELECT entity_type, count(*) FROM raw_extraction_data WHERE status = 'embedded' "
                             "GROUP BY entity_type")) == {"toy_repos": 230, "toy_details": 230}
    model = next(iter(vectors_by_model(backend)))
    assert dict(backend.rows("SELECT table_name, count(*) FROM embeddings GROUP BY table_name")) == {
        "toy_repos": 230, "toy_details": 230}

    from ghetl import embeddings

    other = embeddings.HashingEmbedder(dimension=96)
    assert other.model != model
    monkeypatch.setattr(embeddings, "get_embedder", lambda name=None: other)
    again = backend.sync(tenant, workers=(4, 2))
    assert again.overall == "FINISHED", again.error
    assert dict(backend.rows("SELECT table_name, count(*) FROM embeddings WHERE model = :m GROUP BY table_name",
                             m=other.model)) == {"toy_repos": 230, "toy_details": 230}


def test_the_shared_collector_gives_a_new_entity_conditional_pages(
    backend: Backend, make_sandbox: Any, token: str, toy_job: dict[str, steps.Step]
) -> None:
    sandbox = make_sandbox(orgs={"acme": 230}, seed=5)
    tenant = add_tenant(backend, sandbox)
    assert backend.sync(tenant).overall == "FINISHED"
    sandbox.reset_stats()

    full = backend.sync(tenant, full=True)

    listing = [(r.query.get("page", "1"), r.status) for r in sandbox.requests if r.path.endswith("/repos")]
    assert sorted(listing) == [("1", 304), ("2", 304), ("3", 304), ("4", 304), ("5", 304)]
    assert full.counts["toy_repos"]["extracted"] == 230  # the stored payloads of the 304 pages
    sandbox.reset_stats()

    incremental = backend.sync(tenant)

    assert [(r.path.endswith("/repos"), r.status) for r in sandbox.requests] == [(True, 304)]
    assert incremental.counts == {"toy_repos": _none(), "toy_details": _none()}


def _none() -> dict[str, int]:
    return {"extracted": 0, "transformed": 0, "embedded": 0, "failed": 0}


def test_a_child_item_keeps_its_parent_key_through_every_stage(
    backend: Backend, make_sandbox: Any, token: str, toy_job: dict[str, steps.Step]
) -> None:
    sandbox = make_sandbox(orgs={"acme": 12}, seed=3)
    tenant = add_tenant(backend, sandbox)
    assert backend.sync(tenant).overall == "FINISHED"
    stored = backend.rows("SELECT r.parent_external_id, r.external_id, d.parent_external_id AS row_parent "
                          "FROM raw_extraction_data r JOIN toy_details d ON d.external_id = r.external_id "
                          "WHERE r.entity_type = 'toy_details'")
    ids = {str(r["id"]): r["node_id"] for r in sandbox.repos("acme")}
    assert len(stored) == 12
    assert all(s.parent_external_id == s.row_parent and ids[s.parent_external_id] == s.external_id for s in stored)


def test_a_step_whose_parent_is_missing_is_refused() -> None:
    with (
        pytest.raises(ValueError, match="depends on 'toy_repos', which is not an earlier step of the job"),
        steps.registered(CHILD),
    ):
        pass
    assert "github_repositories" in steps.registry()
