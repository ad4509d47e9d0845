"""The GitHub REST client: one pooled httpx client per run that treats GitHub the way it asks to be.

- Every response's `x-ratelimit-*` headers are read; before each request the bucket it will
  spend from is checked, and when it is empty (or down to the reserve kept for people using the
  same token interactively) the client waits for the reset with a visible countdown, or stops
  with `RateLimited` saying when to try again if the reset is too far away.
- Secondary limits (403/429 "secondary rate limit" or `retry-after`) wait as GitHub documents:
  `retry-after`, else the primary reset when the bucket is empty, else at least a minute,
  growing exponentially. 5xx answers, dropped connections, timeouts and 200s that are not JSON
  (GitHub's HTML error pages) are retried with exponential backoff and jitter. Both are bounded,
  and both are done by tenacity.
- A listing page that keeps failing at per_page=100 is fetched again as two half pages.
- Conditional requests: `page(url, etag)` sends `If-None-Match`; a 304 costs no rate limit.
- Redirects (a renamed repository's 301) are followed by httpx, which drops the Authorization
  header when a redirect leaves the API's origin; the token is only ever attached for that host.
- Search results are capped at 1 000 per query: `search_repositories` splits the query by
  `created:` ranges until each part is under the cap.

Waits, retries and the reserve come from `Policy.from_env()` so that tests and operators can
tune them without code (GHETL_RATE_LIMIT_RESERVE, GHETL_RATE_LIMIT_MAX_WAIT, ...).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Any

import httpx
import orjson
import tenacity

from . import __version__, logs
from .config import env_float
from .settings import SEARCH_QUERY_MAX

log = logging.getLogger(__name__)

API_VERSION = "2022-11-28"
PER_PAGE = 100
MIN_PER_PAGE = 25
SEARCH_CAP = 1000
SEARCH_EPOCH = dt.datetime(2007, 10, 1, tzinfo=dt.timezone.utc)
RESET_MARGIN = 0.5
COUNTDOWN_STEP = 15.0
_SECONDARY_WORDS = ("secondary rate limit", "abuse detection")


class GitHubError(RuntimeError):
    """GitHub answered with something ghetl cannot go on from; the message says what."""


class TokenRejected(GitHubError):
    """401: the token is wrong, expired or revoked; retrying cannot help."""


class RateLimited(GitHubError):
    """The rate-limit budget is spent until `reset_at` (epoch seconds), too far away to wait for."""

    def __init__(self, message: str, reset_at: float | None) -> None:
        super().__init__(message)
        self.reset_at = reset_at


class GitHubUnavailable(GitHubError):
    """GitHub kept failing (5xx, HTML pages, dropped connections, timeouts) after every retry."""


class GitHubUnreachable(GitHubError):
    """No connection could be made to the API URL after every retry (refused, unknown host, TLS
    handshake failed, connect timeout): the URL is wrong or the network is down, so a smaller
    page or the next repository would fare no better, and the run stops."""


class _Transient(Exception):
    """One attempt failed in a way that a later attempt may not."""


class _SecondaryLimit(Exception):
    def __init__(self, message: str, wait: float | None) -> None:
        super().__init__(message)
        self.wait = wait


class _PrimaryLimit(Exception):
    """The bucket ran dry under us; the gate before the next attempt waits for its reset."""


@dataclass(frozen=True)
class Policy:
    """How patient the client is. Defaults suit github.com; each has an environment variable.

    timeout (GHETL_HTTP_TIMEOUT): seconds per request. retries (GHETL_HTTP_RETRIES): further
    attempts after a failed one. backoff, backoff_max (GHETL_HTTP_BACKOFF, GHETL_HTTP_BACKOFF_MAX):
    first wait and cap in seconds, doubling, with jitter. secondary_wait
    (GHETL_SECONDARY_RATE_LIMIT_WAIT): first wait on a secondary limit without retry-after.
    reserve (GHETL_RATE_LIMIT_RESERVE): core requests left for people using the same token (at
    most a tenth of the bucket, so an unauthenticated run is not locked out). max_wait
    (GHETL_RATE_LIMIT_MAX_WAIT): seconds the client waits for a rate-limit reset; a later reset
    stops the run with a message that says when to run it again.
    """

    timeout: float = 30.0
    retries: int = 5
    backoff: float = 1.0
    backoff_max: float = 60.0
    secondary_wait: float = 60.0
    reserve: int = 100
    max_wait: float = 900.0

    @classmethod
    def from_env(cls) -> Policy:
        return cls(
            timeout=env_float("GHETL_HTTP_TIMEOUT", cls.timeout),
            retries=int(env_float("GHETL_HTTP_RETRIES", cls.retries)),
            backoff=env_float("GHETL_HTTP_BACKOFF", cls.backoff),
            backoff_max=env_float("GHETL_HTTP_BACKOFF_MAX", cls.backoff_max),
            secondary_wait=env_float("GHETL_SECONDARY_RATE_LIMIT_WAIT", cls.secondary_wait),
            reserve=int(env_float("GHETL_RATE_LIMIT_RESERVE", cls.reserve)),
            max_wait=env_float("GHETL_RATE_LIMIT_MAX_WAIT", cls.max_wait),
        )


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


@dataclass
class Stats:
    """What a run cost and met: requests, 304s, rate-limit points, waits, retries."""

    requests: int = 0
    not_modified: int = 0
    rate_limit_points: int = 0
    retries: int = 0
    secondary_limits: int = 0
    rate_limit_waits: int = 0
    waited_seconds: float = 0.0
    smaller_pages: int = 0
    search_parts: int = 0
    search_capped: int = 0
    incomplete_results: int = 0
    remaining: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["waited_seconds"] = round(self.waited_seconds, 3)
        out["rate_limit_remaining"] = dict(out.pop("remaining"))
        return out


@dataclass
class _Bucket:
    limit: int
    remaining: int
    reset: float


def retry_moment(reset_at: float) -> str:
    """'14:05 CEST (in 42 minutes)': when GitHub refills a bucket, in the reader's own clock."""
    local = dt.datetime.fromtimestamp(reset_at).astimezone()
    minutes = max(1, round((reset_at - time.time()) / 60))
    day = "" if local.date() == dt.date.today() else f" on {local:%Y-%m-%d}"
    return f"{local:%H:%M} {local.tzname()}{day} (in {minutes} minute{'s' if minutes != 1 else ''})"


class GitHubClient:
    """A client bound to one API root (github.com or `https://HOST/api/v3`) and one token."""

    def __init__(
        self, api_url: str, token: str | None, *, policy: Policy | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self._origin = _origin(httpx.URL(self.api_url))
        self._token = token
        if token:
            logs.register_secret(token)
        self.policy = policy or Policy.from_env()
        headers = {
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": API_VERSION,
            "User-Agent": f"ghetl/{__version__}",
        }
        self._http = httpx.Client(headers=headers, timeout=self.policy.timeout, transport=transport, follow_redirects=True)
        self._buckets: dict[str, _Bucket] = {}
        self.stats = Stats()
        # Built once per client rather than once per call: a Retrying and the state of its call
        # refer to each other, so each one built per call (holding its response) lived on as
        # garbage until the next full collection.
        self._retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(
                (_Transient, _SecondaryLimit, _PrimaryLimit, httpx.TimeoutException, httpx.NetworkError,
                 httpx.RemoteProtocolError)
            ),
            stop=tenacity.stop_after_attempt(self.policy.retries + 1),
            wait=self._backoff,
            sleep=self._sleep,
            before_sleep=self._log_retry,
        )
        self._retrying_incomplete = tenacity.Retrying(
            retry=tenacity.retry_if_result(lambda page: page.incomplete),
            stop=tenacity.stop_after_attempt(self.policy.retries + 1),
            wait=self._jittered,
            sleep=self._sleep,
            before_sleep=lambda state: log.warning("GitHub's search results for %s are incomplete; asking again",
                                                   _short(state.args[0])),
            retry_error_callback=lambda state: state.outcome.result(),
        )

    def __enter__(self) -> GitHubClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def __repr__(self) -> str:
        return f"GitHubClient({self.api_url!r}, token={'set' if self._token else 'none'})"

    @property
    def authenticated(self) -> bool:
        return bool(self._token)

    def url(self, path: str, params: dict[str, Any] | None = None) -> str:
        """An absolute URL below the API root; the same arguments always give the same text."""
        return str(httpx.URL(f"{self.api_url}{path}", params=params))

    # ----- one request ---------------------------------------------------------------------

    def get(self, path_or_url: str, *, etag: str | None = None) -> tuple[httpx.Response, Any]:
        """GET with every retry GitHub calls for; returns the response and its JSON (None for 304).

        Answers no caller can use (401, rate limits too long to wait for, persistent failures)
        raise; others (a plain 403 refusal, 404, 422, ...) are returned for the caller to judge.
        """
        url = path_or_url if "://" in path_or_url else f"{self.api_url}{path_or_url}"
        try:
            return self._retrying(self._attempt, url, etag)
        except tenacity.RetryError as exc:
            last = exc.last_attempt.exception()
            what = _describe(last)
            n = exc.last_attempt.attempt_number
            attempts = f"{n} attempt{'' if n == 1 else 's'}"
            if isinstance(last, _SecondaryLimit):
                raise RateLimited(
                    f"GitHub kept applying its secondary rate limit to {_short(url)} after {attempts}; "
                    "run the sync again in a few minutes", None,
                ) from None
            if isinstance(last, (httpx.ConnectError, httpx.ConnectTimeout)):
                raise GitHubUnreachable(
                    f"could not connect to GitHub at {self.api_url} ({what}) after {attempts}; "
                    "check the integration's API URL and the network"
                ) from None
            raise GitHubUnavailable(f"GitHub at {self.api_url} kept failing for {_short(url)} ({what}) after {attempts}") from None

    def _attempt(self, url: str, etag: str | None) -> tuple[httpx.Response, Any]:
        resource = "search" if "/search/" in httpx.URL(url).path else "core"
        self._gate(resource)
        headers = {"If-None-Match": etag} if etag else {}
        if self._token and _origin(httpx.URL(url)) == self._origin:
            headers["Authorization"] = f"Bearer {self._token}"
        try:
            response = self._http.get(url, headers=headers)
        except httpx.TransportError:
            self.stats.requests += 1
            raise
        for hop in [*response.history, response]:
            self._account(hop)
        return response, self._judge(response)

    def _judge(self, response: httpx.Response) -> Any:
        """The JSON of a usable answer, or the exception that says what to do about it."""
        status = response.status_code
        if status == 304:
            return None
        if status == 401:
            raise TokenRejected(
                f"token rejected by {self._origin[1]} (401 Bad credentials): check the token's value and expiry"
            )
        if status in (403, 429):
            self._rate_limited(response)
        if status >= 500:
            raise _Transient(f"GitHub answered {status}")
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError:
            if status < 300:
                raise _Transient(f"GitHub answered {status} with a page that is not JSON") from None
            return None

    def _rate_limited(self, response: httpx.Response) -> None:
        """Raise for a 403/429 that is a secondary or primary rate limit; a plain refusal is the caller's."""
        kind = _limit_kind(response)
        if kind == "secondary":
            self.stats.secondary_limits += 1
            retry_after = response.headers.get("retry-after", "")
            wait = float(retry_after) if retry_after.isascii() and retry_after.isdigit() else None
            reset = response.headers.get("x-ratelimit-reset")
            if wait is None and response.headers.get("x-ratelimit-remaining") == "0" and reset:
                wait = max(0.0, float(reset) - time.time()) + RESET_MARGIN
            raise _SecondaryLimit(f"secondary rate limit ({response.status_code})", wait)
        if kind == "primary":
            resource = response.headers.get("x-ratelimit-resource", "core")
            bucket = self._buckets.get(resource)
            if bucket is not None and bucket.reset - time.time() > self.policy.max_wait:
                raise self._too_long(resource, bucket)
            raise _PrimaryLimit(f"the {resource} rate limit is spent")

    def _account(self, response: httpx.Response) -> None:
        """GitHub charges a point per request, except 304s and requests it refused for rate limits."""
        self.stats.requests += 1
        headers = response.headers
        status = response.status_code
        if status == 304:
            self.stats.not_modified += 1
        resource = headers.get("x-ratelimit-resource")
        remaining = headers.get("x-ratelimit-remaining")
        if resource is None or remaining is None:
            return
        self.stats.remaining[resource] = int(remaining)
        self._buckets[resource] = _Bucket(
            int(headers.get("x-ratelimit-limit", 0)), int(remaining), float(headers.get("x-ratelimit-reset", 0))
        )
        free = status in (304, 401) or _limit_kind(response) or response.request.url.path.endswith("/rate_limit")
        if not free:
            self.stats.rate_limit_points += 1

    # ----- rate-limit waits ------------------------------------------------------------------

    def _gate(self, resource: str) -> None:
        """Before spending from a bucket: wait for its reset when it is empty, or stop the run."""
        bucket = self._buckets.get(resource)
        if bucket is None:
            return
        reserve = min(self.policy.reserve, bucket.limit // 10) if resource == "core" else 0
        if bucket.remaining > reserve:
            return
        wait = bucket.reset - time.time() + RESET_MARGIN
        if wait > 0:
            if wait - RESET_MARGIN > self.policy.max_wait:
                raise self._too_long(resource, bucket)
            self.stats.rate_limit_waits += 1
            kept = f", keeping {reserve} for interactive use" if reserve else ""
            refill = retry_moment(bucket.reset)
            self._countdown(wait, f"GitHub's {resource} rate limit is spent{kept}; it refills at {refill}")
        del self._buckets[resource]

    def _too_long(self, resource: str, bucket: _Bucket) -> RateLimited:
        spent = f"down to the {bucket.remaining} kept for interactive use" if bucket.remaining else "spent"
        return RateLimited(
            f"GitHub's {resource} rate limit for this token is {spent} until {retry_moment(bucket.reset)}, longer than "
            f"GHETL_RATE_LIMIT_MAX_WAIT={self.policy.max_wait:g} s allows to wait; run the sync again after that",
            bucket.reset,
        )

    def _countdown(self, seconds: float, why: str) -> None:
        log.warning("%s: waiting %s", why, _duration(seconds))
        left = seconds
        while left > 0:
            self._sleep(min(left, COUNTDOWN_STEP))
            left -= COUNTDOWN_STEP
            if left > 0:
                log.info("still waiting for GitHub's rate limit: %s left", _duration(left))

    def _sleep(self, seconds: float) -> None:
        self.stats.waited_seconds += seconds
        time.sleep(seconds)

    def _backoff(self, state: tenacity.RetryCallState) -> float:
        failure = state.outcome.exception() if state.outcome else None
        if isinstance(failure, _PrimaryLimit):
            return 0.0
        if isinstance(failure, _SecondaryLimit):
            if failure.wait is not None:
                return failure.wait
            return self.policy.secondary_wait * 2 ** (state.attempt_number - 1)
        return self._jittered(state)

    def _jittered(self, state: tenacity.RetryCallState) -> float:
        """Exponential backoff plus random jitter, so that clients that failed together do not retry together."""
        policy = self.policy
        wait = tenacity.wait_exponential_jitter(multiplier=policy.backoff, max=policy.backoff_max, jitter=policy.backoff)
        return wait(state)

    def _log_retry(self, state: tenacity.RetryCallState) -> None:
        self.stats.retries += 1
        failure = state.outcome.exception() if state.outcome else None
        if isinstance(failure, _PrimaryLimit):
            return
        pause = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "%s for %s; trying again in %s (attempt %d of %d)",
            _describe(failure), _short(state.args[0]), _duration(pause),
            state.attempt_number + 1, self.policy.retries + 1,
        )

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
            self.stats.incomplete_results += 1
            log.warning(
                "GitHub's search results for %s stayed incomplete after %d attempts; some repositories may be missing",
                _short(url), self.policy.retries + 1,
            )
        return page

    def _fetch_page(self, url: str, etag: str | None) -> Page:
        response, body = self.get(url, etag=etag)
        next_url = response.links.get("next", {}).get("url")
        if response.status_code == 304:
            return Page(url, [], response.headers.get("etag") or etag, next_url, not_modified=True)
        if response.status_code != 200:
            raise GitHubError(f"GitHub answered {response.status_code} for {_short(url)}: {_message(response)}")
        if isinstance(body, dict) and "items" in body:
            return Page(url, body["items"], response.headers.get("etag"), next_url,
                        total_count=body.get("total_count"), incomplete=bool(body.get("incomplete_results")))
        if not isinstance(body, list):
            raise GitHubError(f"GitHub answered {_short(url)} with {type(body).__name__}, not a list of items")
        return Page(url, body, response.headers.get("etag"), next_url)

    def _halves(self, url: str, size: int, number: int) -> Page:
        """Page `number` of `size` as pages 2n-1 and 2n of size/2; the result is not cached (no ETag)."""
        self.stats.smaller_pages += 1
        half = size // 2
        log.warning("GitHub kept failing on %s; fetching it as two pages of %d", _short(url), half)
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
            raise GitHubError(f"GitHub answered {response.status_code} for /users/{owner}: {_message(response)}")
        return body["type"]

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
            raise GitHubError(f"GitHub answered {response.status_code} for {path}: {_message(response)}")
        return body

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
            self.stats.search_parts += 1
            if (first.total_count or 0) > SEARCH_CAP and not _reaches(first, updated_since):
                halves = _split(span)
                if halves:
                    log.info("search for %r has %d results, over GitHub's cap of %d; splitting it by creation date",
                             query + _created(span), first.total_count, SEARCH_CAP)
                    parts[0:0] = halves
                    continue
                self.stats.search_capped += 1
                log.warning(
                    "search for %r still has %d results within one second of creation dates; only the first %d can be read",
                    query + _created(span), first.total_count, SEARCH_CAP,
                )
            page: Page | None = first
            while page is not None:
                yield page
                if _reaches(page, updated_since) or not page.next_url:
                    break
                page = self.page(page.next_url)

    def _search_url(self, query: str, span: tuple[dt.datetime, dt.datetime] | None) -> str:
        q = query + _created(span)
        if len(q) > SEARCH_QUERY_MAX:
            raise GitHubError(
                f"the search query would be {len(q)} characters, GitHub allows {SEARCH_QUERY_MAX}: "
                "shorten the integration's repository_filter"
            )
        return self.url("/search/repositories", {"q": q, "sort": "updated", "order": "desc", "per_page": PER_PAGE})


def _limit_kind(response: httpx.Response) -> str | None:
    """'secondary' or 'primary' for a 403/429 that is a rate limit, told apart as GitHub documents:
    `retry-after` or the wording means secondary, an empty bucket means primary."""
    if response.status_code not in (403, 429):
        return None
    if "retry-after" in response.headers or any(w in _message(response).lower() for w in _SECONDARY_WORDS):
        return "secondary"
    return "primary" if response.headers.get("x-ratelimit-remaining") == "0" else None


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host.lower(), url.port


def _reaches(page: Page, since: dt.datetime | None) -> bool:
    """Whether a page sorted by update time reaches repositories last updated before `since`."""
    return since is not None and any(_updated(item) < since for item in page.items)


def _updated(item: dict[str, Any]) -> dt.datetime:
    value = item.get("updated_at")
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")) if value else SEARCH_EPOCH


def _split(span: tuple[dt.datetime, dt.datetime] | None) -> list[tuple[dt.datetime, dt.datetime]] | None:
    """Two halves of a creation-time span: whole days while it is days long, then seconds."""
    if span is None:
        today = dt.datetime.now(dt.timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
        span = (SEARCH_EPOCH, today + dt.timedelta(days=1))
    start, end = span
    days = (end - start).days
    if days >= 2 and _midnight(start) and _midnight(end):
        middle = start + dt.timedelta(days=days // 2)
    elif (end - start).total_seconds() >= 2:
        middle = start + dt.timedelta(seconds=int((end - start).total_seconds()) // 2)
    else:
        return None
    return [(start, middle), (middle, end)]


def _created(span: tuple[dt.datetime, dt.datetime] | None) -> str:
    """The `created:` qualifier for [start, end): dates when whole days (GitHub's date ranges
    include their last day), else timestamps (a repository on the boundary may show up in both
    parts, which deduplication by id absorbs)."""
    if span is None:
        return ""
    start, end = span
    if _midnight(start) and _midnight(end):
        return f" created:{start:%Y-%m-%d}..{end - dt.timedelta(days=1):%Y-%m-%d}"
    return f" created:{start:%Y-%m-%dT%H:%M:%SZ}..{end:%Y-%m-%dT%H:%M:%SZ}"


def _midnight(moment: dt.datetime) -> bool:
    return moment.time() == dt.time(0)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes} min {rest} s"


def _short(url: str) -> str:
    """A URL for messages: path and query only (never credentials, and short)."""
    parsed = httpx.URL(url)
    query = parsed.query.decode()
    return parsed.path + (f"?{query}" if query else "")


def _describe(failure: BaseException | None) -> str:
    """What went wrong, in words, with the system's own reason where it gives one
    ("[Errno 111] Connection refused", "[Errno -2] Name or service not known", an SSL error)."""
    if failure is None:
        return "unknown failure"
    reason = str(failure).strip().splitlines()[0] if str(failure).strip() else ""
    if isinstance(failure, httpx.ConnectTimeout):
        return "the connection timed out"
    if isinstance(failure, httpx.TimeoutException):
        return "GitHub did not answer in time"
    if isinstance(failure, httpx.ConnectError):
        return reason or "the connection was refused"
    if isinstance(failure, (httpx.NetworkError, httpx.RemoteProtocolError)):
        return "the connection to GitHub broke" + (f": {reason}" if reason else "")
    return reason or type(failure).__name__


def _message(response: httpx.Response) -> str:
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return response.text[:200].replace("\n", " ")
    return str(body.get("message", ""))[:200] if isinstance(body, dict) else ""
