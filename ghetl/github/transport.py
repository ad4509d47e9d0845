"""One request to GitHub, the way GitHub asks to be treated.

- Every response's `x-ratelimit-*` headers are read; before each request the bucket it will
  spend from is checked, and when it is empty (or down to the reserve kept for people using the
  same token interactively) the transport waits for the reset with a visible countdown, or stops
  with `RateLimited` saying when to try again if the reset is too far away.
- Secondary limits (403/429 "secondary rate limit" or `retry-after`) wait as GitHub documents:
  `retry-after`, else the primary reset when the bucket is empty, else at least a minute,
  growing exponentially; every request of the token waits with it (`pacer.Pacer.hold`), and
  fewer go at once afterwards. 5xx answers, dropped connections, timeouts and 200s that are not JSON
  (GitHub's HTML error pages) are retried with exponential backoff and jitter. Both are bounded,
  and both are done by tenacity.
- Requests of one token go through one `pacer.Pacer` per process: at most GHETL_CONCURRENCY
  in flight and GitHub's points per minute, so that threads may send them concurrently.
- Redirects (a renamed repository's 301) are followed by httpx, which drops the Authorization
  header when a redirect leaves the API's origin; `auth.TokenAuth` only ever attaches the
  token for that origin.

Waits, retries and the reserve come from `Policy.from_env()` so that tests and operators can
tune them without code (GHETL_RATE_LIMIT_RESERVE, GHETL_RATE_LIMIT_MAX_WAIT, ...).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass, field, fields
from typing import Any, Self

import httpx
import orjson
import tenacity

from .. import __version__
from ..config import env_float
from .auth import TokenAuth, TokenPool, origin
from .errors import (
    GitHubUnavailable,
    GitHubUnreachable,
    PrimaryLimit,
    QueryTimedOut,
    RateLimited,
    SecondaryLimit,
    TokenRejected,
    Transient,
    describe,
    message,
    short,
)
from .pacer import Pacer, pacer_for

log = logging.getLogger(__name__)

API_VERSION = "2022-11-28"
RESET_MARGIN = 0.5
COUNTDOWN_STEP = 15.0
_SECONDARY_WORDS = ("secondary rate limit", "abuse detection")


@dataclass(frozen=True)
class Policy:
    """How patient the client is. Defaults suit github.com; each has an environment variable.

    timeout (GHETL_HTTP_TIMEOUT): seconds per request. retries (GHETL_HTTP_RETRIES): further
    attempts after a failed one. backoff, backoff_max (GHETL_HTTP_BACKOFF, GHETL_HTTP_BACKOFF_MAX):
    first wait and cap in seconds, doubling with jitter while the failure repeats; short, since
    other requests go on meanwhile. secondary_wait
    (GHETL_SECONDARY_RATE_LIMIT_WAIT): first wait on a secondary limit without retry-after.
    reserve (GHETL_RATE_LIMIT_RESERVE): core requests left for people using the same token (at
    most a tenth of the bucket, so an unauthenticated run is not locked out). max_wait
    (GHETL_RATE_LIMIT_MAX_WAIT): seconds the client waits for a rate-limit reset; a later reset
    stops the run with a message that says when to run it again.
    """

    timeout: float = 30.0
    retries: int = 5
    backoff: float = 0.25
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


_accounting = threading.Lock()  # counts and buckets, updated by every thread that sends requests


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
    graphql_requests: int = 0
    graphql_points: int = 0
    remaining: dict[str, int] = field(default_factory=dict)

    def add(self, **counts: float) -> None:
        """Count for one request; clients of one token answer in several threads at once."""
        with _accounting:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)

    def as_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["waited_seconds"] = round(self.waited_seconds, 3)
        out["rate_limit_remaining"] = dict(out.pop("remaining"))
        return out


@dataclass
class Bucket:
    limit: int
    remaining: int
    reset: float


def retry_moment(reset_at: float) -> str:
    """'14:05 CEST (in 42 minutes)': when GitHub refills a bucket, in the reader's own clock."""
    local = dt.datetime.fromtimestamp(reset_at).astimezone()
    minutes = max(1, round((reset_at - time.time()) / 60))
    day = "" if local.date() == dt.date.today() else f" on {local:%Y-%m-%d}"
    return f"{local:%H:%M} {local.tzname()}{day} (in {minutes} minute{'s' if minutes != 1 else ''})"


class Transport:
    """One pooled httpx client bound to one API root (github.com or `https://HOST/api/v3`) and
    one token: every request goes through its retries, rate-limit gate and accounting."""

    def __init__(
        self, api_url: str, token: str | None, *, policy: Policy | None = None,
        transport: httpx.BaseTransport | None = None, auth: httpx.Auth | None = None,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self._origin = origin(httpx.URL(self.api_url))
        self.auth: httpx.Auth | None = auth or (TokenAuth(token, self.api_url) if token else None)
        self.policy = policy or Policy.from_env()
        self.pacer: Pacer = pacer_for(self.api_url, getattr(self.auth, "pacing_key", "anonymous"),
                                      len(self.auth.names) if isinstance(self.auth, TokenPool) else 1)
        connections = self.pacer.limits.concurrency
        headers = {
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": API_VERSION,
            "User-Agent": f"ghetl/{__version__}",
        }
        self._http = httpx.Client(headers=headers, timeout=self.policy.timeout, transport=transport,
                                  follow_redirects=True, auth=self.auth,
                                  limits=httpx.Limits(max_connections=connections,
                                                      max_keepalive_connections=connections))
        self._buckets: dict[str, Bucket] = {}
        self.stats = Stats()
        # Built once per client rather than once per call: a Retrying and the state of its call
        # refer to each other, so each one built per call (holding its response) lived on as
        # garbage until the next full collection.
        self._retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(
                (Transient, SecondaryLimit, PrimaryLimit, httpx.TimeoutException, httpx.NetworkError,
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
                                                   short(state.args[0])),
            retry_error_callback=_last_result,
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.api_url!r}, token={'set' if self.auth else 'none'})"

    @property
    def authenticated(self) -> bool:
        return self.auth is not None

    def url(self, path: str, params: dict[str, Any] | None = None) -> str:
        """An absolute URL below the API root; the same arguments always give the same text."""
        return str(httpx.URL(f"{self.api_url}{path}", params=params))

    # ----- one request ---------------------------------------------------------------------

    def get(self, path_or_url: str, *, etag: str | None = None) -> tuple[httpx.Response, Any]:
        """GET with every retry GitHub calls for; returns the response and its JSON (None for 304).

        Answers no caller can use (401, rate limits too long to wait for, persistent failures)
        raise; others (a plain 403 refusal, 404, 422, ...) are returned for the caller to judge.
        """
        return self._send(path_or_url, etag=etag)

    def post(self, path_or_url: str, body: dict[str, Any]) -> tuple[httpx.Response, Any]:
        """POST a JSON body (a GraphQL query) with the same retries, limits and accounting as `get`."""
        return self._send(path_or_url, body=body)

    def _send(self, path_or_url: str, *, etag: str | None = None,
              body: dict[str, Any] | None = None) -> tuple[httpx.Response, Any]:
        url = path_or_url if "://" in path_or_url else f"{self.api_url}{path_or_url}"
        try:
            return self._retrying(self._attempt, url, etag, body)
        except tenacity.RetryError as exc:
            last = exc.last_attempt.exception()
            what = describe(last)
            n = exc.last_attempt.attempt_number
            attempts = f"{n} attempt{'' if n == 1 else 's'}"
            if isinstance(last, SecondaryLimit):
                raise RateLimited(
                    f"GitHub kept applying its secondary rate limit to {short(url)} after {attempts}; "
                    "run the sync again in a few minutes", None,
                ) from None
            if isinstance(last, (httpx.ConnectError, httpx.ConnectTimeout)):
                raise GitHubUnreachable(
                    f"could not connect to GitHub at {self.api_url} ({what}) after {attempts}; "
                    "check the integration's API URL and the network"
                ) from None
            raise GitHubUnavailable(
                f"GitHub at {self.api_url} kept failing for {short(url)} ({what}) after {attempts}"
            ) from None

    def _attempt(self, url: str, etag: str | None, body: dict[str, Any] | None) -> tuple[httpx.Response, Any]:
        resource = _resource(httpx.URL(url).path)
        self._gate(resource)
        headers = {"If-None-Match": etag} if etag else {}
        try:
            with self.pacer.slot("graphql" if resource == "graphql" else "rest"):
                if body is None:
                    response = self._http.get(url, headers=headers)
                else:
                    response = self._http.post(url, headers=headers, content=orjson.dumps(body))
        except httpx.TransportError:
            self.stats.add(requests=1)
            raise
        for hop in [*response.history, response]:
            self._account(hop)
        if resource == "graphql" and response.status_code in (502, 504):
            raise QueryTimedOut(f"GitHub gave up on a GraphQL query ({response.status_code})")
        judged = self._judge(response)
        if resource == "graphql":
            self._graphql_limits(response, judged)
        self.pacer.answered()
        return response, judged

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
            raise Transient(f"GitHub answered {status}")
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError:
            if status < 300:
                raise Transient(f"GitHub answered {status} with a page that is not JSON") from None
            return None

    def _rate_limited(self, response: httpx.Response) -> None:
        """Raise for a 403/429 that is a secondary or primary rate limit; a plain refusal is the caller's."""
        kind = limit_kind(response)
        if kind == "secondary":
            self.stats.add(secondary_limits=1)
            retry_after = response.headers.get("retry-after", "")
            wait = float(retry_after) if retry_after.isascii() and retry_after.isdigit() else None
            reset = response.headers.get("x-ratelimit-reset")
            if wait is None and response.headers.get("x-ratelimit-remaining") == "0" and reset:
                wait = max(0.0, float(reset) - time.time()) + RESET_MARGIN
            raise SecondaryLimit(f"secondary rate limit ({response.status_code})", wait)
        if kind == "primary":
            resource = response.headers.get("x-ratelimit-resource", "core")
            bucket = self._buckets.get(resource)
            if bucket is not None and bucket.reset - time.time() > self.policy.max_wait:
                raise self._too_long(resource, bucket)
            raise PrimaryLimit(f"the {resource} rate limit is spent")

    def _graphql_limits(self, response: httpx.Response, body: Any) -> None:
        """GraphQL says "rate limited" in a 200's errors: turn that into the signals the retry loop
        waits on, as for REST. A spent bucket (`RATE_LIMITED`, or `RATE_LIMIT` in newer answers)
        waits for its reset; the secondary limit's message waits as GitHub asks."""
        errors = body.get("errors") if isinstance(body, dict) else None
        if not errors or not isinstance(errors, list):
            return
        for error in errors:
            if not isinstance(error, dict):
                continue
            text = str(error.get("message", "")).lower()
            if any(w in text for w in _SECONDARY_WORDS):
                retry_after = response.headers.get("retry-after", "")
                wait = float(retry_after) if retry_after.isascii() and retry_after.isdigit() else None
                self.stats.add(secondary_limits=1)
                raise SecondaryLimit("secondary rate limit (GraphQL)", wait)
            if error.get("type") in ("RATE_LIMITED", "RATE_LIMIT"):
                raise PrimaryLimit("the graphql rate limit is spent")

    def _account(self, response: httpx.Response) -> None:
        """GitHub charges a point per request, except 304s and requests it refused for rate limits."""
        self.stats.add(requests=1)
        headers = response.headers
        status = response.status_code
        if status == 304:
            self.stats.add(not_modified=1)
        resource = headers.get("x-ratelimit-resource")
        remaining = headers.get("x-ratelimit-remaining")
        if resource is None or remaining is None:
            return
        self.stats.remaining[resource] = int(remaining)
        self._buckets[resource] = Bucket(
            int(headers.get("x-ratelimit-limit", 0)), int(remaining), float(headers.get("x-ratelimit-reset", 0))
        )
        free = status in (304, 401) or limit_kind(response) or response.request.url.path.endswith("/rate_limit")
        if not free and resource != "graphql":  # a query's cost is its own (`rateLimit { cost }`)
            self.stats.add(rate_limit_points=1)

    # ----- rate-limit waits ------------------------------------------------------------------

    def _gate(self, resource: str) -> None:
        """Before spending from a bucket: wait for its reset when it is empty, or stop the run."""
        bucket = self._bucket(resource)
        if bucket is None:
            return
        reserve = min(self.policy.reserve, bucket.limit // 10) if resource == "core" else 0
        with _accounting:
            if bucket.remaining > reserve:
                # Spent on the way out, so that requests in flight side by side do not all take
                # the last point; the answer's headers then say how many are really left.
                bucket.remaining -= 1
                return
        wait = bucket.reset - time.time() + RESET_MARGIN
        if wait > 0:
            if wait - RESET_MARGIN > self.policy.max_wait:
                raise self._too_long(resource, bucket)
            self.stats.add(rate_limit_waits=1)
            kept = f", keeping {reserve} for interactive use" if reserve else ""
            refill = retry_moment(bucket.reset)
            self._countdown(wait, f"GitHub's {resource} rate limit is spent{kept}; it refills at {refill}")
        self._forget(resource, bucket)

    # ----- buckets of several tokens (auth.TokenPool) ----------------------------------------

    def _bucket(self, resource: str) -> Bucket | None:
        """The bucket the next request spends from: the pool's choice among its tokens, else the
        one the last answer reported."""
        if isinstance(self.auth, TokenPool):
            return self.auth.bucket(resource, self.policy.reserve)
        return self._buckets.get(resource)

    def _forget(self, resource: str, bucket: Bucket) -> None:
        """Its reset has passed: the next answer says how full it is."""
        if isinstance(self.auth, TokenPool):
            self.auth.forget(resource, bucket)
        self._buckets.pop(resource, None)

    def _too_long(self, resource: str, bucket: Bucket) -> RateLimited:
        spent = f"down to the {bucket.remaining} kept for interactive use" if bucket.remaining else "spent"
        return RateLimited(
            f"GitHub's {resource} rate limit for this token is {spent} until {retry_moment(bucket.reset)}, longer than "
            f"GHETL_RATE_LIMIT_MAX_WAIT={self.policy.max_wait:g} s allows to wait; run the sync again after that",
            bucket.reset,
        )

    def _countdown(self, seconds: float, why: str) -> None:
        log.warning("%s: waiting %s", why, duration(seconds))
        left = seconds
        while left > 0:
            self._sleep(min(left, COUNTDOWN_STEP))
            left -= COUNTDOWN_STEP
            if left > 0:
                log.info("still waiting for GitHub's rate limit: %s left", duration(left))

    def _sleep(self, seconds: float) -> None:
        self.stats.add(waited_seconds=seconds)
        time.sleep(seconds)

    def _backoff(self, state: tenacity.RetryCallState) -> float:
        failure = state.outcome.exception() if state.outcome else None
        if isinstance(failure, PrimaryLimit):
            return 0.0
        if isinstance(failure, SecondaryLimit):
            wait = failure.wait
            if wait is None:
                wait = self.policy.secondary_wait * 2.0 ** (state.attempt_number - 1)
            self.pacer.hold(wait)
            return wait
        return self._jittered(state)

    def _jittered(self, state: tenacity.RetryCallState) -> float:
        """Exponential backoff plus random jitter, so that clients that failed together do not retry together."""
        policy = self.policy
        wait = tenacity.wait_exponential_jitter(
            multiplier=policy.backoff, max=policy.backoff_max, jitter=policy.backoff
        )
        return wait(state)

    def _log_retry(self, state: tenacity.RetryCallState) -> None:
        self.stats.add(retries=1)
        failure = state.outcome.exception() if state.outcome else None
        if isinstance(failure, PrimaryLimit):
            return
        pause = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "%s for %s; trying again in %s (attempt %d of %d)",
            describe(failure), short(state.args[0]), duration(pause),
            state.attempt_number + 1, self.policy.retries + 1,
        )


def limit_kind(response: httpx.Response) -> str | None:
    """'secondary' or 'primary' for a 403/429 that is a rate limit, told apart as GitHub documents:
    `retry-after` or the wording means secondary, an empty bucket means primary."""
    if response.status_code not in (403, 429):
        return None
    if "retry-after" in response.headers or any(w in message(response).lower() for w in _SECONDARY_WORDS):
        return "secondary"
    return "primary" if response.headers.get("x-ratelimit-remaining") == "0" else None


def _resource(path: str) -> str:
    """The rate-limit bucket a request spends from, as GitHub names it in `x-ratelimit-resource`."""
    if path.endswith("/graphql"):
        return "graphql"
    return "search" if "/search/" in path else "core"


def _last_result(state: tenacity.RetryCallState) -> Any:
    """What the last attempt returned: tenacity calls this once the attempts ran out, so there was one."""
    assert state.outcome is not None
    return state.outcome.result()


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s"
