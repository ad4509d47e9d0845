"""What every entity's collector does the same way, so that an entity's file says only what is its own.

- `listing`: a REST listing by page number, newest update first, each page conditional on the
  ETag it had last time. A 304 costs no rate-limit point and, on a full run, gives the payloads
  stored with that page again. A full run knows the number of pages from page 1's
  `Link: rel="last"` and asks for the others side by side; an incremental run stops at the
  first page that reaches items older than the cut-off, which only that page can tell, so it
  stays one page ahead.
- `in_chunks`: items worked on in chunks, the chunks side by side: known items fetched again
  by id (one id per REST request, many per GraphQL `nodes(ids:)` query), or a parent step's
  items, several per query.
- `to_end`: a GraphQL connection read to its end by cursor (keyset paging).

Side by side means as many requests in flight as the token's pacer allows (`GHETL_CONCURRENCY`).
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import Any, TypeVar

from sqlalchemy.engine import Connection

from ..github import Page
from ..github.fanout import concurrently
from ..store import http_cache
from . import ExtractContext

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
Updated = Callable[[dict[str, Any]], "dt.datetime | None"]


def workers(ctx: ExtractContext) -> int:
    """Requests one step keeps asked for at once: what the token's pacer lets through."""
    return int(ctx.client.pacer.limits.concurrency)


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Lists of `size` items (Python 3.11 has no itertools.batched); lazy, so a parent's items
    are worked on as they come."""
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


# ----- REST listings by page number -----------------------------------------------------------

@dataclass
class Listed:
    """One listing page as fetched: the page, its cache entry, for a 304 the stored payloads, and
    the oldest update among its items (where an incremental run may stop)."""

    url: str
    page: Page
    entry: http_cache.CachedPage | None
    reused: list[dict[str, Any]] | None
    oldest: dt.datetime | None

    @property
    def next_url(self) -> str | None:
        return self.page.next_url or (self.entry.next_url if self.reused is not None and self.entry else None)

    def landing(self, cache: http_cache.PageCache, kept: list[str]) -> Callable[[Connection], None] | None:
        """What remembers this page's ETag and the ids of the items it stands for (`kept`), for
        the `Batch.landed` of the transaction that stores those items: never before they are
        stored, so that a run stopped midway gets 304s next time only for the pages it has."""
        if self.reused is not None or not self.page.etag:
            return None
        return functools.partial(cache.put, url=self.url, etag=self.page.etag, item_ids=kept,
                                 next_url=self.page.next_url, oldest=self.oldest)


def listing(ctx: ExtractContext, cache: http_cache.PageCache, url: str, updated: Updated) -> Iterator[Listed]:
    """Every page of the listing at `url` that this run needs, in the order they come back.

    `updated` is an item's last update, which the listing is sorted by (newest first).
    """
    fetch = functools.partial(_fetch, ctx, cache, updated=updated)
    first = fetch(url)
    later = first.page.following() if ctx.cutoff is None else []
    if later:
        log.info("the listing has %d more pages; fetching up to %d at a time", len(later), workers(ctx))
        yield first
        yield from concurrently(fetch, later, workers(ctx))
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ghetl-next-page") as ahead:
        got: Listed | None = first
        while got is not None:
            next_url = got.next_url if not _reached(got.oldest, ctx) else None
            fetching = ahead.submit(fetch, next_url) if next_url is not None else None
            yield got
            got = fetching.result() if fetching is not None else None


def _fetch(ctx: ExtractContext, cache: http_cache.PageCache, url: str, updated: Updated) -> Listed:
    entry = cache.get(url)
    page = ctx.client.page(url, etag=entry.etag if entry else None)
    if page.not_modified and entry is not None:
        reused = [] if not ctx.full else cache.payloads(entry.item_ids)
        if reused is not None:
            return Listed(url, page, entry, reused, entry.oldest_updated_at)
        log.info("stored payloads for %s are missing; fetching the page again", url)
        page = ctx.client.page(url)
    times = [t for t in map(updated, page.items) if t is not None]
    return Listed(url, page, entry, None, min(times, default=None))


def _reached(oldest: dt.datetime | None, ctx: ExtractContext) -> bool:
    if ctx.cutoff is None or oldest is None or oldest >= ctx.cutoff:
        return False
    log.info("listing reached items unchanged since %s; stopped paging", ctx.cutoff.isoformat())
    return True


# ----- in chunks -------------------------------------------------------------------------------

def in_chunks(ctx: ExtractContext, items: Iterable[T], fetch: Callable[[list[T]], R], size: int = 1) -> Iterator[R]:
    """`fetch` of each chunk of `size` items (ids, parent items), in the order they finish, the
    chunks side by side."""
    yield from concurrently(fetch, batched(items, size), workers(ctx))


# ----- GraphQL connections by cursor ----------------------------------------------------------

def to_end(first: dict[str, Any], page_after: Callable[[str], dict[str, Any]]) -> list[dict[str, Any]]:
    """Every node of a connection: those of its first page, then of `page_after(cursor)` for as
    long as GitHub says there is a next page. Null nodes (items GitHub could not resolve) are
    left out."""
    nodes = [n for n in first["nodes"] if n]
    info = first["pageInfo"]
    while info["hasNextPage"]:
        page = page_after(info["endCursor"])
        nodes += [n for n in page["nodes"] if n]
        info = page["pageInfo"]
    return nodes
