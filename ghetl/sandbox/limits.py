"""Primary and secondary rate limits, one set of buckets per caller.

GitHub keeps a ``core``, a ``search`` and a ``graphql`` bucket (points, not requests) per account
(or per IP when unauthenticated); the sandbox keeps them per token so that tests can give each
client its own budget.  A bucket's window starts with its first request and refills completely
when ``reset`` passes, which is what the ``x-ratelimit-reset`` epoch on real responses describes.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, replace

UNAUTHENTICATED_LIMITS = {"core": 60, "search": 10, "graphql": 0}
RESOURCES = ("core", "search", "graphql")
SEARCH_WINDOW_SECONDS = 60


@dataclass
class Bucket:
    """One rate-limit bucket as the ``x-ratelimit-*`` headers report it."""

    resource: str
    limit: int
    used: int
    reset: int

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)


@dataclass
class _Override:
    limit: int | None
    remaining: int | None
    reset: int | None


class RateLimits:
    """Thread-safe buckets keyed by (caller, resource)."""

    def __init__(self, core_limit: int, search_limit: int, reset_seconds: int,
                 clock=time.time, graphql_limit: int = 5000) -> None:
        self._authenticated = {"core": core_limit, "search": search_limit, "graphql": graphql_limit}
        self._reset_seconds = reset_seconds
        self._clock = clock
        self._buckets: dict[tuple[str, str], Bucket] = {}
        self._overrides: dict[str, _Override] = {}
        self._lock = threading.Lock()

    def window(self, resource: str) -> int:
        """Search refills every minute on GitHub; a shorter configured window wins so tests stay fast."""
        if resource == "search":
            return min(SEARCH_WINDOW_SECONDS, self._reset_seconds)
        return self._reset_seconds

    def peek(self, caller: str, resource: str, authenticated: bool) -> Bucket:
        """The bucket's current state, without spending anything."""
        with self._lock:
            return replace(self._bucket(caller, resource, authenticated))

    def try_charge(self, caller: str, resource: str, authenticated: bool, points: int = 1) -> tuple[bool, Bucket]:
        """Spend ``points`` (one request, or a GraphQL query's cost) if that many are left.

        Returns whether they were spent and the state after.
        """
        with self._lock:
            bucket = self._bucket(caller, resource, authenticated)
            if bucket.remaining < points or bucket.remaining <= 0:
                return False, replace(bucket)
            bucket.used += points
            return True, replace(bucket)

    def refund(self, caller: str, resource: str, authenticated: bool) -> Bucket:
        """Give one request back: an authenticated 304 does not count (ConditionalRequestUpdate recordings)."""
        with self._lock:
            bucket = self._bucket(caller, resource, authenticated)
            bucket.used = max(0, bucket.used - 1)
            return replace(bucket)

    def set(self, resource: str, limit: int | None = None, remaining: int | None = None,
            reset_in: float | None = None, caller: str | None = None) -> None:
        """Force a bucket state, for every caller (including later ones) unless ``caller`` is given."""
        reset = None if reset_in is None else math.ceil(self._clock() + reset_in)
        with self._lock:
            targets = [b for (who, res), b in self._buckets.items()
                       if res == resource and (caller is None or who == caller)]
            for bucket in targets:
                _apply(bucket, limit, remaining, reset)
            if caller is None:
                self._overrides[resource] = _Override(limit, remaining, reset)

    def snapshot(self, caller: str, authenticated: bool) -> dict[str, Bucket]:
        """All resources for GET /rate_limit."""
        with self._lock:
            return {res: replace(self._bucket(caller, res, authenticated)) for res in RESOURCES}

    def _bucket(self, caller: str, resource: str, authenticated: bool) -> Bucket:
        now = self._clock()
        bucket = self._buckets.get((caller, resource))
        if bucket is None:
            limits = self._authenticated if authenticated else UNAUTHENTICATED_LIMITS
            bucket = Bucket(resource, limits[resource], 0, math.ceil(now + self.window(resource)))
            override = self._overrides.get(resource)
            if override is not None:
                _apply(bucket, override.limit, override.remaining, override.reset)
            self._buckets[(caller, resource)] = bucket
        if now >= bucket.reset:
            bucket.used = 0
            bucket.reset = math.ceil(now + self.window(resource))
        return bucket


def _apply(bucket: Bucket, limit: int | None, remaining: int | None, reset: int | None) -> None:
    if limit is not None:
        bucket.limit = limit
    if remaining is not None:
        bucket.used = max(0, bucket.limit - remaining)
    if reset is not None:
        bucket.reset = reset


class SecondaryLimit:
    """At most ``requests`` per ``window`` seconds per caller; beyond that GitHub answers 403/429.

    Returns the seconds to wait, which the server sends as ``retry-after``.
    """

    def __init__(self, requests: int, window: float, clock=time.time) -> None:
        self._requests = requests
        self._window = window
        self._clock = clock
        self._seen: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def check(self, caller: str) -> int | None:
        now = self._clock()
        with self._lock:
            seen = self._seen.setdefault(caller, deque())
            while seen and now - seen[0] >= self._window:
                seen.popleft()
            if len(seen) >= self._requests:
                return max(1, math.ceil(self._window - (now - seen[0])))
            seen.append(now)
            return None
