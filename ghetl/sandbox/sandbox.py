"""The Sandbox: a local, faithful GitHub REST and GraphQL API with generated data and fault injection.

No machine here reaches github.com, so the demo, notebooks, tests and benchmarks talk to this
instead.  It is driven from Python (``Sandbox(...).start()``) or over HTTP (``/_sandbox/...``,
see ``control.py``) when it runs as its own process (``python -m ghetl.sandbox``).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from .apps import Apps
from .cli import DEFAULT_PORT
from .faults import Faults
from .limits import RESOURCES, RateLimits, SecondaryLimit
from .pulls import PullStore, ground_truth
from .records import RequestRecord
from .server import SandboxHTTPServer
from .shapes import site_for
from .state import Store

log = logging.getLogger("ghetl.sandbox")

DEFAULT_ORGS = {"acme": 120}


class Sandbox:
    """A GitHub API sandbox serving generated organizations and users.

    ``tokens``: when given, only these tokens authenticate and others get 401 Bad credentials;
    when None, any token is accepted.  Every token acts as the same user (the first of ``users``,
    or ``sandbox-admin``), who administers every organization, but gets its own rate-limit
    buckets.  ``secondary_limit=(requests, seconds)`` turns on a per-token secondary limit on
    REST requests (GitHub: 900 points a minute), ``graphql_secondary_limit`` one on GraphQL
    queries (GitHub: 2 000 a minute; the REST one when not given), and ``max_concurrent`` one on
    requests in flight (GitHub: 100). Each refusal is a 403 with ``retry-after``.
    ``path_prefix="/api/v3"`` serves everything below that prefix, like GitHub Enterprise Server.
    Until ``start`` binds a port, rendered URLs use http://127.0.0.1:8766 (the CLI default).
    As on GitHub, unauthenticated callers only see public repositories and GET /users/{user}/repos
    lists public repositories only; a user's private ones come from GET /user/repos with a token.
    POST /graphql (``graphql.py``) serves the repositories and their generated pull requests
    (``pulls.py``) and needs a token; ``graphql_limit`` is its bucket in points per hour.
    """

    def __init__(self, orgs: dict[str, int] | None = None, users: dict[str, int] | None = None,
                 seed: int = 7, tokens: Iterable[str] | None = None, core_limit: int = 5000,
                 search_limit: int = 30, reset_seconds: int = 3600,
                 secondary_limit: tuple[int, float] | None = None, path_prefix: str = "",
                 graphql_limit: int = 5000, latency_ms: float = 0.0, jitter_ms: float = 0.0,
                 installation_token_seconds: float = 3600.0,
                 graphql_secondary_limit: tuple[int, float] | None = None,
                 max_concurrent: int | None = None) -> None:
        if latency_ms < 0 or jitter_ms < 0 or jitter_ms > latency_ms:
            raise ValueError("latency and jitter are 0 or more milliseconds, the jitter at most the latency")
        self.latency = Latency(latency_ms / 1000, jitter_ms / 1000)
        self.prefix = "/" + path_prefix.strip("/") if path_prefix.strip("/") else ""
        self.tokens = None if tokens is None else frozenset(tokens)
        self.limits = RateLimits(core_limit, search_limit, reset_seconds, graphql_limit=graphql_limit)
        self.secondary = None if secondary_limit is None else SecondaryLimit(*secondary_limit)
        graphql_secondary_limit = graphql_secondary_limit or secondary_limit
        self.graphql_secondary = None if graphql_secondary_limit is None else SecondaryLimit(*graphql_secondary_limit)
        if max_concurrent is not None and max_concurrent < 1:
            raise ValueError("the concurrency limit is 1 or more requests")
        self.max_concurrent = max_concurrent
        self.faults = Faults()
        self.apps = Apps(installation_token_seconds)
        self.host = "127.0.0.1"
        self.port = DEFAULT_PORT
        self.store = Store(DEFAULT_ORGS if orgs is None else dict(orgs), dict(users or {}), seed,
                           site_for(self._url(), self.prefix))
        self.pull_store = PullStore(self.store)
        self.token_expiration = (datetime.now(UTC) + timedelta(days=30)).strftime(
            "%Y-%m-%d %H:%M:%S UTC")
        self.in_flight = InFlight()
        self._requests: list[RequestRecord] = []
        self._requests_lock = threading.Lock()
        self._server: SandboxHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ----- lifecycle ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The API root, playing the role of https://api.github.com (or https://HOST/api/v3)."""
        return self._url()

    def _url(self) -> str:
        return f"http://{self.host}:{self.port}{self.prefix}"

    def start(self, host: str = "127.0.0.1", port: int = 0) -> Sandbox:
        """Serve in a background thread; port 0 picks a free port."""
        if self._server is not None:
            raise RuntimeError("the sandbox is already running")
        self._server = SandboxHTTPServer((host, port), self)
        self.host, self.port = host, self._server.server_address[1]
        self.store.set_site(site_for(self.url, self.prefix))
        # A short poll interval makes stop() return quickly, which keeps test teardown fast.
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="github-sandbox", daemon=True)
        self._thread.start()
        log.info("GitHub sandbox listening at %s", self.url)
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.close_connections()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> Sandbox:
        return self.start() if self._server is None else self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ----- data --------------------------------------------------------------------------

    def repos(self, owner: str) -> list[dict[str, Any]]:
        """Current full-repository dicts of ``owner`` (deleted and transferred-away ones excluded)."""
        with self.store.lock:
            return [self.store.full(r, "admin") for r in self.store.repos_of(owner)]

    def repo(self, id_or_full_name: int | str) -> dict[str, Any]:
        with self.store.lock:
            return self.store.full(self.store.resolve(id_or_full_name), "admin")

    def themes_of(self, id_or_full_name: int | str) -> list[str]:
        """The theme(s) a generated repository's name and description were built from."""
        return list(self.store.resolve(id_or_full_name).themes)

    # ----- pull requests (served over GraphQL) --------------------------------------------

    def pull_requests(self, id_or_full_name: int | str) -> list[dict[str, Any]]:
        """Ground truth: every pull request of the repository in number order, with its commits,
        reviews and comments (issue and review comments), keyed like the Phase 4 table columns."""
        repo = self.store.resolve(id_or_full_name)
        pulls = self.pull_store.of(repo)
        with self.store.lock:
            web = f"{self.store.site.web}/{repo.full_name}/pull"
            return [ground_truth(p, f"{web}/{p.number}", self.pull_store.commit_cap) for p in pulls]

    def pull_request(self, id_or_full_name: int | str, number: int) -> dict[str, Any]:
        """Ground truth of one pull request (the shape of an item of ``pull_requests``)."""
        repo = self.store.resolve(id_or_full_name)
        pull = self.pull_store.get(repo, number)
        with self.store.lock:
            return ground_truth(pull, f"{self.store.site.web}/{repo.full_name}/pull/{number}",
                                self.pull_store.commit_cap)

    def pull_request_counts(self, id_or_full_name: int | str) -> dict[str, int]:
        """Totals for one repository: pull_requests, commits, reviews, comments, review_comments."""
        pulls = self.pull_store.of(self.store.resolve(id_or_full_name))
        with self.store.lock:
            return {"pull_requests": len(pulls), "commits": sum(len(p.commits) for p in pulls),
                    "reviews": sum(len(p.reviews) for p in pulls), "comments": sum(len(p.comments) for p in pulls),
                    "review_comments": sum(len(p.review_comments) for p in pulls)}

    def touch_pull_request(self, id_or_full_name: int | str, number: int, **changes: Any) -> dict[str, Any]:
        """Set updatedAt to now and apply changes (title, body, is_draft, state=OPEN|CLOSED|MERGED)."""
        self.pull_store.touch(self.store.resolve(id_or_full_name), number, **changes)
        return self.pull_request(id_or_full_name, number)

    def set_pull_commits_cap(self, cap: int | None) -> None:
        """List at most ``cap`` commits per pull request in PullRequest.commits (None: all)."""
        with self.store.lock:
            self.pull_store.commit_cap = cap

    def add_pull_request(self, id_or_full_name: int | str, title: str, author: str | None = None, body: str = "",
                         commits: int = 1) -> dict[str, Any]:
        """A new OPEN pull request with the next number; ``author`` is a login of the owner's people."""
        pull = self.pull_store.add(self.store.resolve(id_or_full_name), title, author, body, commits)
        return self.pull_request(id_or_full_name, pull.number)

    def comment_pull_request(self, id_or_full_name: int | str, number: int, body: str,
                             author: str | None = None) -> dict[str, Any]:
        """Add an issue comment (PullRequest.comments)."""
        self.pull_store.comment(self.store.resolve(id_or_full_name), number, body, author)
        return self.pull_request(id_or_full_name, number)

    def review_pull_request(self, id_or_full_name: int | str, number: int, state: str = "APPROVED", body: str = "",
                            author: str | None = None) -> dict[str, Any]:
        """Add a review; state PENDING leaves submittedAt null."""
        self.pull_store.review(self.store.resolve(id_or_full_name), number, state, body, author)
        return self.pull_request(id_or_full_name, number)

    def force_push_pull_request(self, id_or_full_name: int | str, number: int, commits: int = 1) -> dict[str, Any]:
        """Replace the pull request's commits with ``commits`` new ones."""
        self.pull_store.force_push(self.store.resolve(id_or_full_name), number, commits)
        return self.pull_request(id_or_full_name, number)

    def delete_pull_request_comment(self, id_or_full_name: int | str, number: int,
                                    external_id: str) -> dict[str, Any]:
        """Delete an issue or review comment by its node id, as when someone deletes it on GitHub."""
        self.pull_store.delete_comment(self.store.resolve(id_or_full_name), number, external_id)
        return self.pull_request(id_or_full_name, number)

    # ----- mutations ---------------------------------------------------------------------

    def create(self, owner: str, name: str, **fields: Any) -> dict[str, Any]:
        repo = self.store.create(owner, name, **fields)
        log.info("created repository %s", repo.full_name)
        return self.repo(repo.id)

    def touch(self, id_or_full_name: int | str, **changes: Any) -> dict[str, Any]:
        """Set updated_at and pushed_at to now and apply field changes (e.g. description=...)."""
        repo = self.store.touch(id_or_full_name, **changes)
        log.info("touched repository %s", repo.full_name)
        return self.repo(repo.id)

    def rename(self, id_or_full_name: int | str, new_name: str) -> dict[str, Any]:
        """The old full name then answers 301 to /repositories/{id}."""
        repo = self.store.rename(id_or_full_name, new_name)
        log.info("renamed repository %s to %s", id_or_full_name, repo.full_name)
        return self.repo(repo.id)

    def transfer(self, id_or_full_name: int | str, new_owner: str) -> dict[str, Any]:
        """The repository leaves the old owner's listing; its old URL answers 301."""
        repo = self.store.transfer(id_or_full_name, new_owner)
        log.info("transferred repository %s to %s", id_or_full_name, repo.full_name)
        return self.repo(repo.id)

    def delete(self, id_or_full_name: int | str) -> None:
        """Afterwards the repository answers 404, by name and by id."""
        repo = self.store.delete(id_or_full_name)
        log.info("deleted repository %s", repo.full_name)

    # ----- GitHub Apps -------------------------------------------------------------------

    def add_app(self, app_id: int | str, public_key: str, installation_id: int, account: str | None = None) -> None:
        """Register a GitHub App by its public key (PEM) and one installation of it on ``account``
        (default: the first organization); its installation tokens last ``installation_token_seconds``."""
        owners = [o.login for o in self.store.owners() if o.kind == "Organization"]
        self.apps.register(app_id, public_key, installation_id, account or (owners[0] if owners else "sandbox"))

    def revoke_installation_tokens(self) -> int:
        """Every installation token handed out so far stops working (401), as after a revocation."""
        return self.apps.revoke_all()

    def rate_limit_of(self, token: str, resource: str = "core") -> dict[str, int]:
        """A token's bucket as GitHub counts it (an installation token: its installation's)."""
        from .server import caller_key

        app = self.apps.caller(token)
        bucket = self.limits.peek(app[1] if app else caller_key(token, ""), resource, True)
        return {"limit": bucket.limit, "used": bucket.used, "remaining": bucket.remaining, "reset": bucket.reset}

    # ----- faults and limits -------------------------------------------------------------

    def inject(self, fault: str, *, path: str = ".*", times: int = 1, **options: Any) -> None:
        """Make the next ``times`` requests whose path+query matches ``path`` fail with ``fault``.

        status (status=502, body=..., headers={...}, e.g. a Location for a redirect), html (status=200
        or 5xx, HTML body labelled JSON), reset, delay (seconds=...), secondary (status=403|429,
        retry_after=N or none; on GraphQL also status=200), incomplete (search), mutate (action=callable
        taking the sandbox, run before the matching request).  status and html faults also accept
        seconds=... to answer late.  On POST /graphql a 502/504 status fault without a body answers
        GitHub's GraphQL timeout body; GraphQL only: timedout (200 {"errors":[{"message":"timedout"}]})
        and ratelimited (200 RATE_LIMITED, remaining 0).
        """
        self.faults.add(fault, path, times, **options)
        log.info("injected fault %s for %d request(s) matching %s", fault, times, path)

    def clear_faults(self) -> None:
        self.faults.clear()

    def set_rate_limit(self, resource: str = "core", limit: int | None = None, remaining: int | None = None,
                       reset_in: float | None = None) -> None:
        """Force every caller's ``resource`` bucket (and those created later) into this state."""
        if resource not in RESOURCES:
            raise ValueError("resource must be core, search or graphql")
        self.limits.set(resource, limit, remaining, reset_in)

    # ----- request log -------------------------------------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        with self._requests_lock:
            return list(self._requests)

    def record(self, entry: RequestRecord) -> None:
        with self._requests_lock:
            self._requests.append(entry)

    def reset_stats(self) -> None:
        with self._requests_lock:
            self._requests.clear()
        self.in_flight.reset()

    def describe(self) -> str:
        """One line naming what is served, e.g. 'acme (500 repos), octocat (12 repos)'."""
        return ", ".join(f"{o.login} ({len(self.store.repos_of(o.login))} repos)" for o in self.store.owners()
                         if o is not self.store.viewer or self.store.repos_of(o.login))


@dataclass(frozen=True)
class Latency:
    """How long GitHub takes to answer (0.3-1 s a request in practice): each API reply waits
    `seconds` plus or minus up to `jitter`, in its own thread, so that concurrent requests
    overlap as they do at GitHub. Zero by default, so that tests stay fast."""

    seconds: float = 0.0
    jitter: float = 0.0

    def wait(self) -> None:
        if self.seconds:
            time.sleep(max(0.0, self.seconds + random.uniform(-self.jitter, self.jitter)))


class InFlight:
    """API requests being answered now, and the most there ever were at once, in all and per caller."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0
        self._callers: Counter[str] = Counter()
        self.most_per_caller = 0
        self._lock = threading.Lock()

    @contextmanager
    def holding(self, caller: str) -> Iterator[int]:
        """Count one request of `caller` while it is answered; gives how many of its are in flight."""
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)
            self._callers[caller] += 1
            mine = self._callers[caller]
            self.most_per_caller = max(self.most_per_caller, mine)
        try:
            yield mine
        finally:
            with self._lock:
                self.now -= 1
                self._callers[caller] -= 1

    def reset(self) -> None:
        with self._lock:
            self.most = self.now
            self.most_per_caller = max(self._callers.values(), default=0)
