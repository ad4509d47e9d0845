"""GitHub's GraphQL API, on the transport that REST uses (same token, retries, pacing and limits).

A query is a constant document with variables, never text built from data. Each one asks for
`rateLimit { cost remaining resetAt }`: GitHub charges a query by its connections, not by
the request, so the cost it reports is what `Stats.graphql_points` adds up, in the `graphql`
bucket (5 000 points an hour, apart from REST's). How an answer is judged:

- a spent bucket (`RATE_LIMITED`, HTTP 200 or 403) and the secondary limit wait or end the run
  in the transport, exactly as for REST;
- 502/504 (`"data": "null"`) and 200 `timedout` raise `QueryTimedOut`: ask for smaller pages;
- validation errors (an unknown field, `MISSING_PAGINATION_BOUNDARIES`, `EXCESSIVE_PAGINATION`,
  `MAX_NODE_LIMIT_EXCEEDED`) raise `QueryRejected`: the query is wrong, retrying cannot help;
- any other error (`NOT_FOUND` for a repository deleted meanwhile, `FORBIDDEN` for one the token
  may not read) comes back in `Result.errors` beside the data GitHub did return, for the caller
  to record on the item it concerns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

from .errors import GitHubError, QueryRejected, QueryTimedOut
from .transport import Transport

REJECTED_TYPES = ("MISSING_PAGINATION_BOUNDARIES", "EXCESSIVE_PAGINATION", "MAX_NODE_LIMIT_EXCEEDED")
RATE_LIMIT_FIELDS = "rateLimit { cost remaining resetAt nodeCount }"


def graphql_url(api_url: str) -> str:
    """`https://api.github.com/graphql`, or GitHub Enterprise Server's `https://HOST/api/graphql`
    for an API root of `https://HOST/api/v3`."""
    root = api_url.rstrip("/")
    if root.endswith("/api/v3"):
        return root[: -len("/v3")] + "/graphql"
    return root + "/graphql"


@dataclass
class Result:
    """One query's answer: its data, the errors that concern parts of it, and what it cost."""

    data: dict[str, Any]
    errors: list[dict[str, Any]] = field(default_factory=list)
    cost: int = 0
    remaining: int | None = None
    nodes: int = 0

    def error_at(self, *path: str | int) -> dict[str, Any] | None:
        """The error GitHub reported for this path of the answer (e.g. an alias), if any."""
        return next((e for e in self.errors if tuple(e.get("path") or ())[: len(path)] == path), None)


def query(transport: Transport, document: str, variables: dict[str, Any] | None = None) -> Result:
    """Run one query; raise for answers no caller can use, return the rest (see the module's text)."""
    url = graphql_url(transport.api_url)
    response, body = transport.post(url, {"query": document, "variables": variables or {}})
    transport.stats.add(graphql_requests=1)
    if not isinstance(body, dict):
        raise GitHubError(f"GitHub answered {response.status_code} to a GraphQL query with no JSON object")
    errors = [e for e in body.get("errors") or [] if isinstance(e, dict)]
    _refuse(response, errors, body.get("data"))
    data = body.get("data") or {}
    limit = data.get("rateLimit") or {}
    result = Result(data, errors, int(limit.get("cost") or 0), limit.get("remaining"), int(limit.get("nodeCount") or 0))
    transport.stats.add(graphql_points=result.cost)
    return result


def _refuse(response: httpx.Response, errors: list[dict[str, Any]], data: Any) -> None:
    """Raise for a query GitHub did not run: timed out, or rejected as written."""
    if any(str(e.get("message", "")).strip().lower() == "timedout" for e in errors):
        raise QueryTimedOut("GitHub timed out on a GraphQL query (timedout)")
    rejected = [e for e in errors if e.get("type") in REJECTED_TYPES or (data is None and "extensions" in e)]
    if rejected:
        first = rejected[0]
        raise QueryRejected(f"GitHub rejected a GraphQL query of ghetl ({first.get('type') or _code(first)}: "
                            f"{first.get('message')}); this is a bug in ghetl, please report it")
    if data is None and errors:
        raise GitHubError(f"GitHub answered a GraphQL query with errors only: {errors[0].get('message')}")
    if response.status_code != 200:
        raise GitHubError(f"GitHub answered {response.status_code} to a GraphQL query")


def _code(error: dict[str, Any]) -> str:
    extensions = error.get("extensions")
    return str(extensions.get("code")) if isinstance(extensions, dict) else "invalid"
