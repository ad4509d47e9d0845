"""The GitHub REST client: one pooled httpx client per run, every call visible here.

Listing follows the `Link: rel="next"` URL exactly as GitHub gives it (GitHub rewrites
`/orgs/acme/repos` into `/organizations/{id}/repos`), and every response's rate-limit headers
are read so that the run knows what it spent.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from . import __version__

log = logging.getLogger(__name__)

API_VERSION = "2022-11-28"
PER_PAGE = 100


class GitHubError(RuntimeError):
    """GitHub answered with something ghetl cannot go on from; the message says what."""


class TokenRejected(GitHubError):
    """401: the token is wrong, expired or revoked; retrying cannot help."""


class RateLimited(GitHubError):
    """The rate-limit budget is spent; `reset_at` is when GitHub refills it (epoch seconds)."""

    def __init__(self, message: str, reset_at: float | None) -> None:
        super().__init__(message)
        self.reset_at = reset_at


@dataclass
class Page:
    """One page of a listing: its items, and whether GitHub said it is unchanged (304)."""

    url: str
    items: list[dict[str, Any]]
    etag: str | None
    not_modified: bool = False


@dataclass
class Stats:
    """What a run cost: requests made, 304s received, rate-limit points spent."""

    requests: int = 0
    not_modified: int = 0
    rate_limit_points: int = 0
    remaining: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "not_modified": self.not_modified,
            "rate_limit_points": self.rate_limit_points,
            "rate_limit_remaining": dict(self.remaining),
        }


class GitHubClient:
    """A client bound to one API root (github.com or `https://HOST/api/v3`) and one token."""

    def __init__(self, api_url: str, token: str | None, *, timeout: float = 30.0, transport: httpx.BaseTransport | None = None) -> None:
        self.api_url = api_url.rstrip("/")
        self._host = urlsplit(self.api_url).netloc
        self._token = token
        headers = {
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": API_VERSION,
            "User-Agent": f"ghetl/{__version__}",
        }
        self._http = httpx.Client(headers=headers, timeout=timeout, transport=transport, follow_redirects=False)
        self.stats = Stats()

    def __enter__(self) -> GitHubClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def __repr__(self) -> str:
        return f"GitHubClient({self.api_url!r}, token={'set' if self._token else 'none'})"

    def _auth(self, url: str) -> dict[str, str]:
        """The token goes only to the configured API host, never to a host a redirect names."""
        if self._token and urlsplit(url).netloc == self._host:
            return {"Authorization": f"Bearer {self._token}"}
        return {}

    def _url(self, path_or_url: str) -> str:
        return path_or_url if path_or_url.startswith(("http://", "https://")) else f"{self.api_url}{path_or_url}"

    def request(self, path_or_url: str, params: dict[str, Any] | None = None, *, etag: str | None = None) -> httpx.Response:
        """GET once and account for it; raise on answers no caller can use."""
        url = self._url(path_or_url)
        headers = self._auth(url)
        if etag:
            headers["If-None-Match"] = etag
        response = self._http.get(url, params=params, headers=headers)
        self._account(response)
        if response.status_code == 401:
            raise TokenRejected(f"token rejected by {self._host} (401 Bad credentials): check the token's value and expiry")
        if response.status_code in (403, 429) and response.headers.get("x-ratelimit-remaining") == "0":
            reset = response.headers.get("x-ratelimit-reset")
            raise RateLimited(f"GitHub rate limit exhausted on {self._host}", float(reset) if reset else None)
        return response

    def _account(self, response: httpx.Response) -> None:
        """GitHub charges one point per request, except for 304s on conditional requests."""
        self.stats.requests += 1
        if response.status_code == 304:
            self.stats.not_modified += 1
        elif not response.request.url.path.endswith("/rate_limit"):
            self.stats.rate_limit_points += 1
        resource = response.headers.get("x-ratelimit-resource")
        remaining = response.headers.get("x-ratelimit-remaining")
        if resource and remaining is not None:
            self.stats.remaining[resource] = int(remaining)

    def _json(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            raise GitHubError(f"GitHub answered {response.status_code} for {response.request.url.path}: {_message(response)}")
        try:
            return response.json()
        except ValueError:
            raise GitHubError(f"GitHub answered {response.status_code} with a body that is not JSON for {response.request.url.path}") from None

    def paginate(self, path: str, params: dict[str, Any]) -> Iterator[Page]:
        """Every page of a listing, following rel="next" exactly as GitHub wrote it."""
        url: str | None = self._url(path)
        query: dict[str, Any] | None = {**params, "per_page": PER_PAGE}
        while url:
            response = self.request(url, query)
            body = self._json(response)
            items = body["items"] if isinstance(body, dict) and "items" in body else body
            yield Page(str(response.url), items, response.headers.get("etag"))
            url = response.links.get("next", {}).get("url")
            query = None

    def owner_type(self, owner: str) -> str:
        """`Organization` or `User`: they list repositories at different endpoints."""
        response = self.request(f"/users/{owner}")
        if response.status_code == 404:
            raise GitHubError(f"GitHub has no user or organisation named '{owner}' at {self.api_url}")
        return self._json(response)["type"]

    def list_repositories(self, owner: str, owner_type: str) -> Iterator[Page]:
        """The owner's repositories, most recently updated first (so incremental runs can stop early)."""
        if owner_type == "Organization":
            return self.paginate(f"/orgs/{owner}/repos", {"type": "all", "sort": "updated", "direction": "desc"})
        return self.paginate(f"/users/{owner}/repos", {"type": "owner", "sort": "updated", "direction": "desc"})

    def search_repositories(self, query: str) -> Iterator[Page]:
        return self.paginate("/search/repositories", {"q": query, "sort": "updated", "order": "desc"})

    def get_repository(self, repo_id: int | str) -> dict[str, Any] | None:
        """A repository by id, which survives renames and transfers; None when it is gone (404)."""
        response = self.request(f"/repositories/{repo_id}")
        if response.status_code == 404:
            return None
        return self._json(response)


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json().get("message", ""))[:200]
    except ValueError:
        return response.text[:200].replace("\n", " ")
