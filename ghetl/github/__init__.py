"""GitHub's APIs as ghetl reads them, one module per concern:

- `transport`: one request, with GitHub's rate limits, retries and accounting (`Policy`, `Stats`);
- `auth`: credentials as `httpx.Auth`, attached only for the API's own origin;
- `client`: the REST endpoints (listing pages, owners, repositories, search) on the transport;
- `search`: splitting a search past GitHub's cap of 1 000 results;
- `graphql`: queries over GraphQL on the same transport, their cost and their errors;
- `errors`: what a caller may catch, and how failures are described.
"""

from .client import GitHubClient, Page
from .errors import (
    GitHubError,
    GitHubUnavailable,
    GitHubUnreachable,
    QueryRejected,
    QueryTimedOut,
    RateLimited,
    TokenRejected,
)
from .graphql import Result
from .transport import Policy, Stats

__all__ = [
    "GitHubClient", "GitHubError", "GitHubUnavailable", "GitHubUnreachable", "Page", "Policy", "QueryRejected",
    "QueryTimedOut", "RateLimited", "Result", "Stats", "TokenRejected",
]
