"""The REST endpoints ghetl reads: listing pages (conditional, halved when they keep failing),
owners, repositories by id, and repository search."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from ..settings import SEARCH_QUERY_MAX
from . import graphql
from .errors import GitHubError, GitHubUnavailable, message, short
from .search import SEARCH_CAP, created, reaches, split
from .transport import Transport

log = logging.getLogger(__name__)

PER_PAGE = 100
MIN_PER_PAGE = 25


@dataclass
class Page:
    """One page of a listing or search. A 304 page has no items: the caller has them stored."""

    url: str
    items: list[dict[str, Any]]
    etag: str | None = None
    next_url: str | None = None
    not_modified: bool = False
    total_count: int | None = None
    incomplete: bool = False
    last_url: str | None = None

    def following(self) -> list[str]:
        """The URLs of every later page, known from `Link: rel="last"`, to fetch side by side;
        empty on the last page or when GitHub gave no last link."""
        if not self.last_url or not self.next_url:
            return []
        first = httpx.URL(self.next_url)
        start, last = int(first.params.get("page", 2)), int(httpx.URL(self.last_url).params.get("page", 0))
        return [self.next_url] + [str(first.copy_set_param("page", n)) for n in range(start + 1, last + 1)]


class GitHubClient(Transport):
    """The transport with GitHub's REST endpoints and GraphQL on top; one per run and token."""

    def graphql(self, document: str, variables: dict[str, Any] | None = None) -> graphql.Result:
        """One GraphQL query (a constant document; data goes in `variables`), see `graphql.query`."""
        return graphql.query(self, document, variables)

    # ----- pages -----------------------------------------------------------------------------

    def page(self, url: str, etag: str | None = None) -> Page:
        """One page of a listing or search, conditional when `etag` is given.

        A page that keeps failing is fetched as two pages of half the size (GitHub's heavy
        listing pages time out at per_page=100 while smaller ones go through).
        """
        try:
            return self._page_once(url, etag)
        except GitHubUnavailable:
            params = httpx.URL(url).params
            size = int(params.get("per_page", 30))
            if size < 2 * MIN_PER_PAGE or size % 2:
                raise
            return self._halves(url, size, int(params.get("page", 1)))

    def _page_once(self, url: str, etag: str | None) -> Page:
        page = self._retrying_incomplete(self._fetch_page, url, etag)
        if page.incomplete:
            self.stats.add(incomplete_results=1)
            log.warning(
                "GitHub's search results for %s stayed incomplete after %d attempts; some repositories may be missing",
                short(url), self.policy.retries + 1,
            )
        return page

    def _fetch_page(self, url: str, etag: str | None) -> Page:
        response, body = self.get(url, etag=etag)
        next_url = response.links.get("next", {}).get("url")
        last_url = response.links.get("last", {}).get("url")
        if response.status_code == 304:
            return Page(url, [], response.headers.get("etag") or etag, next_url, not_modified=True, last_url=last_url)
        if response.status_code != 200:
            raise GitHubError(f"GitHub answered {response.status_code} for {short(url)}: {message(response)}")
        if isinstance(body, dict) and "items" in body:
            return Page(url, body["items"], response.headers.get("etag"), next_url,
                        total_count=body.get("total_count"), incomplete=bool(body.get("incomplete_results")),
                        last_url=last_url)
        if not isinstance(body, list):
            raise GitHubError(f"GitHub answered {short(url)} with {type(body).__name__}, not a list of items")
        return Page(url, body, response.headers.get("etag"), next_url, last_url=last_url)

    def _halves(self, url: str, size: int, number: int) -> Page:
        """Page `number` of `size` as pages 2n-1 and 2n of size/2; the result is not cached (no ETag)."""
        self.stats.add(smaller_pages=1)
        half = size // 2
        log.warning("GitHub kept failing on %s; fetching it as two pages of %d", short(url), half)
        original = httpx.URL(url)
        first = self.page(str(original.copy_set_param("per_page", half).copy_set_param("page", 2 * number - 1)))
        items, has_next = list(first.items), first.next_url is not None
        if has_next:
            second = self.page(str(original.copy_set_param("per_page", half).copy_set_param("page", 2 * number)))
            items += second.items
            has_next = second.next_url is not None
        next_url = str(original.copy_set_param("page", number + 1)) if has_next else None
        return Page(url, items, None, next_url, total_count=first.total_count, incomplete=first.incomplete)

    def paginate(self, url: str) -> Iterator[Page]:
        """Every page from `url` on, following rel="next" exactly as GitHub wrote it."""
        next_url: str | None = url
        while next_url:
            page = self.page(next_url)
            yield page
            next_url = page.next_url

    # ----- endpoints -------------------------------------------------------------------------

    def owner_type(self, owner: str) -> str:
        """`Organization` or `User`: they list repositories at different endpoints."""
        response, body = self.get(f"/users/{owner}")
        if response.status_code == 404:
            raise GitHubError(f"GitHub has no user or organisation named '{owner}' at {self.api_url}")
        if response.status_code != 200:
            raise GitHubError(f"GitHub answered {response.status_code} for /users/{owner}: {message(response)}")
        kind: str = body["type"]
        return kind

    def listing_url(self, owner: str, owner_type: str, viewer: str | None = None) -> str:
        """Where the owner's repositories are listed, most recently updated first.

        A user's own token lists through /user/repos, the only endpoint that includes that
        user's private repositories; /users/{u}/repos lists public ones only.
        """
        order = {"sort": "updated", "direction": "desc", "per_page": PER_PAGE}
        if owner_type == "Organization":
            return self.url(f"/orgs/{owner}/repos", {"type": "all", **order})
        if viewer is not None and viewer.lower() == owner.lower():
            return self.url("/user/repos", {"affiliation": "owner", **order})
        return self.url(f"/users/{owner}/repos", {"type": "owner", **order})

    def get_repository(self, ref: int | str) -> dict[str, Any] | None:
        """A repository by id (survives renames and transfers) or by `owner/name` (a 301 on an
        old name is followed to /repositories/{id}); None when it is gone (404)."""
        path = f"/repos/{ref}" if "/" in str(ref) else f"/repositories/{ref}"
        response, body = self.get(path)
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise GitHubError(f"GitHub answered {response.status_code} for {path}: {message(response)}")
        repository: dict[str, Any] = body
        return repository

    def search_repositories(self, query: str, *, updated_since: dt.datetime | None = None) -> Iterator[Page]:
        """Search results, most recently updated first, in as many `created:` parts as the cap needs.

        A part with more than 1 000 results is split in two by creation time until every part
        is under the cap. With `updated_since`, a part stops at the first page that reaches
        older repositories, and a capped query is only split when its first page does not.
        """
        parts: list[tuple[dt.datetime, dt.datetime] | None] = [None]
        while parts:
            span = parts.pop(0)
            first = self.page(self._search_url(query, span))
            self.stats.add(search_parts=1)
            if (first.total_count or 0) > SEARCH_CAP and not reaches(first, updated_since):
                halves = split(span)
                if halves:
                    log.info("search for %r has %d results, over GitHub's cap of %d; splitting it by creation date",
                             query + created(span), first.total_count, SEARCH_CAP)
                    parts[0:0] = halves
                    continue
                self.stats.add(search_capped=1)
                log.warning(
                    "search for %r still has %d results within one second of creation dates; "
                    "only the first %d can be read",
                    query + created(span), first.total_count, SEARCH_CAP,
                )
            page: Page | None = first
            while page is not None:
                yield page
                if reaches(page, updated_since) or not page.next_url:
                    break
                page = self.page(page.next_url)

    def _search_url(self, query: str, span: tuple[dt.datetime, dt.datetime] | None) -> str:
        q = query + created(span)
        if len(q) > SEARCH_QUERY_MAX:
            raise GitHubError(
                f"the search query would be {len(q)} characters, GitHub allows {SEARCH_QUERY_MAX}: "
                "shorten the integration's repository_filter"
            )
        return self.url("/search/repositories", {"q": q, "sort": "updated", "order": "desc", "per_page": PER_PAGE})
