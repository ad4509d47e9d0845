"""What GitHub's answers mean to ghetl: the errors a caller sees, the signals the retry loop
acts on, and the words used to describe a failure in a log line or an error message."""

from __future__ import annotations

import httpx
import orjson


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


class QueryTimedOut(GitHubUnavailable):
    """GitHub gave up on a GraphQL query (502/504 with `"data": "null"`, or 200 `timedout`): the
    same query would most likely time out again, so it is not retried as it is; the caller asks
    for smaller pages."""


class QueryRejected(GitHubError):
    """GitHub refused a GraphQL query as written (a field it lacks, a page over 100, too many
    nodes): a bug in ghetl's query, so it is never retried."""


class GitHubUnreachable(GitHubError):
    """No connection could be made to the API URL after every retry (refused, unknown host, TLS
    handshake failed, connect timeout): the URL is wrong or the network is down, so a smaller
    page or the next repository would fare no better, and the run stops."""


class Transient(Exception):
    """One attempt failed in a way that a later attempt may not (internal to the retry loop)."""


class SecondaryLimit(Exception):
    """GitHub asked to slow down; `wait` is how long, when it said (internal to the retry loop)."""

    def __init__(self, message: str, wait: float | None) -> None:
        super().__init__(message)
        self.wait = wait


class PrimaryLimit(Exception):
    """The bucket ran dry under us; the gate before the next attempt waits for its reset."""



def describe(failure: BaseException | None) -> str:
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


def message(response: httpx.Response) -> str:
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return response.text[:200].replace("\n", " ")
    return str(body.get("message", ""))[:200] if isinstance(body, dict) else ""


def short(url: str) -> str:
    """A URL for messages: path and query only (never credentials, and short)."""
    parsed = httpx.URL(url)
    query = parsed.query.decode()
    return parsed.path + (f"?{query}" if query else "")
