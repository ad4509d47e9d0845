"""How fast one credential may go: GitHub's secondary rate limits, kept on the client's side.

GitHub documents, besides the hourly buckets, limits on how a token spends them: at most 100
requests in flight, at most 900 points a minute on REST endpoints and 2 000 on GraphQL (a GET
or a query is one point, a write five), and "secondary rate limit" refusals with a
`retry-after` when a client goes too fast anyway. A `Pacer` keeps every request of one
credential within them, whichever thread or client sends it: a client asks `slot()` before
each request. It is adaptive: a secondary limit holds every request of the credential for the
time GitHub asked and halves the concurrency, which then grows back by one for each full round
of answers that were not refused.

One pacer per API origin and credential per process (`pacer_for`), so that two clients of the
same token (a step and its follow-ups, two integrations sharing a token) share one budget.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ..config import env_float

log = logging.getLogger(__name__)

GITHUB_MAX_CONCURRENCY = 100
WINDOW_SECONDS = 60.0


@dataclass(frozen=True)
class Limits:
    """The pace of one credential; each has an environment variable.

    concurrency (GHETL_CONCURRENCY): requests in flight at most. 16 keeps a listing of 10 000
    repositories at 0.3-1 s a request under ten seconds, while staying far from GitHub's 100
    and from its per-minute budget. rest_per_minute, graphql_per_minute
    (GHETL_REST_POINTS_PER_MINUTE, GHETL_GRAPHQL_POINTS_PER_MINUTE): GitHub's per-minute points.
    """

    concurrency: int = 16
    rest_per_minute: int = 900
    graphql_per_minute: int = 2000

    @classmethod
    def from_env(cls) -> Limits:
        concurrency = int(env_float("GHETL_CONCURRENCY", cls.concurrency))
        if not 1 <= concurrency <= GITHUB_MAX_CONCURRENCY:
            raise ValueError(f"GHETL_CONCURRENCY={concurrency}: GitHub allows 1 to {GITHUB_MAX_CONCURRENCY} "
                             "requests in flight; set a number in that range")
        per_minute = {}
        for name, default in (("REST", cls.rest_per_minute), ("GRAPHQL", cls.graphql_per_minute)):
            per_minute[name] = int(env_float(f"GHETL_{name}_POINTS_PER_MINUTE", default))
            if per_minute[name] < 1:
                raise ValueError(f"GHETL_{name}_POINTS_PER_MINUTE={per_minute[name]}: set 1 or more points")
        return cls(concurrency, per_minute["REST"], per_minute["GRAPHQL"])

    def scaled(self, credentials: int) -> Limits:
        """The pace of a pool of `credentials` tokens, each of which GitHub limits on its own."""
        return Limits(min(GITHUB_MAX_CONCURRENCY, self.concurrency * credentials),
                      self.rest_per_minute * credentials, self.graphql_per_minute * credentials)


class Pacer:
    """Requests in flight and points spent in the last minute, for one credential."""

    def __init__(self, limits: Limits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self._ready = threading.Condition()
        self._in_flight = 0
        self._allowed = limits.concurrency
        self._answers = 0
        self._held_until = 0.0
        self._spent: dict[str, deque[float]] = {"rest": deque(), "graphql": deque()}
        self._sending = {"rest": 0, "graphql": 0}
        self.most_in_flight = 0

    @property
    def concurrency(self) -> int:
        """Requests allowed in flight now: the configured number, or less after a secondary limit."""
        return self._allowed

    @contextmanager
    def slot(self, api: str, points: int = 1) -> Iterator[None]:
        """Hold one of the credential's request slots for a request to `api` ("rest" or "graphql")."""
        self._acquire(api, points)
        try:
            yield
        finally:
            with self._ready:
                self._in_flight -= 1
                self._sending[api] -= points
                # Counted from the answer, not from the sending: GitHub saw the request at some
                # moment in between, so a minute from now is a minute from GitHub's count too.
                self._spent[api].extend([self._clock()] * points)
                self._ready.notify_all()

    def _acquire(self, api: str, points: int) -> None:
        with self._ready:
            while (wait := self._wait(api, points)) > 0:
                self._ready.wait(wait)
            self._in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self._in_flight)
            self._sending[api] += points

    def _wait(self, api: str, points: int) -> float:
        """Seconds until this request may go (0: now); called with the lock held."""
        now = self._clock()
        if now < self._held_until:
            return self._held_until - now
        if self._in_flight >= self.concurrency:
            return 1.0  # a finishing request notifies sooner
        spent = self._spent[api]
        while spent and now - spent[0] >= WINDOW_SECONDS:
            spent.popleft()
        budget = self.limits.rest_per_minute if api == "rest" else self.limits.graphql_per_minute
        if len(spent) + self._sending[api] + points <= budget:
            return 0.0
        return WINDOW_SECONDS - (now - spent[0]) if spent else 1.0

    def answered(self) -> None:
        """An answer that was not a secondary limit: concurrency grows back by one per full round."""
        with self._ready:
            if self._allowed >= self.limits.concurrency:
                return
            self._answers += 1
            if self._answers >= self._allowed:
                self._allowed, self._answers = self._allowed + 1, 0
                self._ready.notify_all()

    def hold(self, seconds: float) -> None:
        """GitHub refused a request with a secondary limit: no request of this credential goes
        before `seconds` have passed, and half as many go at once afterwards."""
        with self._ready:
            self._held_until = max(self._held_until, self._clock() + seconds)
            before = self.concurrency
            self._allowed, self._answers = max(1, self._allowed // 2), 0
            self._ready.notify_all()
        log.warning("GitHub's secondary rate limit: every request of this token waits %.1f s, then %d go at once "
                    "instead of %d", seconds, self.concurrency, before)


_pacers: dict[tuple[str, str, Limits], Pacer] = {}
_pacers_lock = threading.Lock()


def pacer_for(api_url: str, credential: str, credentials: int = 1) -> Pacer:
    """The process's pacer for a credential (a digest, never the token) at an API root.

    Limits are part of the key: a client made after GHETL_CONCURRENCY changed gets the new pace.
    """
    limits = Limits.from_env().scaled(credentials)
    with _pacers_lock:
        return _pacers.setdefault((api_url, credential, limits), Pacer(limits))
