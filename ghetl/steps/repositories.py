"""The `github_repositories` step: every stage of a repository, from API page to vector text.

Collector: list the owner's repositories (or search them when `repository_filter` is set),
newest update first, each listing page conditional on the ETag it had last time, stop paging
at the incremental cut-off, then re-fetch by id the known repositories that were not listed;
the listing and the refetch are `collect`'s, shared with other entities.
Extractor/convertor: map a payload to a `repositories` row. Embedding: the text that stands
for the repository.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import functools
import hashlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .. import tenants
from ..github import GitHubUnavailable
from ..store import db, http_cache
from ..store.db import repositories
from . import Batch, ExtractContext, RowContext, collect

log = logging.getLogger(__name__)

STEP_NAME = "github_repositories"
DISPLAY_NAME = "GitHub Repositories"
ORDER = 1
TABLE = repositories
KEY = ("tenant_id", "integration_id", "external_id")
BATCH = 100


def parse_time(value: str | None) -> dt.datetime | None:
    """GitHub's `2024-05-01T12:00:00Z` as an aware UTC datetime."""
    if not value:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(dt.UTC)


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


def extract(ctx: ExtractContext) -> Iterator[Batch]:
    """Pages of repository payloads to store; each repository at most once per run."""
    seen: set[str] = set()
    if ctx.settings["repository_filter"]:
        yield from _searched(ctx, seen)
    else:
        yield from _listed(ctx, seen)
    yield from _refetch_unlisted(ctx, seen)


def _keep(
    ctx: ExtractContext, items: list[dict[str, Any]], seen: set[str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The items not met before in this run and updated since the cut-off, split into those the
    settings keep and those they no longer want.

    Offset pagination repeats an item when the data moves between pages; the id catches it.
    """
    batch: list[dict[str, Any]] = []
    unwanted: list[dict[str, Any]] = []
    for repo in items:
        key = str(repo["id"])
        if key in seen:
            continue
        seen.add(key)
        if not _older(repo, ctx.cutoff):
            (batch if wanted(repo, ctx.settings) else unwanted).append(repo)
    return batch, unwanted


def _older(repo: dict[str, Any], cutoff: dt.datetime | None) -> bool:
    updated = _updated(repo)
    return cutoff is not None and updated is not None and updated < cutoff


def _searched(ctx: ExtractContext, seen: set[str]) -> Iterator[Batch]:
    """Search results; pages GitHub left incomplete and parts over its cap are the run's gaps."""
    query = f"user:{ctx.integration['owner']} {ctx.settings['repository_filter']}"
    stats = ctx.client.stats
    incomplete, capped = stats.incomplete_results, stats.search_capped
    for page in ctx.client.search_repositories(query, updated_since=ctx.cutoff):
        batch, unwanted = _keep(ctx, page.items, seen)
        if batch or unwanted:
            yield Batch(batch, _deactivating(ctx, unwanted))
    if stats.incomplete_results > incomplete:
        ctx.warn(f"GitHub's search results stayed incomplete on {stats.incomplete_results - incomplete} pages: "
                 "some repositories may be missing; the next run looks again")
    if stats.search_capped > capped:
        ctx.warn(f"{stats.search_capped - capped} parts of the search have more than 1 000 results within one "
                 "second of creation dates: only the first 1 000 of each were read")


def _listed(ctx: ExtractContext, seen: set[str]) -> Iterator[Batch]:
    """The owner's listing, newest update first, each page conditional on the ETag it had last time.

    A 304 page is unchanged since its items landed: an incremental run has nothing to do with
    it, a full run gives its stored payloads again. Each page's ETag is stored in the
    transaction that stores its items (`Batch.landed`), never before, which is what lets a run
    stopped by the rate limit resume where it stopped: the pages it got are 304s, free, and only
    the rest costs. Nothing depends on the order in which pages land: a repository is kept
    once per run whichever page brings it first.
    """
    cache = _cache(ctx)
    for got in collect.listing(ctx, cache, _listing_url(ctx), _updated):
        if got.reused is not None:
            batch = [r for r in got.reused if str(r["id"]) not in seen]
            seen.update(str(r["id"]) for r in batch)
            unwanted: list[dict[str, Any]] = []
        else:
            batch, unwanted = _keep(ctx, got.page.items, seen)
        remember = got.landing(cache, [str(r["id"]) for r in got.page.items if wanted(r, ctx.settings)])
        landed = _landing(remember, _deactivating(ctx, unwanted))
        if batch or landed:
            yield Batch(batch, landed)


def _updated(repo: dict[str, Any]) -> dt.datetime | None:
    return parse_time(repo.get("updated_at"))


def _cache(ctx: ExtractContext) -> http_cache.PageCache:
    return http_cache.PageCache(
        ctx.engine, ctx.tenant_id, ctx.integration["id"], STEP_NAME, http_cache.fingerprint(ctx.settings)
    )


def _listing_url(ctx: ExtractContext) -> str:
    """Where this owner's repositories are listed; the owner's type is asked once, then stored."""
    owner = ctx.integration["owner"]
    owner_type = ctx.integration["owner_type"]
    if owner_type is None:
        owner_type = ctx.client.owner_type(owner)
        with ctx.engine.begin() as conn:
            tenants.set_owner_type(conn, ctx.integration["id"], owner_type)
    viewer = _viewer(ctx) if owner_type == "User" and ctx.client.authenticated else None
    url: str = ctx.client.listing_url(owner, owner_type, viewer)
    return url


def _viewer(ctx: ExtractContext) -> str | None:
    """The login the token belongs to, asked conditionally so that it costs nothing after the first run.

    None when GitHub will not say (an app's installation token has no user): the public listing.
    """
    cache = _cache(ctx)
    url = ctx.client.url("/user")
    entry = cache.get(url)
    response, body = ctx.client.get(url, etag=entry.etag if entry else None)
    if response.status_code == 304 and entry is not None:
        return entry.item_ids[0]
    if response.status_code != 200:
        log.info("GitHub answered %d for /user; listing public repositories only", response.status_code)
        return None
    if response.headers.get("etag"):
        with ctx.engine.begin() as conn:
            cache.put(conn, url, response.headers["etag"], [body["login"]], None, None)
    login: str = body["login"]
    return login


def _refetch_unlisted(ctx: ExtractContext, listed: set[str]) -> Iterator[Batch]:
    """Repositories to fetch by id because the listing did not bring them.

    On a full run: known active repositories missing from the listing (renamed, transferred or
    deleted). On every run: those that failed in the previous run, which an incremental listing
    would no longer bring since the cut-off moved past them. Fetched by id, which follows
    renames and transfers; a 404 marks the row inactive. A repository GitHub keeps failing on
    (after every retry) is skipped with a warning, so one broken repository does not end the run.
    Without a token, known repositories are not fetched again and a 404 marks nothing inactive:
    GitHub answers 404 for a private repository then, which is no sign that it is gone.
    """
    wanted_ids = set(ctx.retry_ids)
    if ctx.full and ctx.client.authenticated:
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
    unwanted: list[dict[str, Any]] = []
    skipped: list[str] = []
    for external_id, repo in collect.in_chunks(ctx, missing, functools.partial(_by_id, ctx)):
        if isinstance(repo, GitHubUnavailable):
            log.warning("repository %s skipped this run: %s", external_id, repo)
            skipped.append(external_id)
            continue
        if repo is None:
            if ctx.client.authenticated:
                deactivate(ctx.engine, ctx.tenant_id, ctx.integration["id"], external_id)
                ctx.count("deactivated", 1)
            continue
        (batch if wanted(repo, ctx.settings) else unwanted).append(repo)
        if len(batch) + len(unwanted) >= BATCH:
            yield Batch(batch, _deactivating(ctx, unwanted))
            batch, unwanted = [], []
    if batch or unwanted:
        yield Batch(batch, _deactivating(ctx, unwanted))
    if skipped:
        ctx.count("unavailable", len(skipped))
        ctx.warn(f"{len(skipped)} repositories skipped this run, GitHub kept failing on them "
                 f"(ids {', '.join(skipped[:10])}{' …' if len(skipped) > 10 else ''}); the next run tries them again")


def _by_id(ctx: ExtractContext, ids: list[str]) -> tuple[str, dict[str, Any] | GitHubUnavailable | None]:
    """A repository by id, None when it is gone, or how GitHub kept failing on it."""
    external_id, = ids
    try:
        return external_id, ctx.client.get_repository(external_id)
    except GitHubUnavailable as exc:
        return external_id, exc


def _landing(*actions: Callable[[Connection], None] | None) -> Callable[[Connection], None] | None:
    """One `Batch.landed` doing each of `actions` in the transaction that stores the batch."""
    todo = [a for a in actions if a is not None]
    if not todo:
        return None

    def landed(conn: Connection) -> None:
        for action in todo:
            action(conn)

    return landed


def _deactivating(ctx: ExtractContext, payloads: list[dict[str, Any]]) -> Callable[[Connection], None] | None:
    """What stores repositories the settings no longer keep: inactive, as GitHub shows them now.

    Only rows already stored and active are touched (a fork never kept is not stored now), and
    only by a payload at least as new as the row's, so that nothing older brings them back.
    """
    if not payloads:
        return None

    def store(conn: Connection) -> None:
        context: RowContext = {"tenant_id": ctx.tenant_id, "integration_id": ctx.integration["id"],
                               "parent_external_id": None, "fetched_at": db.utcnow()}
        moved = 0
        for payload in payloads:
            row = {**to_row(payload, context), "active": False, "content_hash": ""}
            moved += conn.execute(
                repositories.update()
                .where(*(repositories.c[k] == row[k] for k in KEY), repositories.c.active.is_(True),
                       sa.or_(repositories.c.repo_updated_at.is_(None),
                              repositories.c.repo_updated_at <= row["repo_updated_at"]))
                .values({k: v for k, v in row.items() if k not in KEY})
            ).rowcount
        if moved:
            log.info("%d repositories no longer match the integration's settings; marked inactive", moved)
            ctx.count("deactivated", moved)

    return store


def deactivate(engine: sa.Engine, tenant_id: int, integration_id: int, external_id: str) -> None:
    """GitHub no longer has it: keep the row for history, mark it inactive.

    The content hash is emptied with it (no content hashes to ""): the stored one described the
    active row, and an unchanged repository that comes back (a token that regains access, a
    transient 404) would otherwise match it and never be written active again.
    """
    with engine.begin() as conn:
        conn.execute(
            repositories.update()
            .where(
                repositories.c.tenant_id == tenant_id,
                repositories.c.integration_id == integration_id,
                repositories.c.external_id == external_id,
            )
            .values(active=False, content_hash="", fetched_at=db.utcnow())
        )
    log.info("repository %s is gone from GitHub (404); marked inactive", external_id)


def to_row(payload: dict[str, Any], ctx: RowContext) -> dict[str, Any]:
    """One API payload as one `repositories` row; raises on a payload that lacks identity.

    `fetched_at` stays out of the content hash: a payload fetched again unchanged writes nothing.
    """
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
    row["content_hash"] = hashlib.sha256(orjson.dumps(row, option=orjson.OPT_SORT_KEYS)).hexdigest()
    row["fetched_at"] = ctx.get("fetched_at")
    return row


def upsert(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Insert or update by GitHub id; an unchanged repository is not written at all, and a
    stored one is never replaced by an older version of it."""
    db.upsert(conn, repositories, rows, KEY, changed_when="content_hash",
              newest=("repo_updated_at", "fetched_at"))


EMBED_COLUMNS = ("full_name", "description", "language", "topics")


def embed_text(row: dict[str, Any]) -> str:
    """Name, description, language and topics: what an analyst would search a repository by."""
    parts = [row["full_name"].replace("/", " / "), row.get("description") or ""]
    if row.get("language"):
        parts.append(f"Language: {row['language']}")
    if row.get("topics"):
        parts.append("Topics: " + ", ".join(row["topics"]))
    return "\n".join(p for p in parts if p)
