"""GitHub's APIs as ghetl reads them, one module per concern:

- `transport`: one request, with GitHub's rate limits, retries and accounting (`Policy`, `Stats`);
- `auth`: credentials as `httpx.Auth`, attached only for the API's own origin;
- `client`: the REST endpoints (listing pages, owners, repositories, search) on the transport;
- `search`: splitting a search past GitHub's cap of 1 000 results;
- `errors`: what a caller may catch, and how failures are described.
"""

from .client import MIN_PER_PAGE, PER_PAGE, GitHubClient, Page
from .errors import (
    GitHubError,
    GitHubUnavailable,
    GitHubUnreachable,
    RateLimited,
    TokenRejected,
)
from .search import SEARCH_CAP
from .transport import Policy, Stats, retry_moment

__all__ = [
    "MIN_PER_PAGE", "PER_PAGE", "SEARCH_CAP", "GitHubClient", "GitHubError", "GitHubUnavailable", "GitHubUnreachable",
    "Page", "Policy", "RateLimited", "Stats", "TokenRejected", "retry_moment",
]
