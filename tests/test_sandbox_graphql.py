"""The sandbox's GraphQL endpoint: paging, nested paging through node(id:), GitHub's limits, cost,
errors, search, faults and mutations, each checked against the sandbox's ground truth."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from ghetl.sandbox import Sandbox
from ghetl.sandbox.nodeids import parse_cursor

TOKEN = {"Authorization": "bearer ghp_graphqlTestToken00000000000000000001"}

PULLS_PAGE = """
query($owner: String!, $name: String!, $after: String) {
  repository(owner: $owner, name: $name) {
    pullRequests(first: 100, after: $after, orderBy: {field: UPDATED_AT, direction: DESC}) {
      totalCount
      pageInfo { hasNextPage endCursor hasPreviousPage startCursor }
      nodes { id number updatedAt }
    }
  }
}"""
COMMITS_PAGE = """
query($id: ID!, $after: String) {
  node(id: $id) {
    __typename
    ... on PullRequest {
      commits(first: 100, after: $after) {
        totalCount
        pageInfo { hasNextPage endCursor }
        nodes { commit { oid } }
      }
    }
  }
}"""


def post(sb: Sandbox, query: str, variables: dict | None = None, headers: dict | None = None,
         path: str = "/graphql") -> httpx.Response:
    root = sb.url[: -len(sb.prefix)] if sb.prefix else sb.url
    return httpx.post(root + path, json={"query": query, "variables": variables or {}},
                      headers=TOKEN if headers is None else headers, timeout=30)


def data(sb: Sandbox, query: str, variables: dict | None = None) -> dict:
    reply = post(sb, query, variables)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert "errors" not in body, body
    return body["data"]


def pages(sandbox: Sandbox, query: str, variables: dict, pick, after: str | None = None) -> list[dict]:
    """Every page of the connection ``pick`` finds in the answer, following endCursor to the end."""
    found = []
    while True:
        page = pick(data(sandbox, query, {**variables, "after": after}))
        found.append(page)
        if not page["pageInfo"]["hasNextPage"]:
            return found
        after = page["pageInfo"]["endCursor"]


def ids(found: list[dict]) -> list[str]:
    return [n["id"] for page in found for n in page["nodes"]]


@pytest.fixture(scope="module")
def sb():
    with Sandbox(orgs={"acme": 500}, seed=11) as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def truth(sb):
    """Every acme repository's pull requests, by full name."""
    return {r.full_name: sb.pull_requests(r.id) for r in sb.store.repos_of("acme")}


@pytest.fixture()
def fresh():
    with Sandbox(orgs={"acme": 40}, seed=11) as sandbox:
        yield sandbox


def busiest(truth: dict) -> str:
    return max(truth, key=lambda name: len(truth[name]))


def some_repo(sandbox: Sandbox) -> str:
    return next(r.full_name for r in sandbox.store.repos_of("acme") if sandbox.pull_requests(r.id))


# ----- paging ---------------------------------------------------------------------------------

def test_paging_pull_requests_returns_the_ground_truth_in_updated_desc_order(sb, truth):
    name = busiest(truth)
    owner, repo = name.split("/")
    expected = [p["external_id"] for p in sorted(truth[name], key=lambda p: (p["gh_updated_at"], p["database_id"]),
                                                 reverse=True)]
    assert len(expected) > 100
    found = pages(sb, PULLS_PAGE, {"owner": owner, "name": repo}, lambda d: d["repository"]["pullRequests"])
    assert ids(found) == expected
    assert len(found) == -(-len(expected) // 100)
    assert {page["totalCount"] for page in found} == {len(expected)}
    assert [page["pageInfo"]["hasPreviousPage"] for page in found] == [False] + [True] * (len(found) - 1)


FULL_PULLS = """
query($owner: String!, $name: String!, $after: String) {
  repository(owner: $owner, name: $name) {
    pullRequests(first: 20, after: $after) {
      pageInfo { hasNextPage endCursor }
      nodes {
        id databaseId number title body url state isDraft author { login } mergedBy { login }
        baseRefName headRefName mergeCommit { oid } additions deletions changedFiles reviewDecision
        createdAt updatedAt closedAt mergedAt
        commits(first: 100) { totalCount nodes { commit { oid messageHeadline authoredDate committedDate
          additions deletions author { name email user { login } } committer { name } } } }
        reviews(first: 100) { totalCount nodes { id state author { login } body submittedAt commit { oid } } }
        comments(first: 100) { totalCount nodes { id author { login } body createdAt updatedAt } }
        reviewThreads(first: 100) { nodes { id isResolved comments(first: 100) { nodes {
          id path line body author { login } createdAt updatedAt replyTo { id } pullRequestReview { id } } } } }
      }
    }
  }
}"""


def moment(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text.replace("Z", "+00:00"))


def login(actor: dict | None) -> str | None:
    return None if actor is None else actor["login"]


def as_ground_truth(node: dict) -> dict:
    """A GraphQL pull request in the shape of Sandbox.pull_requests (the Phase 4 columns)."""
    commits = [n["commit"] for n in node["commits"]["nodes"]]
    reviews = node["reviews"]["nodes"]
    return {
        "external_id": node["id"], "database_id": node["databaseId"], "number": node["number"],
        "title": node["title"], "body": node["body"], "url": node["url"], "state": node["state"],
        "is_draft": node["isDraft"], "author_login": login(node["author"]), "merged_by_login": login(node["mergedBy"]),
        "base_ref": node["baseRefName"], "head_ref": node["headRefName"],
        "merge_commit_sha": node["mergeCommit"] and node["mergeCommit"]["oid"], "additions": node["additions"],
        "deletions": node["deletions"], "changed_files": node["changedFiles"],
        "commits_total": node["commits"]["totalCount"], "reviews_total": node["reviews"]["totalCount"],
        "comments_total": node["comments"]["totalCount"], "review_decision": node["reviewDecision"],
        "gh_created_at": moment(node["createdAt"]), "gh_updated_at": moment(node["updatedAt"]),
        "closed_at": moment(node["closedAt"]), "merged_at": moment(node["mergedAt"]),
        "first_commit_at": min((moment(c["authoredDate"]) for c in commits), default=None),
        "first_review_at": min((moment(r["submittedAt"]) for r in reviews if r["submittedAt"]
                                and login(r["author"]) != login(node["author"])), default=None),
        "first_approval_at": min((moment(r["submittedAt"]) for r in reviews
                                  if r["submittedAt"] and r["state"] == "APPROVED"), default=None),
        "commits": [{"sha": c["oid"], "message_headline": c["messageHeadline"], "author_name": c["author"]["name"],
                     "author_email": c["author"]["email"], "author_login": login(c["author"]["user"]),
                     "authored_at": moment(c["authoredDate"]), "committer_name": c["committer"]["name"],
                     "committed_at": moment(c["committedDate"]), "additions": c["additions"],
                     "deletions": c["deletions"]} for c in commits],
        "reviews": [{"external_id": r["id"], "state": r["state"], "author_login": login(r["author"]), "body": r["body"],
                     "submitted_at": moment(r["submittedAt"]), "commit_sha": r["commit"] and r["commit"]["oid"]}
                    for r in reviews],
        "comments": [{"external_id": c["id"], "kind": "issue", "author_login": login(c["author"]), "body": c["body"],
                      "gh_created_at": moment(c["createdAt"]), "gh_updated_at": moment(c["updatedAt"])}
                     for c in node["comments"]["nodes"]]
                    + [{"external_id": c["id"], "kind": "review", "author_login": login(c["author"]), "body": c["body"],
                        "gh_created_at": moment(c["createdAt"]), "gh_updated_at": moment(c["updatedAt"]),
                        "path": c["path"], "line": c["line"], "thread_external_id": t["id"],
                        "review_external_id": c["pullRequestReview"] and c["pullRequestReview"]["id"],
                        "reply_to_external_id": c["replyTo"] and c["replyTo"]["id"], "thread_resolved": t["isResolved"]}
                       for t in node["reviewThreads"]["nodes"] for c in t["comments"]["nodes"]],
    }


def test_graphql_serves_exactly_the_ground_truth(sb, truth):
    """Every Phase 4 column the ground truth holds, as a client reads it over GraphQL."""
    name, expected = next((n, ps) for n, ps in truth.items() if 30 <= len(ps) <= 60
                          and all(p["commits_total"] <= 100 and p["reviews_total"] <= 100
                                  and p["comments_total"] <= 100 for p in ps))
    assert {p["state"] for p in expected} == {"OPEN", "CLOSED", "MERGED"}
    assert any(c["kind"] == "review" and c["reply_to_external_id"] for p in expected for c in p["comments"])
    owner, repo = name.split("/")
    found = pages(sb, FULL_PULLS, {"owner": owner, "name": repo}, lambda d: d["repository"]["pullRequests"])
    served = [as_ground_truth(node) for page in found for node in page["nodes"]]
    assert served == expected


def test_default_order_is_number_ascending_and_states_filter(sb, truth):
    name = busiest(truth)
    owner, repo = name.split("/")
    query = """query($o: String!, $n: String!) { repository(owner: $o, name: $n) {
        all: pullRequests(first: 5) { nodes { number } }
        merged: pullRequests(states: [MERGED]) { totalCount } } }"""
    result = data(sb, query, {"o": owner, "n": repo})["repository"]
    assert [n["number"] for n in result["all"]["nodes"]] == [1, 2, 3, 4, 5]
    assert result["merged"]["totalCount"] == sum(1 for p in truth[name] if p["state"] == "MERGED")


def test_keyset_cursors_do_not_skip_when_a_pull_request_moves_between_pages(truth):
    name = busiest(truth)
    owner, repo = name.split("/")
    with Sandbox(orgs={"acme": 500}, seed=11) as sandbox:
        first = data(sandbox, PULLS_PAGE, {"owner": owner, "name": repo})["repository"]["pullRequests"]
        expected = [p["external_id"] for p in sorted(sandbox.pull_requests(name),
                                                     key=lambda p: (p["gh_updated_at"], p["database_id"]),
                                                     reverse=True)]
        moved = next(p for p in sandbox.pull_requests(name) if p["external_id"] == expected[-1])
        sandbox.inject("mutate", path="graphql", action=lambda sbx: sbx.touch_pull_request(name, moved["number"]))
        rest = pages(sandbox, PULLS_PAGE, {"owner": owner, "name": repo}, lambda d: d["repository"]["pullRequests"],
                     after=first["pageInfo"]["endCursor"])
        assert ids([first, *rest]) == [i for i in expected if i != moved["external_id"]]


def test_cursors_are_github_shaped_keyset_cursors(sb, truth):
    name = busiest(truth)
    owner, repo = name.split("/")
    page = data(sb, PULLS_PAGE, {"owner": owner, "name": repo})["repository"]["pullRequests"]
    cursor = page["pageInfo"]["endCursor"]
    assert cursor.startswith("Y3Vyc29yOnYyOpK")  # base64("cursor:v2:" + msgpack fixarray(2))
    assert base64.urlsafe_b64decode(cursor).startswith(b"cursor:v2:")
    moment, database_id = parse_cursor(cursor)
    last = page["nodes"][-1]
    assert datetime.fromisoformat(moment) == datetime.fromisoformat(last["updatedAt"].replace("Z", "+00:00"))
    assert database_id == next(p["database_id"] for p in truth[name] if p["external_id"] == last["id"])


def test_invalid_cursor_is_refused(sb, truth):
    owner, repo = busiest(truth).split("/")
    body = post(sb, PULLS_PAGE, {"owner": owner, "name": repo, "after": "bm9wZQ=="}).json()
    assert body["errors"][0]["type"] == "INVALID_CURSOR_ARGUMENTS"
    assert body["data"] == {"repository": None}


def test_nested_commits_page_through_node_to_the_exact_commit_list(sb, truth):
    pull = next(p for pulls in truth.values() for p in pulls if p["commits_total"] > 100)
    found = pages(sb, COMMITS_PAGE, {"id": pull["external_id"]}, lambda d: d["node"]["commits"])
    assert [n["commit"]["oid"] for page in found for n in page["nodes"]] == [c["sha"] for c in pull["commits"]]
    assert {page["totalCount"] for page in found} == {pull["commits_total"]}


def test_backward_paging_with_last_and_before_and_edge_cursors(sb, truth):
    pull = next(p for pulls in truth.values() for p in pulls if p["reviews_total"] > 100)
    query = """query($id: ID!, $before: String) { node(id: $id) { ... on PullRequest {
        reviews(last: 40, before: $before) { pageInfo { hasPreviousPage startCursor hasNextPage endCursor }
        edges { cursor node { id } } } } } }"""
    seen, before = [], None
    while True:
        reviews = data(sb, query, {"id": pull["external_id"], "before": before})["node"]["reviews"]
        edges = reviews["edges"]
        assert reviews["pageInfo"]["startCursor"] == edges[0]["cursor"]
        assert reviews["pageInfo"]["endCursor"] == edges[-1]["cursor"]
        assert reviews["pageInfo"]["hasNextPage"] == (before is not None)
        seen = [e["node"]["id"] for e in edges] + seen
        if not reviews["pageInfo"]["hasPreviousPage"]:
            break
        before = reviews["pageInfo"]["startCursor"]
    assert seen == [r["external_id"] for r in pull["reviews"]]


def test_nodes_resolves_every_kind_of_id_and_null_for_unknown(sb, truth):
    pull = next(p for pulls in truth.values() for p in pulls
                if p["reviews"] and any(c["kind"] == "review" for c in p["comments"]) and p["author_login"])
    review = pull["reviews"][0]["external_id"]
    issue_comment = next((c["external_id"] for c in pull["comments"] if c["kind"] == "issue"), None)
    review_comment = next(c for c in pull["comments"] if c["kind"] == "review")
    ids = [pull["external_id"], review, review_comment["external_id"], review_comment["thread_external_id"],
           "PR_kwDOAAAAAc4AAAAB"]
    if issue_comment:
        ids.append(issue_comment)
    query = "query($ids: [ID!]!) { nodes(ids: $ids) { __typename id } }"
    body = post(sb, query, {"ids": ids}).json()
    kinds = [n and n["__typename"] for n in body["data"]["nodes"]]
    assert kinds[:5] == ["PullRequest", "PullRequestReview", "PullRequestReviewComment", "PullRequestReviewThread",
                         None]
    assert [n["id"] for n in body["data"]["nodes"] if n] == [i for i in ids if i != "PR_kwDOAAAAAc4AAAAB"]
    assert body["errors"] == [{"type": "NOT_FOUND", "path": ["nodes", 4],
                               "locations": [{"line": 1, "column": query.index("nodes") + 1}],
                               "message": "Could not resolve to a node with the global id of 'PR_kwDOAAAAAc4AAAAB'"}]


def test_review_threads_replies_and_pending_reviews_match_the_ground_truth(sb, truth):
    pull = next(p for pulls in truth.values() for p in pulls
                if any(c.get("reply_to_external_id") for c in p["comments"]))
    query = """query($id: ID!) { node(id: $id) { ... on PullRequest {
        reviews(first: 100) { nodes { id state submittedAt author { login } } }
        reviewThreads(first: 100) { nodes { id isResolved comments(first: 100) { nodes {
            id path line body replyTo { id } pullRequestReview { id } } } } } } } }"""
    node = data(sb, query, {"id": pull["external_id"]})["node"]
    got = [(c["id"], t["id"], t["isResolved"], c["replyTo"] and c["replyTo"]["id"], c["pullRequestReview"]["id"],
            c["path"], c["line"]) for t in node["reviewThreads"]["nodes"] for c in t["comments"]["nodes"]]
    want = [(c["external_id"], c["thread_external_id"], c["thread_resolved"], c["reply_to_external_id"],
             c["review_external_id"], c["path"], c["line"]) for c in pull["comments"] if c["kind"] == "review"]
    assert got == want
    reviews = [(r["id"], r["state"], r["submittedAt"] is None) for r in node["reviews"]["nodes"]][:100]
    assert reviews == [(r["external_id"], r["state"], r["submitted_at"] is None) for r in pull["reviews"]][:100]


def test_generated_data_is_consistent_and_has_what_clients_must_handle(truth):
    pulls = [p for ps in truth.values() for p in ps]
    counts = sorted(len(ps) for ps in truth.values())
    assert counts[len(counts) // 2] <= 5 and counts[-1] >= 100
    assert any(p["author_login"] is None for p in pulls)
    assert any(r["state"] == "PENDING" and r["submitted_at"] is None for p in pulls for r in p["reviews"])
    assert {p["state"] for p in pulls} == {"OPEN", "CLOSED", "MERGED"}
    assert any(p["comments_total"] > 100 for p in pulls) and any(p["reviews_total"] > 100 for p in pulls)
    for p in pulls:
        assert p["gh_updated_at"] >= p["gh_created_at"]
        if p["state"] == "MERGED":
            assert p["merged_at"] == p["closed_at"] >= p["gh_created_at"] and p["merge_commit_sha"]
        else:
            assert p["merged_at"] is None and p["merge_commit_sha"] is None
        assert (p["closed_at"] is None) == (p["state"] == "OPEN")
        assert all(r["submitted_at"] >= p["gh_created_at"] for r in p["reviews"] if r["submitted_at"])


def test_generation_is_lazy_and_deterministic():
    started = time.perf_counter()
    first = Sandbox(orgs={"acme": 500}, seed=11)
    assert time.perf_counter() - started < 1.0
    second = Sandbox(orgs={"acme": 500}, seed=11)
    name = first.store.repos_of("acme")[7].full_name
    assert first.pull_requests(name) == second.pull_requests(name)
    counts = first.pull_request_counts(name)
    assert counts["pull_requests"] == len(first.pull_requests(name))


# ----- GitHub's limits and errors -------------------------------------------------------------

def test_missing_first_is_missing_pagination_boundaries_but_counting_needs_none(sb, truth):
    owner, repo = busiest(truth).split("/")
    query = f'{{ repository(owner: "{owner}", name: "{repo}") {{ pullRequests {{ nodes {{ id }} }} }} }}'
    body = post(sb, query).json()
    assert body["data"] == {"repository": None}
    assert body["errors"] == [{
        "type": "MISSING_PAGINATION_BOUNDARIES", "path": ["repository", "pullRequests"],
        "locations": [{"line": 1, "column": query.index("pullRequests") + 1}],
        "message": "You must provide a `first` or `last` value to properly paginate the `pullRequests` connection."}]
    counted = data(sb, f'{{ repository(owner: "{owner}", name: "{repo}") {{ pullRequests {{ totalCount }} }} }}')
    assert counted["repository"]["pullRequests"]["totalCount"] == len(truth[busiest(truth)])


def test_first_101_is_excessive_pagination(sb, truth):
    owner, repo = busiest(truth).split("/")
    body = post(sb, PULLS_PAGE.replace("first: 100", "first: 101"), {"owner": owner, "name": repo}).json()
    assert body["errors"][0]["type"] == "EXCESSIVE_PAGINATION"
    assert body["errors"][0]["message"] == ("Requesting 101 records on the `pullRequests` connection exceeds the "
                                            "`first` limit of 100 records.")
    assert body["errors"][0]["path"] == ["repository", "pullRequests"]
    body = post(sb, PULLS_PAGE.replace("first: 100", "first: 10, last: 10"), {"owner": owner, "name": repo}).json()
    assert body["errors"][0]["message"] == ("Passing both `first` and `last` to paginate the `pullRequests` "
                                            "connection is not supported.")
    body = post(sb, PULLS_PAGE.replace("first: 100", "first: -1"), {"owner": owner, "name": repo}).json()
    assert body["errors"][0]["message"] == "`first` on the `pullRequests` connection cannot be less than zero."


def test_unknown_field_and_missing_argument_are_github_shaped_validation_errors(sb):
    body = post(sb, 'query Q { repository(owner: "acme", name: "x") { nope } }').json()
    assert body == {"errors": [{"path": ["query Q", "repository", "nope"],
                                "extensions": {"code": "undefinedField", "typeName": "Repository",
                                               "fieldName": "nope"},
                                "locations": [{"line": 1, "column": 50}],
                                "message": "Field 'nope' doesn't exist on type 'Repository'"}]}
    body = post(sb, '{ repository(owner: "acme") { id } }').json()
    assert body["errors"][0]["extensions"] == {"code": "missingRequiredArguments", "className": "Field",
                                               "name": "repository", "arguments": "name"}
    assert body["errors"][0]["message"] == "Field 'repository' is missing required arguments: name"
    assert body["errors"][0]["path"] == ["query", "repository"]
    assert "data" not in body


def test_parse_error_and_empty_query(sb):
    body = post(sb, "{ viewer { login }").json()
    assert body == {"errors": [{"message": "Parse error on end of string at [1, 19]",
                                "locations": [{"line": 1, "column": 19}]}]}
    reply = httpx.post(f"{sb.url}/graphql", json={}, headers=TOKEN)
    assert reply.status_code == 200
    assert reply.json() == {"errors": [{"message": "A query attribute must be specified and must be a string."}]}


def test_a_variable_of_the_wrong_type_is_refused_as_graphql_ruby_words_it(sb):
    body = post(sb, 'query($first: Int) { search(type: ISSUE, query: "org:acme", first: $first) { issueCount } }',
                {"first": "ten"}).json()
    assert body == {"errors": [{
        "extensions": {"value": "ten", "problems": [{"path": [], "explanation":
                                                     "Int cannot represent non-integer value: 'ten'"}]},
        "locations": [{"line": 1, "column": 7}],
        "message": "Variable $first of type Int was provided invalid value"}]}


def test_more_than_500000_nodes_is_refused_before_running(fresh):
    query = """{ repository(owner: "acme", name: "x") { pullRequests(first: 100) { nodes {
        reviews(first: 100) { nodes { comments(first: 100) { nodes { id } } } } } } } }"""
    reply = post(fresh, query)
    assert reply.json() == {"errors": [{
        "type": "MAX_NODE_LIMIT_EXCEEDED",
        "message": "By the time this query traverses to the comments connection, it is requesting up to 1,010,100 "
                   "possible nodes which exceeds the maximum limit of 500,000."}]}
    assert reply.headers["x-ratelimit-used"] == "0"


def test_not_found_repository_gives_partial_data(sb, truth):
    owner, repo = busiest(truth).split("/")
    query = f"""{{ gone: repository(owner: "acme", name: "no-such-repo") {{ id }}
        here: repository(owner: "{owner}", name: "{repo}") {{ nameWithOwner }} }}"""
    body = post(sb, query).json()
    assert body["data"] == {"gone": None, "here": {"nameWithOwner": busiest(truth)}}
    assert body["errors"] == [{"type": "NOT_FOUND", "path": ["gone"], "locations": [{"line": 1, "column": 3}],
                               "message": "Could not resolve to a Repository with the name 'acme/no-such-repo'."}]


def test_graphql_needs_a_token(fresh):
    reply = post(fresh, "{ viewer { login } }", headers={})
    assert reply.status_code == 401
    assert reply.json()["message"] == "This endpoint requires you to be authenticated."
    with Sandbox(orgs={"acme": 3}, seed=11, tokens=["good"]) as guarded:
        assert post(guarded, "{ viewer { login } }", headers={"Authorization": "bearer bad"}).json() == {
            "message": "Bad credentials", "documentation_url": "https://docs.github.com/graphql", "status": "401"}
        assert post(guarded, "{ viewer { login } }", headers={"Authorization": "bearer good"}).status_code == 200


def test_ghes_prefix_serves_api_graphql(fresh):
    with Sandbox(orgs={"acme": 3}, seed=11, path_prefix="/api/v3") as ghes:
        reply = post(ghes, "{ viewer { login } }", path="/api/graphql")
        assert reply.status_code == 200 and reply.json() == {"data": {"viewer": {"login": "sandbox-admin"}}}
        assert reply.headers["x-github-enterprise-version"]


# ----- cost and rate limit --------------------------------------------------------------------

def test_cost_node_count_and_remaining_follow_the_documented_rules(fresh):
    name = some_repo(fresh)
    owner, repo = name.split("/")
    query = f"""{{ repository(owner: "{owner}", name: "{repo}") {{ pullRequests(first: 100) {{ nodes {{
        commits(first: 50) {{ nodes {{ commit {{ oid }} }} }}
        reviews(first: 100) {{ nodes {{ comments(first: 10) {{ nodes {{ id }} }} }} }} }} }} }}
        rateLimit {{ cost remaining used limit nodeCount resetAt }} }}"""
    first = post(fresh, query)
    rate = first.json()["data"]["rateLimit"]
    # requests: 1 (pullRequests) + 100 (commits) + 100 (reviews) + 100*100 (review comments) = 10 201 -> 102
    assert rate["cost"] == 102
    assert rate["nodeCount"] == 100 + 100 * 50 + 100 * 100 + 100 * 100 * 10
    assert (rate["limit"], rate["used"], rate["remaining"]) == (5000, 102, 4898)
    assert first.headers["x-ratelimit-resource"] == "graphql"
    assert first.headers["x-ratelimit-remaining"] == "4898"
    small = post(fresh, "{ viewer { login } rateLimit { cost remaining } }")
    assert small.json()["data"]["rateLimit"] == {"cost": 1, "remaining": 4897}
    limits = httpx.get(f"{fresh.url}/rate_limit", headers=TOKEN).json()["resources"]
    assert limits["core"]["used"] == 0
    assert limits["graphql"]["used"] == 103
    reset = datetime.strptime(rate["resetAt"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert timedelta(minutes=59) < reset - datetime.now(UTC) <= timedelta(hours=1, seconds=1)


def test_aliases_are_each_counted_for_cost_and_node_limit(fresh):
    def threads(aliases: int) -> str:
        return "{ rateLimit { cost nodeCount } " + " ".join(
            f'n{i}: node(id: "PR_none{i}") {{ ... on PullRequest {{ reviewThreads(first: 50) {{ nodes {{ '
            f'comments(first: 20) {{ nodes {{ id }} }} }} }} }} }}' for i in range(aliases)) + " }"

    # per alias 1 request for the threads + 50 for their comments; 50 + 50 x 20 nodes
    assert post(fresh, threads(10)).json()["data"]["rateLimit"] == {"cost": 5, "nodeCount": 10 * 1050}
    assert post(fresh, threads(2)).json()["data"]["rateLimit"] == {"cost": 1, "nodeCount": 2 * 1050}
    refused = post(fresh, threads(480)).json()
    assert refused["errors"][0]["type"] == "MAX_NODE_LIMIT_EXCEEDED"
    assert "requesting up to 504,000 possible nodes" in refused["errors"][0]["message"]


def test_first_0_is_an_empty_page_that_fills_and_charges_nothing_below_it(fresh):
    """As on GitHub: no nodes, hasNextPage still says whether the connection has any, and the
    connections under one of 0 nodes are requested 0 times (a variable's default counts too)."""
    pulls = [p for r in fresh.store.repos_of("acme") for p in fresh.pull_requests(r.id)]
    busy = next(p for p in pulls if p["commits"])
    query = """query($id: ID!, $threads: Int = 0, $after: String) { rateLimit { cost nodeCount }
      node(id: $id) { ... on PullRequest {
        commits(first: 0) { totalCount pageInfo { hasNextPage endCursor } nodes { id } }
        reviewThreads(first: $threads, after: $after) { pageInfo { hasNextPage endCursor }
          nodes { comments(first: 20) { nodes { id } } } } } } }"""
    found = data(fresh, query, {"id": busy["external_id"]})
    commits = found["node"]["commits"]
    assert commits == {"totalCount": len(busy["commits"]), "nodes": [],
                       "pageInfo": {"hasNextPage": True, "endCursor": None}}
    threads = {c["thread_external_id"] for c in busy["comments"] if c["kind"] == "review"}
    assert found["node"]["reviewThreads"] == {"nodes": [], "pageInfo": {"hasNextPage": bool(threads),
                                                                         "endCursor": None}}
    # 2 requests (commits, reviewThreads), 0 for the threads' comments; 0 nodes
    assert found["rateLimit"] == {"cost": 1, "nodeCount": 0}
    wide = "{ rateLimit { cost nodeCount } " + " ".join(
        f'n{i}: node(id: "PR_none{i}") {{ ... on PullRequest {{ reviewThreads(first: 0) {{ nodes {{ '
        f'comments(first: 20) {{ nodes {{ id }} }} }} }} }} }}' for i in range(200)) + " }"
    # 200 requests, where threads of 50 would be 200 x 51
    assert post(fresh, wide).json()["data"]["rateLimit"] == {"cost": 2, "nodeCount": 0}
    without = next(p for p in pulls if not p["commits"] or not any(c["kind"] == "review" for c in p["comments"]))
    empty = data(fresh, query, {"id": without["external_id"]})["node"]
    has_threads = any(c["kind"] == "review" for c in without["comments"])
    assert (empty["commits"]["pageInfo"]["hasNextPage"], empty["reviewThreads"]["pageInfo"]["hasNextPage"]) == (
        bool(without["commits"]), has_threads)


def test_spent_bucket_answers_rate_limited_with_200(fresh):
    fresh.set_rate_limit("graphql", remaining=0)
    reply = post(fresh, "{ viewer { login } }")
    assert reply.status_code == 200
    assert reply.json() == {"errors": [{"type": "RATE_LIMITED",
                                        "message": f"API rate limit exceeded for user ID {fresh.store.viewer.id}."}]}
    assert reply.headers["x-ratelimit-remaining"] == "0"
    assert httpx.get(f"{fresh.url}/orgs/acme", headers=TOKEN).status_code == 200


def test_dry_run_is_measured_but_not_charged(fresh):
    query = ('{ search(type: ISSUE, query: "org:acme", first: 10) { issueCount } '
             'rateLimit(dryRun: true) { cost remaining } }')
    reply = post(fresh, query)
    assert reply.json()["data"]["rateLimit"] == {"cost": 1, "remaining": 5000}
    assert reply.headers["x-ratelimit-used"] == "0"
    assert [r.charged for r in fresh.requests] == [False]


def test_configured_secondary_limit_applies_to_graphql():
    with Sandbox(orgs={"acme": 3}, seed=11, secondary_limit=(2, 60)) as limited:
        statuses = [post(limited, "{ viewer { login } }").status_code for _ in range(3)]
        assert statuses == [200, 200, 403]
        refused = post(limited, "{ viewer { login } }")
        assert int(refused.headers["retry-after"]) > 0
        assert refused.json()["message"].startswith("You have exceeded a secondary rate limit")


# ----- search ---------------------------------------------------------------------------------

SEARCH = """query($q: String!, $after: String) {
  search(type: ISSUE, query: $q, first: 100, after: $after) {
    issueCount
    pageInfo { hasNextPage endCursor }
    nodes { ... on PullRequest { id updatedAt } }
  }
}"""


def test_search_is_capped_at_1000_results(sb, truth):
    total = sum(len(p) for p in truth.values())
    assert total > 1000
    found = pages(sb, SEARCH, {"q": "org:acme is:pr"}, lambda d: d["search"])
    assert {page["issueCount"] for page in found} == {total}
    assert len(ids(found)) == 1000 == len(set(ids(found)))


def test_search_updated_since_sorted_updated_desc(sb, truth):
    since = datetime(2025, 11, 1, tzinfo=UTC)
    expected = sorted(((p["gh_updated_at"], p["database_id"], p["external_id"]) for ps in truth.values() for p in ps
                       if p["gh_updated_at"] >= since), reverse=True)
    assert 0 < len(expected) <= 1000
    found = pages(sb, SEARCH, {"q": "org:acme is:pr updated:>=2025-11-01T00:00:00Z sort:updated-desc"},
                  lambda d: d["search"])
    assert {page["issueCount"] for page in found} == {len(expected)}
    assert ids(found) == [e[2] for e in expected]


# ----- faults ---------------------------------------------------------------------------------

def test_fault_shapes(fresh):
    fresh.inject("status", path="graphql", status=502)
    reply = post(fresh, "{ viewer { login } }")
    assert reply.status_code == 502
    body = reply.json()
    assert body["data"] == "null"
    assert body["errors"][0]["message"].startswith("Something went wrong while executing your query.")
    assert reply.headers["x-github-request-id"] in body["errors"][0]["message"]
    fresh.inject("status", path="graphql", status=504)
    assert post(fresh, "{ viewer { login } }").status_code == 504
    fresh.inject("timedout", path="graphql")
    reply = post(fresh, "{ viewer { login } }")
    assert (reply.status_code, reply.json()) == (200, {"errors": [{"message": "timedout"}]})
    fresh.inject("secondary", path="graphql", status=403, retry_after=30)
    reply = post(fresh, "{ viewer { login } }")
    assert reply.status_code == 403 and reply.headers["retry-after"] == "30"
    assert reply.headers["x-ratelimit-resource"] == "graphql"
    assert reply.json()["message"].startswith("You have exceeded a secondary rate limit")
    fresh.inject("secondary", path="graphql", status=200, retry_after=7)
    reply = post(fresh, "{ viewer { login } }")
    assert reply.status_code == 200 and reply.headers["retry-after"] == "7"
    assert reply.json()["errors"][0]["message"].startswith("You have exceeded a secondary rate limit")
    fresh.inject("ratelimited", path="graphql")
    reply = post(fresh, "{ viewer { login } }")
    assert reply.json()["errors"][0]["type"] == "RATE_LIMITED" and reply.headers["x-ratelimit-remaining"] == "0"
    assert post(fresh, "{ viewer { login } }").json() == {"data": {"viewer": {"login": "sandbox-admin"}}}
    assert [r.fault for r in fresh.requests] == ["status", "status", "timedout", "secondary", "secondary",
                                                 "ratelimited", None]
    assert httpx.get(f"{fresh.url}/orgs/acme").status_code == 200


def test_a_failure_inside_the_sandbox_answers_like_github_s_internal_error(fresh, monkeypatch):
    from ghetl.sandbox import graphql

    def broken(*args, **kwargs):
        raise RuntimeError("bug")

    monkeypatch.setattr(graphql, "answer", broken)
    reply = post(fresh, "{ viewer { login } }")
    assert reply.status_code == 502
    assert reply.json()["data"] == "null"


# ----- mutations ------------------------------------------------------------------------------

def test_touch_comment_review_and_force_push_show_in_the_next_query_and_in_search(fresh):
    name = some_repo(fresh)
    owner, repo = name.split("/")
    before = datetime.now(UTC).replace(microsecond=0)
    number = fresh.pull_requests(name)[0]["number"]
    fresh.touch_pull_request(name, number, title="Renamed by the test")
    fresh.comment_pull_request(name, number, "a new comment")
    fresh.review_pull_request(name, number, state="PENDING")
    pushed = fresh.force_push_pull_request(name, number, commits=3)
    added = fresh.add_pull_request(name, "Brand new pull request")
    query = f"""{{ repository(owner: "{owner}", name: "{repo}") {{
        pullRequests(first: 2, orderBy: {{field: UPDATED_AT, direction: DESC}}) {{ nodes {{
          number title
          commits(first: 100) {{ totalCount nodes {{ commit {{ oid }} }} }}
          comments(last: 1) {{ nodes {{ body }} }}
          reviews(last: 1) {{ nodes {{ state submittedAt }} }} }} }} }} }}"""
    nodes = data(fresh, query)["repository"]["pullRequests"]["nodes"]
    assert {n["number"] for n in nodes} == {number, added["number"]}
    touched = next(n for n in nodes if n["number"] == number)
    assert touched["title"] == "Renamed by the test"
    assert [c["commit"]["oid"] for c in touched["commits"]["nodes"]] == [c["sha"] for c in pushed["commits"]]
    assert touched["comments"]["nodes"] == [{"body": "a new comment"}]
    assert touched["reviews"]["nodes"] == [{"state": "PENDING", "submittedAt": None}]
    stamp = before.strftime("%Y-%m-%dT%H:%M:%SZ")
    found = data(fresh, SEARCH, {"q": f"org:acme is:pr updated:>={stamp}"})["search"]
    assert found["issueCount"] == 2
    assert {n["id"] for n in found["nodes"]} == {pushed["external_id"], added["external_id"]}


def test_new_objects_have_32_bit_database_ids_and_reviews_keep_rewritten_commits(fresh):
    name = some_repo(fresh)
    owner, repo = name.split("/")
    number = fresh.add_pull_request(name, "Ids", commits=2)["number"]
    fresh.review_pull_request(name, number, state="CHANGES_REQUESTED")
    fresh.comment_pull_request(name, number, "checking ids")
    reviewed = fresh.pull_request(name, number)["reviews"][0]["commit_sha"]
    fresh.force_push_pull_request(name, number, commits=1)
    query = f"""{{ repository(owner: "{owner}", name: "{repo}") {{ pullRequest(number: {number}) {{
        databaseId reviewDecision commits(first: 10) {{ totalCount }}
        reviews(first: 1) {{ nodes {{ databaseId commit {{ oid }} }} }}
        comments(first: 1) {{ nodes {{ databaseId }} }} }} }} }}"""
    pull = data(fresh, query)["repository"]["pullRequest"]
    ids = [pull["databaseId"], pull["reviews"]["nodes"][0]["databaseId"], pull["comments"]["nodes"][0]["databaseId"]]
    assert all(0 < i < 2**31 for i in ids)
    assert pull["reviews"]["nodes"][0]["commit"] == {"oid": reviewed}
    assert pull["commits"]["totalCount"] == 1
    assert pull["reviewDecision"] == "CHANGES_REQUESTED"


def test_deleted_comments_leave_the_pull_request(fresh):
    name, pull = next((r.full_name, p) for r in fresh.store.repos_of("acme") for p in fresh.pull_requests(r.id)
                      if any(c["kind"] == "review" for c in p["comments"])
                      and any(c["kind"] == "issue" for c in p["comments"]))
    issue = next(c for c in pull["comments"] if c["kind"] == "issue")
    review = next(c for c in pull["comments"] if c["kind"] == "review")
    fresh.delete_pull_request_comment(name, pull["number"], issue["external_id"])
    after = fresh.delete_pull_request_comment(name, pull["number"], review["external_id"])
    remaining = {c["external_id"] for c in after["comments"]}
    assert remaining == {c["external_id"] for c in pull["comments"]} - {issue["external_id"], review["external_id"]}
    assert after["gh_updated_at"] > pull["gh_updated_at"]
    body = post(fresh, "query($ids: [ID!]!) { nodes(ids: $ids) { id } }",
                {"ids": [issue["external_id"], review["external_id"]]}).json()
    assert body["data"] == {"nodes": [None, None]}
    with pytest.raises(KeyError):
        fresh.delete_pull_request_comment(name, pull["number"], issue["external_id"])


def test_control_api_mutates_pull_requests(fresh):
    name = some_repo(fresh)
    number = fresh.pull_requests(name)[0]["number"]
    reply = httpx.post(f"{fresh.url}/_sandbox/comment_pull_request",
                       json={"repo": name, "number": number, "body": "over HTTP"})
    assert reply.status_code == 200
    assert [c["body"] for c in reply.json()["comments"] if c["kind"] == "issue"][-1] == "over HTTP"
    listed = httpx.get(f"{fresh.url}/_sandbox/pull_requests", params={"repo": name}).json()
    assert [p["external_id"] for p in listed] == [p["external_id"] for p in fresh.pull_requests(name)]
