"""The `github_repositories` step: every stage of a repository, from API page to vector text.

Collector: list the owner's repositories (or search them when `repository_filter` is set),
newest update first, stop paging at the incremental cut-off, then on full runs re-fetch by id
the known repositories that were not listed. Extractor/convertor: map a payload to a
`repositories` row. Embedding: the text that stands for the repository.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import hashlib
import json
import logging
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .. import db, tenants
from ..db import repositories
from . import ExtractContext

log = logging.getLogger(__name__)

STEP_NAME = "github_repositories"
DISPLAY_NAME = "GitHub Repositories"
ORDER = 1
TABLE = repositories
BATCH = 100


def parse_time(value: str | None) -> dt.datetime | None:
    """GitHub's `2024-05-01T12:00:00Z` as an aware UTC datetime."""
    if not value:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(dt.timezone.utc)


def _listing(ctx: ExtractContext) -> Iterator[Any]:
    owner = ctx.integration["owner"]
    query = ctx.settings["repository_filter"]
    if query:
        return ctx.client.search_repositories(f"user:{owner} {query}")
    owner_type = ctx.integration["owner_type"]
    if owner_type is None:
        owner_type = ctx.client.owner_type(owner)
        with ctx.engine.begin() as conn:
            tenants.set_owner_type(conn, ctx.integration["id"], owner_type)
    return ctx.client.list_repositories(owner, owner_type)


def wanted(repo: dict[str, Any], settings: dict[str, Any]) -> bool:
    """Whether the integration's settings keep this repository."""
    if repo.get("fork") and not settings["include_forks"]:
        return False
    if repo.get("archived") and not settings["include_archived"]:
        return False
    visibility = repo.get("visibility") or ("private" if repo.get("private") else "public")
    if settings["visibility"] != "all" and visibility != settings["visibility"]:
        return False
    patterns = settings["name_patterns"]
    return not patterns or any(fnmatch.fnmatchcase(repo["name"].lower(), p.lower()) for p in patterns)


def extract(ctx: ExtractContext) -> Iterator[list[dict[str, Any]]]:
    """Pages of repository payloads to store; each repository at most once per run."""
    seen: set[str] = set()
    for page in _listing(ctx):
        batch = []
        past_cutoff = False
        for repo in page.items:
            key = str(repo["id"])
            if key in seen:
                continue
            seen.add(key)
            if ctx.cutoff is not None and (parse_time(repo.get("updated_at")) or ctx.cutoff) < ctx.cutoff:
                past_cutoff = True
                continue
            if wanted(repo, ctx.settings):
                batch.append(repo)
        if batch:
            yield batch
        if past_cutoff:
            log.info("listing reached repositories unchanged since %s; stopped paging", ctx.cutoff.isoformat())
            break
    yield from _refetch_unlisted(ctx, seen)


def _refetch_unlisted(ctx: ExtractContext, listed: set[str]) -> Iterator[list[dict[str, Any]]]:
    """Repositories to fetch by id because the listing did not bring them.

    On a full run: known active repositories missing from the listing (renamed, transferred or
    deleted). On every run: those that failed in the previous run, which an incremental listing
    would no longer bring since the cut-off moved past them. Fetched by id, which follows
    renames and transfers; a 404 marks the row inactive.
    """
    wanted_ids = set(ctx.retry_ids)
    if ctx.full:
        with ctx.engine.connect() as conn:
            wanted_ids |= set(conn.execute(
                sa.select(repositories.c.external_id).where(
                    repositories.c.tenant_id == ctx.tenant_id,
                    repositories.c.integration_id == ctx.integration["id"],
                    repositories.c.active.is_(True),
                )
            ).scalars())
    missing = sorted(wanted_ids - listed, key=int)
    batch: list[dict[str, Any]] = []
    for external_id in missing:
        repo = ctx.client.get_repository(external_id)
        if repo is None:
            deactivate(ctx.engine, ctx.tenant_id, ctx.integration["id"], external_id)
            ctx.stats["deactivated"] = ctx.stats.get("deactivated", 0) + 1
            continue
        batch.append(repo)
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def deactivate(engine: sa.Engine, tenant_id: int, integration_id: int, external_id: str) -> None:
    """GitHub no longer has it: keep the row for history, mark it inactive."""
    with engine.begin() as conn:
        conn.execute(
            repositories.update()
            .where(
                repositories.c.tenant_id == tenant_id,
                repositories.c.integration_id == integration_id,
                repositories.c.external_id == external_id,
            )
            .values(active=False)
        )
    log.info("repository %s is gone from GitHub (404); marked inactive", external_id)


def to_row(payload: dict[str, Any], ctx: dict[str, Any]) -> dict[str, Any]:
    """One API payload as one `repositories` row; raises on a payload that lacks identity."""
    license_ = payload.get("license") or {}
    row = {
        "tenant_id": ctx["tenant_id"],
        "integration_id": ctx["integration_id"],
        "external_id": str(payload["id"]),
        "name": payload["name"],
        "full_name": payload["full_name"],
        "owner": (payload.get("owner") or {}).get("login"),
        "description": payload.get("description"),
        "url": payload.get("html_url"),
        "is_private": bool(payload.get("private", False)),
        "visibility": payload.get("visibility") or ("private" if payload.get("private") else "public"),
        "fork": bool(payload.get("fork", False)),
        "archived": bool(payload.get("archived", False)),
        "topics": list(payload.get("topics") or []),
        "license": license_.get("spdx_id") or license_.get("key"),
        "language": payload.get("language"),
        "default_branch": payload.get("default_branch"),
        "stargazers_count": int(payload.get("stargazers_count") or 0),
        "forks_count": int(payload.get("forks_count") or 0),
        "open_issues_count": int(payload.get("open_issues_count") or 0),
        "repo_created_at": parse_time(payload.get("created_at")),
        "repo_updated_at": parse_time(payload.get("updated_at")),
        "pushed_at": parse_time(payload.get("pushed_at")),
        "active": True,
    }
    row["content_hash"] = hashlib.sha256(json.dumps(row, sort_keys=True, default=str).encode()).hexdigest()
    return row


def upsert(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Insert or update by GitHub id; an unchanged repository is not written at all."""
    db.upsert(conn, repositories, rows, ("tenant_id", "integration_id", "external_id"), changed_when="content_hash")


def embed_text(row: dict[str, Any]) -> str:
    """Name, description, language and topics: what an analyst would search a repository by."""
    parts = [row["full_name"].replace("/", " / "), row.get("description") or ""]
    if row.get("language"):
        parts.append(f"Language: {row['language']}")
    if row.get("topics"):
        parts.append("Topics: " + ", ".join(row["topics"]))
    return "\n".join(p for p in parts if p)
