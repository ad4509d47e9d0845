"""The `github_pull_requests` step against the sandbox's own pull requests, on both back ends.

Every assertion compares the database with the sandbox's ground truth (`Sandbox.pull_requests`),
column by column and child by child, so a connection read from its first page only, a lost
commit or a stale state shows up as a difference.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from typing import Any

import pytest
import sqlalchemy as sa

from ghetl.sandbox import Sandbox
from ghetl.steps import pull_requests as step
from ghetl.store.db import (
    pull_request_comments,
    pull_request_commits,
    pull_request_reviews,
    pull_requests,
    repositories,
)

from .conftest import Backend, add_tenant

ORG = {"acme": 20}
SEED = 22
PR_COLUMNS = ("database_id", "number", "title", "body", "url", "state", "is_draft", "author_login",
              "merged_by_login", "base_ref", "head_ref", "merge_commit_sha", "additions", "deletions",
              "changed_files", "commits_total", "reviews_total", "comments_total", "review_decision",
              "gh_created_at", "gh_updated_at", "closed_at", "merged_at", "first_commit_at", "first_review_at",
              "first_approval_at")
CHILDREN = {
    "commits": (pull_request_commits, "sha"),
    "reviews": (pull_request_reviews, "external_id"),
    "comments": (pull_request_comments, "external_id"),
}


@pytest.fixture
def prs_sandbox(make_sandbox: Any) -> Sandbox:
    return make_sandbox(orgs=ORG, seed=SEED)


def _seconds(value: Any) -> Any:
    """GitHub's timestamps have whole seconds; the sandbox's own clock has microseconds."""
    return value.replace(microsecond=0) if isinstance(value, dt.datetime) else value


def _truth(sb: Sandbox) -> dict[str, dict[str, Any]]:
    return {p["external_id"]: p for repo in sb.repos("acme") for p in sb.pull_requests(repo["id"])}


def _stored(backend: Backend) -> dict[str, dict[str, Any]]:
    with backend.engine.connect() as conn:
        heads = {r["id"]: dict(r) for r in conn.execute(sa.select(pull_requests)).mappings()}
        children: dict[int, dict[str, list[dict[str, Any]]]] = {i: {k: [] for k in CHILDREN} for i in heads}
        for name, (table, _) in CHILDREN.items():
            for row in conn.execute(sa.select(table)).mappings():
                children[row["pull_request_id"]][name].append(dict(row))
    return {row["external_id"]: {**row, **children[pk]} for pk, row in heads.items()}


def assert_same_as_github(backend: Backend, sb: Sandbox) -> dict[str, dict[str, Any]]:
    truth, stored = _truth(sb), _stored(backend)
    assert set(stored) == set(truth)
    for external_id, want in truth.items():
        got = stored[external_id]
        assert {c: _seconds(got[c]) for c in PR_COLUMNS} == {c: _seconds(want[c]) for c in PR_COLUMNS}, external_id
        for name, (_, field) in CHILDREN.items():
            columns = [k for k in want[name][0]] if want[name] else []
            mine = sorted(({k: _seconds(row[k]) for k in columns} for row in got[name]), key=lambda r: r[field])
            theirs = sorted(({k: _seconds(row[k]) for k in columns} for row in want[name]), key=lambda r: r[field])
            assert mine == theirs, f"{external_id} {name}"
    return truth


def _with_pull_requests(backend: Backend, sb: Sandbox) -> str:
    return add_tenant(backend, sb, settings={"pull_requests": True})


def _threads(pulls: dict[str, dict[str, Any]], columns: list[str]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Review comments by pull request and thread (threads with comments: the sandbox has no empty one)."""
    found: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for external_id, pull in pulls.items():
        threads = found.setdefault(external_id, {})
        for comment in pull["comments"]:
            if comment["kind"] == "review":
                threads.setdefault(comment["thread_external_id"], []).append(
                    {k: _seconds(comment[k]) for k in columns})
        for comments in threads.values():
            comments.sort(key=lambda c: c["external_id"])
    return found


def _recording_queries(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any], Any]]:
    """Every query the step sends, with its variables and result, from every thread of the run."""
    calls: list[tuple[str, dict[str, Any], Any]] = []
    original = step._query

    def recording(ctx: Any, document: str, variables: dict[str, Any]) -> Any:
        result = original(ctx, document, variables)
        calls.append((document, variables, result))
        return result

    monkeypatch.setattr(step, "_query", recording)
    return calls


def _points(requests: int) -> int:
    """GitHub's cost of a query that needs `requests` requests to fill its connections."""
    return max(1, int(requests / 100 + 0.5))


def _slots(variables: dict[str, Any]) -> list[dict[str, Any]]:
    """A follow-up's variables by slot (n0, n1, ...): its id and each open connection's first and cursor."""
    found: dict[int, dict[str, Any]] = {}
    for name, value in variables.items():
        match = re.fullmatch(r"([A-Za-z]+?)(\d+)", name)
        assert match, name
        found.setdefault(int(match[2]), {})[match[1]] = value
    assert sorted(found) == list(range(len(found)))
    return [found[i] for i in sorted(found)]


def _follow_ups(total: int, first: int, page: int) -> int:
    """Requests that read a connection of `total` nodes past a first page of `first`."""
    return math.ceil(max(0, total - first) / page)


def test_full_sync_stores_every_pull_request_with_all_nested_pages(backend: Backend, prs_sandbox: Sandbox,
                                                                     token: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    sb = prs_sandbox
    tenant = _with_pull_requests(backend, sb)
    truth = _truth(sb)
    columns = next(list(c) for p in truth.values() for c in p["comments"] if c["kind"] == "review")
    threads = _threads(truth, columns)
    # The organisation needs every kind of follow-up, or this test would prove less than it says.
    per_repo = [len(sb.pull_requests(r["id"])) for r in sb.repos("acme")]
    assert max(per_repo) > step.PULLS_FIRST + step.PULLS_PAGE
    assert max(len(p["commits"]) for p in truth.values()) > 100
    assert max(len(p["reviews"]) for p in truth.values()) > step.NESTED_FIRST
    assert any(p["author_login"] is None for p in truth.values())
    assert any(r["submitted_at"] is None for p in truth.values() for r in p["reviews"])
    many_threads = {pull for pull, ts in threads.items() if len(ts) > step.THREADS_FIRST}
    long_threads = {thread: len(cs) for ts in threads.values() for thread, cs in ts.items()
                    if len(cs) > step.THREAD_COMMENTS_FIRST}
    assert many_threads and long_threads
    calls = _recording_queries(monkeypatch)

    result = backend.sync(tenant, workers=(4, 2))

    assert result.overall == "FINISHED"
    assert result.counts["github_pull_requests"] == {"extracted": len(truth), "transformed": len(truth),
                                                      "embedded": len(truth), "failed": 0}
    stored = _stored(backend)
    assert _threads(stored, columns) == threads
    assert_same_as_github(backend, sb)
    with backend.engine.connect() as conn:
        status = conn.execute(sa.text("select status from etl_jobs")).scalar_one()
        linked = conn.execute(sa.select(sa.func.count()).select_from(pull_requests.join(
            repositories, repositories.c.id == pull_requests.c.repository_id))).scalar_one()
    status = status if isinstance(status, dict) else __import__("json").loads(status)
    assert status["steps"]["github_pull_requests"] == {
        "order": 2, "display_name": "Pull Requests", "extraction": "finished", "transform": "finished",
        "embedding": "finished"}
    assert linked == len(truth)
    assert result.stats["graphql_requests"] < len(per_repo) + sum(n > step.PULLS_FIRST for n in per_repo) * 20
    # Each overflowing connection was read on by follow-ups, and nothing else was: the commits,
    # reviews, comments and threads of the pull requests with more than a first page of them, the
    # comments of the long threads (wherever their thread was met), every open connection of a
    # node in one slot (aliases n0, n1, ...) with its own first and cursor, several slots to a
    # query, each query costing what GitHub would charge for it.
    rest = set(step.REST.values())
    assert all(d == step.REST[len(_slots(v))] for d, v, _ in calls if d in rest)
    follow_ups = [(_slots(v), r) for d, v, r in calls if d in rest]
    asked = {kind: sorted(slot["id"] for slots, _ in follow_ups for slot in slots if kind in slot)
             for kind in step.FOLLOW_UPS}
    issue_comments = {p: sum(c["kind"] == "issue" for c in pull["comments"]) for p, pull in truth.items()}
    assert asked == {
        "commits": sorted(p for p, pull in truth.items()
                          for _ in range(_follow_ups(len(pull["commits"]), step.NESTED_FIRST, step.REST_PAGE))),
        "reviews": sorted(p for p, pull in truth.items()
                          for _ in range(_follow_ups(len(pull["reviews"]), step.NESTED_FIRST, step.REST_PAGE))),
        "comments": sorted(p for p, n in issue_comments.items()
                           for _ in range(_follow_ups(n, step.NESTED_FIRST, step.REST_PAGE))),
        "reviewThreads": sorted(p for p in many_threads
                                for _ in range(_follow_ups(len(threads[p]), step.THREADS_FIRST, step.THREADS_PAGE))),
        "threadComments": sorted(t for t, n in long_threads.items()
                                 for _ in range(_follow_ups(n, step.THREAD_COMMENTS_FIRST, step.REST_PAGE))),
    }
    assert all(slot[kind] == step.FOLLOW_UPS[kind][2] for slots, _ in follow_ups for slot in slots
               for kind in step.FOLLOW_UPS if kind in slot)
    # GitHub: per slot, 1 request for each of its 5 connections (those of 0 nodes too) and, when it
    # asks for a page of threads, 1 per thread for their comments; a query costs its requests / 100,
    # rounded, at least 1. Nodes: the connections' firsts, and 20 comments per thread asked for.
    thread_slots = [sum("reviewThreads" in slot for slot in slots) for slots, _ in follow_ups]
    assert [(r.cost, r.nodes) for _, r in follow_ups] == [
        (_points(5 * len(slots) + t * step.THREADS_PAGE),
         sum(v for slot in slots for k, v in slot.items() if k in step.FOLLOW_UPS)
         + t * step.THREADS_PAGE * step.THREAD_COMMENTS_FIRST)
        for (slots, _), t in zip(follow_ups, thread_slots, strict=True)]
    # Follow-ups of different pull requests and of different kinds share queries: fewer queries
    # than connection pages, and some query reads commits beside another kind.
    assert all(len(slots) <= step.SLOTS_PER_QUERY for slots, _ in follow_ups)
    assert all(len({slot["id"] for slot in slots}) == len(slots) for slots, _ in follow_ups)
    assert len(follow_ups) < sum(len(asked[kind]) for kind in asked)
    assert any({"commits"} < {k for slot in slots for k in slot if k in step.FOLLOW_UPS} for slots, _ in follow_ups)
    assert result.stats["graphql_points"] == sum(r.cost for _, _, r in calls)


def test_incremental_after_changes_matches_github_and_no_change_costs_one_point(
        backend: Backend, prs_sandbox: Sandbox, token: str) -> None:
    sb = prs_sandbox
    tenant = _with_pull_requests(backend, sb)
    assert backend.sync(tenant).overall == "FINISHED"
    repos = [r for r in sb.repos("acme") if sb.pull_requests(r["id"])]
    first, second = repos[0]["id"], repos[1]["id"]
    open_one = next((p for r in repos for p in sb.pull_requests(r["id"]) if p["state"] == "OPEN"), None)
    commented = next(p for p in sb.pull_requests(second) if p["comments"])
    sb.touch_pull_request(first, 1, title="Renamed on GitHub")
    sb.comment_pull_request(second, 1, "a new comment")
    sb.review_pull_request(second, 1, state="CHANGES_REQUESTED", body="please fix")
    sb.review_pull_request(first, 1, state="PENDING")
    sb.force_push_pull_request(first, 1, commits=2)
    sb.delete_pull_request_comment(second, commented["number"], commented["comments"][0]["external_id"])
    added = sb.add_pull_request(second, "A brand new pull request")
    if open_one is not None:
        repo_of = next(r["id"] for r in repos if any(p["external_id"] == open_one["external_id"]
                                                     for p in sb.pull_requests(r["id"])))
        sb.touch_pull_request(repo_of, open_one["number"], state="MERGED")

    result = backend.sync(tenant)

    assert result.overall == "FINISHED" and not result.full
    truth = assert_same_as_github(backend, sb)
    assert truth[added["external_id"]]["title"] == "A brand new pull request"
    assert result.counts["github_pull_requests"]["extracted"] < len(truth) / 4

    quiet = backend.sync(tenant)

    assert quiet.overall == "FINISHED"
    assert quiet.counts["github_pull_requests"]["extracted"] == 0
    assert quiet.stats["graphql_requests"] <= 1
    assert quiet.stats["graphql_points"] <= 1


def test_repository_deleted_before_its_pull_requests_are_read_fails_alone(
        embedded: Backend, make_sandbox: Any, token: str, monkeypatch: pytest.MonkeyPatch) -> None:
    sb = make_sandbox(orgs={"acme": 6}, seed=SEED)
    tenant = _with_pull_requests(embedded, sb)
    gone = sb.repos("acme")[0]
    original = step._first_pages

    def delete_then_read(ctx: Any, chunk: list[Any]) -> Any:
        """Deleted on GitHub between the REST listing and the GraphQL read."""
        if any(p.external_id == str(gone["id"]) for p in chunk):
            sb.delete(gone["id"])
        return original(ctx, chunk)

    monkeypatch.setattr(step, "_first_pages", delete_then_read)
    result = embedded.sync(tenant)

    assert result.overall == "FINISHED"
    assert any(gone["full_name"] in w and "NOT_FOUND" in w for w in result.warnings)
    others = [p for r in sb.repos("acme") for p in sb.pull_requests(r["id"])]
    assert result.counts["github_pull_requests"]["transformed"] == len(others)


def _first_batched_follow_up(document: str, variables: dict[str, Any]) -> int | None:
    """The slot count of a follow-up of several slots, one of them past the first a pull request's."""
    slots = next((n for n, d in step.REST.items() if d == document), None)
    if slots is None or slots < 2 or not any(s["id"].startswith("PR_") for s in _slots(variables)[1:]):
        return None
    return slots


def test_a_follow_up_github_answers_no_page_for_fails_its_pull_request_alone(
        embedded: Backend, prs_sandbox: Sandbox, token: str, monkeypatch: pytest.MonkeyPatch) -> None:
    sb = prs_sandbox
    tenant = _with_pull_requests(embedded, sb)
    original = step._query
    spoilt: list[str] = []

    def one_slot_not_found(ctx: Any, document: str, variables: dict[str, Any]) -> Any:
        """A pull request's slot (past the first) of the first batched follow-up asks for a node GitHub
        cannot resolve."""
        if not spoilt and _first_batched_follow_up(document, variables):
            i = next(i for i, s in enumerate(_slots(variables)) if i and s["id"].startswith("PR_"))
            spoilt.append(variables[f"id{i}"])
            variables = {**variables, f"id{i}": "PR_kwDOgone000000001"}
        return original(ctx, document, variables)

    monkeypatch.setattr(step, "_query", one_slot_not_found)
    result = embedded.sync(tenant)

    truth, stored = _truth(sb), _stored(embedded)
    assert result.overall == "FINISHED" and spoilt
    assert result.counts["github_pull_requests"]["failed"] == 1
    assert set(stored) == set(truth) - set(spoilt)
    with embedded.engine.connect() as conn:
        error = conn.execute(sa.text("select error_message from raw_extraction_data where status = 'failed'")
                             ).scalar_one()
    assert "read incompletely" in error and "stopped before the end of" in error
    assert "Could not resolve to a node" in error

    monkeypatch.setattr(step, "_query", original)
    assert embedded.sync(tenant).overall == "FINISHED"
    assert_same_as_github(embedded, sb)


def test_a_follow_up_batch_that_times_out_is_asked_again_in_halves(
        embedded: Backend, prs_sandbox: Sandbox, token: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from ghetl.github import QueryTimedOut

    sb = prs_sandbox
    tenant = _with_pull_requests(embedded, sb)
    calls = _recording_queries(monkeypatch)
    recording = step._query
    timed_out: list[tuple[int, dict[str, Any]]] = []

    def first_batch_times_out(ctx: Any, document: str, variables: dict[str, Any]) -> Any:
        slots = _first_batched_follow_up(document, variables)
        if not timed_out and slots:
            timed_out.append((slots, variables))
            raise QueryTimedOut("GitHub timed out on a GraphQL query (timedout)")
        return recording(ctx, document, variables)

    monkeypatch.setattr(step, "_query", first_batch_times_out)
    result = embedded.sync(tenant)

    assert result.overall == "FINISHED" and timed_out
    assert_same_as_github(embedded, sb)
    n, variables = timed_out[0]
    wanted = _slots(variables)
    smaller = {step.REST[m] for m in range(1, n)}
    asked = [_slots(v) for d, v, _ in calls if d in smaller]
    assert wanted[: n // 2] in asked and wanted[n // 2:] in asked


def test_bad_pull_requests_fail_alone(embedded: Backend, make_sandbox: Any, token: str) -> None:
    sb = make_sandbox(orgs={"acme": 4}, seed=SEED)
    tenant = _with_pull_requests(embedded, sb)
    repo = next(r for r in sb.repos("acme") if len(sb.pull_requests(r["id"])) >= 2)
    sb.touch_pull_request(repo["id"], 1, body="x" * 1_000_000)
    original = step.to_row

    def with_unknown_state(payload: dict[str, Any], ctx: Any) -> dict[str, Any]:
        if payload["number"] == 2 and str(payload["repository"]["databaseId"]) == str(repo["id"]):
            payload = {**payload, "state": "FROZEN"}
        return original(payload, ctx)

    step_ = __import__("ghetl.steps", fromlist=["get"]).get(step.STEP_NAME)
    object.__setattr__(step_, "to_row", with_unknown_state)
    try:
        result = embedded.sync(tenant)
    finally:
        object.__setattr__(step_, "to_row", original)

    total = len(_truth(sb))
    assert result.overall == "FINISHED"
    assert result.counts["github_pull_requests"]["failed"] == 1
    assert result.counts["github_pull_requests"]["transformed"] == total - 1
    with embedded.engine.connect() as conn:
        error = conn.execute(sa.text("select error_message from raw_extraction_data where status = 'failed'")
                             ).scalar_one()
        body = conn.execute(sa.select(pull_requests.c.body).where(pull_requests.c.number == 1,
                                                                  pull_requests.c.url.like(f"%{repo['full_name']}/%"))
                            ).scalar_one()
    assert "unknown pull request state 'FROZEN'" in error
    assert len(body) == 1_000_000


def test_turned_off_pull_requests_cost_nothing(embedded: Backend, make_sandbox: Any, token: str) -> None:
    sb = make_sandbox(orgs={"acme": 6}, seed=SEED)
    tenant = add_tenant(embedded, sb)

    result = embedded.sync(tenant)

    assert result.overall == "FINISHED"
    assert result.counts["github_pull_requests"]["extracted"] == 0
    assert result.stats["graphql_requests"] == 0


def test_flow_metrics_of_hand_checked_pull_requests(embedded: Backend, prs_sandbox: Sandbox, token: str) -> None:
    from ghetl.workbench import frames

    sb = prs_sandbox
    tenant = _with_pull_requests(embedded, sb)
    repo = max(sb.repos("acme"), key=lambda r: len(sb.pull_requests(r["id"])))
    merged = [p for p in sb.pull_requests(repo["id"]) if p["state"] == "MERGED" and p["reviews"]][:5]
    assert len(merged) == 5
    first = merged[0]
    sb.review_pull_request(repo["id"], first["number"], state="PENDING", body="not submitted yet")
    assert embedded.sync(tenant).overall == "FINISHED"

    frame = frames.pull_requests(tenant, repository=repo["full_name"], engine=embedded.engine).set_index("number")
    reviews = frames.pull_request_reviews(tenant, repository=repo["full_name"], engine=embedded.engine)

    assert set(frame.index) == {p["number"] for p in sb.pull_requests(repo["id"])}
    for pull in merged:
        got = frame.loc[pull["number"]]
        submitted = sorted(r["submitted_at"] for r in pull["reviews"]
                           if r["submitted_at"] and r["author_login"] != pull["author_login"])
        approved = sorted(r["submitted_at"] for r in pull["reviews"] if r["state"] == "APPROVED")
        first_commit = min(c["authored_at"] for c in pull["commits"])
        assert got["size"] == pull["additions"] + pull["deletions"]
        assert got["time_to_merge"] == _seconds(pull["merged_at"]) - _seconds(pull["gh_created_at"])
        assert got["cycle_time"] == _seconds(pull["merged_at"]) - _seconds(first_commit)
        if submitted:
            assert got["time_to_first_review"] == _seconds(submitted[0]) - _seconds(pull["gh_created_at"])
            assert got["review_time"] == _seconds(pull["merged_at"]) - _seconds(submitted[0])
        if approved:
            assert got["time_to_first_approval"] == _seconds(approved[0]) - _seconds(pull["gh_created_at"])
    mine = reviews[reviews["number"] == first["number"]]
    assert len(mine) == len(first["reviews"])
    assert "not submitted yet" not in set(mine["body"])
    assert len(frames.pull_request_reviews(tenant, repository=repo["full_name"], include_pending=True,
                                           engine=embedded.engine).query(f"number == {first['number']}")) \
        == len(first["reviews"]) + 1


def test_search_finds_pull_requests_by_meaning(embedded: Backend, prs_sandbox: Sandbox, token: str) -> None:
    from ghetl.workbench.search import search

    sb = prs_sandbox
    tenant = _with_pull_requests(embedded, sb)
    repo = sb.repos("acme")[0]
    added = sb.add_pull_request(repo["id"], "Settle merchant card payments nightly",
                                body="Batch settlement of card payments to merchants, run every night.")
    assert embedded.sync(tenant).overall == "FINISHED"

    found = search(tenant, "settle merchant card payments nightly", entity="pull_requests", engine=embedded.engine)

    assert list(found.columns) == ["rank", "repository", "number", "title", "url", "score"]
    assert found.iloc[0]["title"] == added["title"]
    assert found.iloc[0]["repository"] == repo["full_name"]


def test_timeouts_and_bad_gateways_are_asked_again_smaller_and_lose_nothing(
        embedded: Backend, prs_sandbox: Sandbox, token: str) -> None:
    sb = prs_sandbox
    tenant = _with_pull_requests(embedded, sb)
    sb.inject("timedout", path="graphql", times=2)
    sb.inject("status", path="graphql", times=1, status=502)

    result = embedded.sync(tenant)

    assert result.overall == "FINISHED"
    assert_same_as_github(embedded, sb)
    assert sum(r.status == 502 for r in sb.requests if r.path.endswith("graphql")) == 1


def test_a_rejected_query_is_a_clear_error_and_never_retried(
        embedded: Backend, prs_sandbox: Sandbox, token: str, monkeypatch: pytest.MonkeyPatch) -> None:
    sb = prs_sandbox
    tenant = _with_pull_requests(embedded, sb)
    too_many = step.REPOSITORIES.replace("(first: 50)", "(first: 100)").replace("reviewThreads(first: 5)",
                                                                                "reviewThreads(first: 100)")
    monkeypatch.setattr(step, "REPOSITORIES", too_many)
    monkeypatch.setattr(step, "PULLS_FIRST", 100)

    result = embedded.sync(tenant)

    graphql_calls = [r for r in sb.requests if r.path.endswith("graphql")]
    assert result.overall == "FAILED"
    assert "MAX_NODE_LIMIT_EXCEEDED" in (result.error or "")
    assert "bug in ghetl" in (result.error or "")
    # Queries of other repositories may have been in flight alongside; none was sent twice.
    assert graphql_calls and result.stats["retries"] == 0


def test_a_pull_request_past_githubs_250_commits_keeps_250_with_a_note(
        embedded: Backend, make_sandbox: Any, token: str) -> None:
    from ghetl.sandbox import control

    sb = make_sandbox(orgs={"acme": 4}, seed=SEED)
    tenant = _with_pull_requests(embedded, sb)
    control.run_op(sb, "set_pull_commits_cap", {"cap": 250})
    repo = sb.repos("acme")[0]
    big = sb.add_pull_request(repo["id"], "a very long branch", commits=260)

    result = embedded.sync(tenant)

    assert result.overall == "FINISHED"
    assert result.counts["github_pull_requests"]["failed"] == 0
    assert result.warnings == []
    name = f"{repo['full_name']}#{big['number']}"
    assert result.stats["notes"] == [f"{name}: GitHub lists at most 250 of its 260 commits; 250 stored"]
    stored = assert_same_as_github(embedded, sb)[big["external_id"]]
    assert stored["commits_total"] == 260 and len(stored["commits"]) == 250
    with embedded.engine.connect() as conn:
        pk = conn.execute(sa.select(pull_requests.c.id).where(pull_requests.c.external_id == big["external_id"])
                          ).scalar_one()
        rows = conn.execute(sa.select(sa.func.count()).select_from(pull_request_commits)
                            .where(pull_request_commits.c.pull_request_id == pk)).scalar_one()
    assert rows == 250
