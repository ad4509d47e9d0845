"""The GraphQL client against the sandbox's GraphQL endpoint: cost and buckets, limits, errors."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import pytest

from ghetl.github import GitHubClient, Policy, QueryRejected, QueryTimedOut, RateLimited, TokenRejected
from ghetl.github.graphql import RATE_LIMIT_FIELDS, graphql_url
from ghetl.sandbox import Sandbox

from .conftest import TOKEN

FAST = Policy(timeout=10, retries=3, backoff=0.01, backoff_max=0.05, secondary_wait=0.1, max_wait=5)

PULLS = """
query Pulls($owner: String!, $name: String!, $first: Int!) {
  repository(owner: $owner, name: $name) {
    pullRequests(first: $first, orderBy: {field: UPDATED_AT, direction: DESC}) {
      totalCount
      nodes { number updatedAt commits(first: 1) { totalCount } }
    }
  }
  %s
}
""" % RATE_LIMIT_FIELDS

TWO_REPOSITORIES = """
query Two($owner: String!, $known: String!, $gone: String!) {
  known: repository(owner: $owner, name: $known) { name }
  gone: repository(owner: $owner, name: $gone) { name }
  %s
}
""" % RATE_LIMIT_FIELDS


@pytest.fixture(scope="module")
def sb() -> Any:
    with Sandbox(orgs={"acme": 40}, seed=11) as sandbox:
        yield sandbox


@pytest.fixture
def fresh() -> Any:
    with Sandbox(orgs={"acme": 5}, seed=11) as sandbox:
        yield sandbox


def busiest(sandbox: Sandbox) -> dict[str, Any]:
    return max(sandbox.repos("acme"), key=lambda r: sandbox.pull_request_counts(r["id"])["pull_requests"])


def test_a_query_costs_its_points_in_the_graphql_bucket_not_rest(sb: Sandbox) -> None:
    repo = busiest(sb)
    truth = sb.pull_requests(repo["id"])
    with GitHubClient(sb.url, TOKEN, policy=FAST) as client:
        first = client.graphql(PULLS, {"owner": "acme", "name": repo["name"], "first": 100})
        second = client.graphql(PULLS, {"owner": "acme", "name": repo["name"], "first": 100})

    connection = first.data["repository"]["pullRequests"]
    assert connection["totalCount"] == len(truth) > 0
    newest = sorted(truth, key=lambda p: p["gh_updated_at"], reverse=True)[:100]
    assert [p["number"] for p in connection["nodes"]][: len(newest)] != [] and {
        p["number"] for p in connection["nodes"]} == {p["number"] for p in newest}
    assert first.cost >= 1 and first.remaining is not None and second.remaining == first.remaining - second.cost
    assert client.stats.graphql_points == first.cost + second.cost
    assert client.stats.graphql_requests == 2 and client.stats.rate_limit_points == 0
    assert set(client.stats.remaining) == {"graphql"}, "the REST buckets are not touched"


def test_the_graphql_url_of_github_and_of_enterprise_server() -> None:
    assert graphql_url("https://api.github.com") == "https://api.github.com/graphql"
    assert graphql_url("https://ghe.example.com/api/v3/") == "https://ghe.example.com/api/graphql"
    with Sandbox(orgs={"acme": 3}, seed=11, path_prefix="/api/v3") as ghes, \
            GitHubClient(ghes.url, TOKEN, policy=FAST) as client:
        result = client.graphql("query { viewer { login } %s }" % RATE_LIMIT_FIELDS)
    assert result.data["viewer"]["login"] and [r.path for r in ghes.requests] == ["/api/graphql"]


def test_a_repository_deleted_meanwhile_is_an_error_beside_the_data(sb: Sandbox) -> None:
    known = sb.repos("acme")[0]["name"]
    with GitHubClient(sb.url, TOKEN, policy=FAST) as client:
        result = client.graphql(TWO_REPOSITORIES, {"owner": "acme", "known": known, "gone": "no-such-repository"})
    assert result.data["known"] == {"name": known} and result.data["gone"] is None
    error = result.error_at("gone")
    assert error is not None and error["type"] == "NOT_FOUND" and result.error_at("known") is None


@pytest.mark.parametrize("fault", [{"kind": "status", "status": 502}, {"kind": "status", "status": 504},
                                   {"kind": "timedout"}])
def test_a_query_github_gave_up_on_is_not_retried_as_it_is(fresh: Sandbox, fault: dict[str, Any]) -> None:
    options = {k: v for k, v in fault.items() if k != "kind"}
    fresh.inject(fault["kind"], path="graphql", **options)
    with GitHubClient(fresh.url, TOKEN, policy=FAST) as client, pytest.raises(QueryTimedOut):
        client.graphql("query { viewer { login } }")
    assert len(fresh.requests) == 1, "the caller asks for smaller pages instead"


@pytest.mark.parametrize(("document", "kind"), [
    ("query { viewer { loginx } }", "undefinedField"),
    ("query($name: String!) { repository(owner: \"acme\", name: $name) { pullRequests(first: 101) { totalCount } } }",
     "EXCESSIVE_PAGINATION"),
    ("query($name: String!) { repository(owner: \"acme\", name: $name) { pullRequests { nodes { number } } } }",
     "MISSING_PAGINATION_BOUNDARIES"),
])
def test_a_query_github_rejects_is_a_bug_said_once_and_never_retried(fresh: Sandbox, document: str, kind: str) -> None:
    variables = {"name": fresh.repos("acme")[0]["name"]} if "$name" in document else {}
    with GitHubClient(fresh.url, TOKEN, policy=FAST) as client, pytest.raises(QueryRejected, match=kind):
        client.graphql(document, variables)
    assert len(fresh.requests) == 1


def test_a_spent_graphql_bucket_waits_for_its_reset(fresh: Sandbox) -> None:
    fresh.set_rate_limit("graphql", remaining=0, reset_in=1)
    started = time.monotonic()
    with GitHubClient(fresh.url, TOKEN, policy=FAST) as client:
        result = client.graphql("query { viewer { login } %s }" % RATE_LIMIT_FIELDS)
    assert result.data["viewer"]["login"] and client.stats.rate_limit_waits == 1
    assert time.monotonic() - started >= 0.9


def test_a_graphql_bucket_spent_for_too_long_ends_with_when_to_retry(fresh: Sandbox) -> None:
    fresh.set_rate_limit("graphql", remaining=0, reset_in=3600)
    with GitHubClient(fresh.url, TOKEN, policy=FAST) as client, \
            pytest.raises(RateLimited, match="graphql rate limit for this token is spent until"):
        client.graphql("query { viewer { login } }")
    assert len(fresh.requests) == 1


@pytest.mark.parametrize("status", [200, 403])
def test_the_secondary_limit_over_graphql_waits_as_github_asks(fresh: Sandbox, status: int) -> None:
    fresh.inject("secondary", path="graphql", status=status, retry_after=1)
    with GitHubClient(fresh.url, TOKEN, policy=replace(FAST, max_wait=5)) as client:
        result = client.graphql("query { viewer { login } }")
    assert result.data["viewer"]["login"]
    assert client.stats.secondary_limits == 1 and client.stats.waited_seconds >= 1


def test_graphql_without_a_token_is_refused_like_github(fresh: Sandbox) -> None:
    with GitHubClient(fresh.url, None, policy=FAST) as client, pytest.raises(TokenRejected):
        client.graphql("query { viewer { login } }")
