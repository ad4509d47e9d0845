"""The `github_pull_requests` step: pull requests with their commits, reviews and comments, over GraphQL.

Collector. A full run reads the pull requests of each repository this run stored, as soon as the
repositories step has stored it: twenty repositories per query (`nodes(ids:)` with the REST
payload's node id, so a rename between listing and fetch does not matter), each with its ten
most recently updated pull requests and the first page of every nested connection; a repository
with more pull requests is paged on its own, a nested connection that overflows is read to its
end by `node(id:)` follow-ups. Flow metrics are only right on complete data, so a pull request
is stored only once every connection is read, or fails as an item with the reason.

An incremental run asks GitHub's search what changed since the cut-off (`user:OWNER is:pr
updated:>=T`, ids only: one point and one request when nothing changed), split by `updated:`
ranges past the search's 1 000-result cap, and refetches those pull requests completely by id,
so an OPEN pull request merged since is MERGED after the next run. Repositories of this run that
have no pull requests stored yet (new, transferred in, or wanted since) are collected in full.

Extractor/convertor: a payload becomes a `pull_requests` row plus its child rows; a complete
refetch replaces the children (commits rebased away and deleted comments leave). Embedding:
title and body.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..github import QueryTimedOut
from ..github.graphql import RATE_LIMIT_FIELDS, Result
from ..store import db
from ..store.db import pull_request_comments, pull_request_commits, pull_request_reviews, pull_requests, repositories
from . import Batch, ExtractContext, ParentItem, RowContext, collect
from .repositories import parse_time

log = logging.getLogger(__name__)

STEP_NAME = "github_pull_requests"
DISPLAY_NAME = "Pull Requests"
ORDER = 2
DEPENDS_ON = "github_repositories"
TABLE = pull_requests
TABLES = (pull_requests, pull_request_commits, pull_request_reviews, pull_request_comments)
EMBED_COLUMNS = ("title", "body")
KEY = ("tenant_id", "integration_id", "external_id")

REPOSITORIES_PER_QUERY = 20
PULLS_FIRST = 10
PULLS_PAGE = 25
PULLS_PER_REFETCH = 10
SEARCH_CAP = 1000
# GitHub charges a nested connection by how many parents it has, not by its `first`: 50 commits
# per pull request cost what 20 do, and save the follow-ups. Threads multiply the connection
# below them (their comments), so they stay few per page.
NESTED_FIRST = 50
THREADS_FIRST = 5
THREAD_COMMENTS_FIRST = 20
# Follow-up pages: 100 nodes, GitHub's most; 50 threads, each with its first comments, a page.
REST_PAGE = 100
THREADS_PAGE = 50
STATES = ("OPEN", "CLOSED", "MERGED")
REVIEW_STATES = ("APPROVED", "CHANGES_REQUESTED", "COMMENTED", "DISMISSED", "PENDING")
EMBED_BODY_CHARS = 2000

# ----- queries: constants, data only in variables -------------------------------------------

_PAGE = "totalCount pageInfo { hasNextPage endCursor }"
COMMIT = ("fragment Commit on PullRequestCommit { id commit { oid messageHeadline additions deletions "
          "authoredDate committedDate author { name email user { login } } committer { name } } }")
REVIEW = "fragment Review on PullRequestReview { id state body submittedAt author { login } commit { oid } }"
ISSUE_COMMENT = "fragment IssueComment on IssueComment { id body createdAt updatedAt author { login } }"
REVIEW_COMMENT = ("fragment ReviewComment on PullRequestReviewComment { id body createdAt updatedAt path line "
                  "author { login } pullRequestReview { id } replyTo { id } }")
THREAD = (f"fragment Thread on PullRequestReviewThread {{ id isResolved comments(first: {THREAD_COMMENTS_FIRST}) "
          f"{{ {_PAGE} nodes {{ ...ReviewComment }} }} }}")
PULL_REQUEST = f"""fragment PullRequest on PullRequest {{
  id databaseId number title body url state isDraft createdAt updatedAt closedAt mergedAt
  additions deletions changedFiles reviewDecision baseRefName headRefName
  author {{ login }} mergedBy {{ login }} mergeCommit {{ oid }} repository {{ databaseId }}
  commits(first: {NESTED_FIRST}) {{ {_PAGE} nodes {{ ...Commit }} }}
  reviews(first: {NESTED_FIRST}) {{ {_PAGE} nodes {{ ...Review }} }}
  comments(first: {NESTED_FIRST}) {{ {_PAGE} nodes {{ ...IssueComment }} }}
  reviewThreads(first: {THREADS_FIRST}) {{ {_PAGE} nodes {{ ...Thread }} }}
}}"""
_PULL_REQUEST_FRAGMENTS = "\n".join((PULL_REQUEST, COMMIT, REVIEW, ISSUE_COMMENT, THREAD, REVIEW_COMMENT))
_ORDER = "orderBy: {field: UPDATED_AT, direction: DESC}"

REPOSITORIES = f"""query PullRequestsOfRepositories($ids: [ID!]!, $first: Int!) {{
  {RATE_LIMIT_FIELDS}
  nodes(ids: $ids) {{ ... on Repository {{ databaseId nameWithOwner
    pullRequests(first: $first, {_ORDER}) {{ pageInfo {{ hasNextPage endCursor }} nodes {{ ...PullRequest }} }} }} }}
}}
{_PULL_REQUEST_FRAGMENTS}"""

REPOSITORY_PAGE = f"""query PullRequestsPage($id: ID!, $first: Int!, $after: String) {{
  {RATE_LIMIT_FIELDS}
  node(id: $id) {{ ... on Repository {{
    pullRequests(first: $first, after: $after, {_ORDER}) {{
      pageInfo {{ hasNextPage endCursor }} nodes {{ ...PullRequest }} }} }} }}
}}
{_PULL_REQUEST_FRAGMENTS}"""

PULL_REQUESTS = f"""query PullRequestsById($ids: [ID!]!) {{
  {RATE_LIMIT_FIELDS}
  nodes(ids: $ids) {{ ...PullRequest }}
}}
{_PULL_REQUEST_FRAGMENTS}"""


# A follow-up query reads the next page of every connection still open of up to so many nodes at
# once: one aliased `node(id:)` slot per pull request (`n0`, `n1`, ...) selecting all four of its
# connections, and per review thread its comments, each connection with its own `first` and
# cursor in variables; `first` is 0 (the default) for a connection already read, and GitHub
# neither fills nor charges what lies below a connection of 0 nodes. GitHub charges a query the
# connections it could fill over 100, at least 1 point: a slot is 5 connections, plus 1 per thread
# for their comments when it asks for a page of threads, so 20 slots cost 1 point (2 000 nodes at
# most without threads) and 20 slots all reading threads 11 points and 29 000 nodes, far under
# the 500 000-node limit. A batch GitHub times out on is asked again in halves.
FOLLOW_UPS = {
    # kind (the field's name in the answer): (type of the node, its connection, page size, fragment)
    "commits": ("PullRequest", "commits", REST_PAGE, "Commit"),
    "reviews": ("PullRequest", "reviews", REST_PAGE, "Review"),
    "comments": ("PullRequest", "comments", REST_PAGE, "IssueComment"),
    "reviewThreads": ("PullRequest", "reviewThreads", THREADS_PAGE, "Thread"),
    "threadComments": ("PullRequestReviewThread", "comments", REST_PAGE, "ReviewComment"),
}
SLOTS_PER_QUERY = 20


def _rest_of(slots: int) -> str:
    """The follow-up that reads the next page of the open connections of `slots` nodes; its text
    depends on the count only, the ids, page sizes and cursors are variables."""
    variables = ", ".join(f"$id{i}: ID!, " + ", ".join(f"${kind}{i}: Int = 0, ${kind}After{i}: String"
                                                       for kind in FOLLOW_UPS) for i in range(slots))

    def selections(owner: str, i: int) -> str:
        return " ".join(f"{kind}: {field}(first: ${kind}{i}, after: ${kind}After{i}) "
                        f"{{ pageInfo {{ hasNextPage endCursor }} nodes {{ ...{spread} }} }}"
                        for kind, (of, field, _, spread) in FOLLOW_UPS.items() if of == owner)

    owners = dict.fromkeys(of for of, *_ in FOLLOW_UPS.values())
    aliases = "\n  ".join(
        f"n{i}: node(id: $id{i}) {{ " + " ".join(f"... on {owner} {{ {selections(owner, i)} }}" for owner in owners)
        + " }" for i in range(slots))
    fragments = "\n".join((COMMIT, REVIEW, ISSUE_COMMENT, THREAD, REVIEW_COMMENT))
    return f"query RestOf{slots}({variables}) {{\n  {RATE_LIMIT_FIELDS}\n  {aliases}\n}}\n{fragments}"


REST = {slots: _rest_of(slots) for slots in range(1, SLOTS_PER_QUERY + 1)}

SEARCH = f"""query ChangedPullRequests($q: String!, $after: String) {{
  {RATE_LIMIT_FIELDS}
  search(type: ISSUE, query: $q, first: 100, after: $after) {{
    issueCount pageInfo {{ hasNextPage endCursor }}
    nodes {{ ... on PullRequest {{ id updatedAt repository {{ databaseId }} }} }} }}
}}"""


def key(payload: dict[str, Any]) -> str:
    return str(payload["id"])


def parent_key(payload: dict[str, Any]) -> str:
    return str(payload["repository"]["databaseId"])


# ----- collector ------------------------------------------------------------------------------

class Incomplete(Exception):
    """A nested connection could not be read to its end: the pull request is not stored as complete."""


def extract(ctx: ExtractContext) -> Iterator[Batch]:
    """Complete pull-request payloads of this run, each pull request at most once."""
    if not ctx.settings["pull_requests"]:
        log.info("pull requests are turned off for this integration (settings: \"pull_requests\": false)")
        return
    seen: set[str] = set()
    if ctx.full:
        yield from _collect(ctx, ctx.parents(), seen)
    else:
        changed = _changed(ctx)
        parents = list(ctx.parents())
        with ctx.engine.connect() as conn:
            known = _active_repositories(conn, ctx)
            collected = _repositories_with_pull_requests(conn, ctx)
            stored = _stored_versions(conn, ctx, [pull_id for pull_id, _, _ in changed])
        wanted = [pull_id for pull_id, repo, updated in changed
                  if repo in known and (pull_id not in stored or stored[pull_id] < _moment(updated))]
        log.info("search found %d pull requests updated since %s; %d of them changed since stored",
                 len(changed), ctx.cutoff.isoformat() if ctx.cutoff else "ever", len(wanted))
        yield from _refetch(ctx, wanted, seen)
        yield from _collect(ctx, [p for p in parents if p.external_id not in collected], seen)
    yield from _refetch(ctx, sorted(ctx.retry_ids - seen), seen)


def _collect(ctx: ExtractContext, parents: Iterable[ParentItem], seen: set[str]) -> Iterator[Batch]:
    """Every pull request of these repositories, a batch per query of repositories; the queries
    of different repositories go side by side, as many as the token's pacer allows."""
    fetch = functools.partial(_read_repositories, ctx, seen=seen)
    for payloads in collect.in_chunks(ctx, parents, fetch, REPOSITORIES_PER_QUERY):
        if payloads:
            yield Batch(payloads)


def _read_repositories(ctx: ExtractContext, chunk: list[ParentItem], seen: set[str]) -> list[dict[str, Any]]:
    """The complete pull requests of one query's repositories: their first pages, then each one's further pages."""
    pulls: list[tuple[dict[str, Any], list[str]]] = []
    for parent, connection, errors in _first_pages(ctx, chunk):
        pulls += [(p, errors.get(i, [])) for i, p in enumerate(connection["nodes"]) if p]
        further = {"nodes": [], "pageInfo": connection["pageInfo"]}
        pulls += [(p, []) for p in collect.to_end(further, functools.partial(_repository_page, ctx, parent))]
    payloads = _finished(ctx, pulls, seen)
    ctx.count("repositories_read", len(chunk))
    return payloads


def _query(ctx: ExtractContext, document: str, variables: dict[str, Any]) -> Result:
    """One query of this step; the nodes GitHub counted add up in the run's stats."""
    result: Result = ctx.client.graphql(document, variables)
    ctx.count("graphql_nodes", result.nodes)
    return result


def _first_pages(
    ctx: ExtractContext, chunk: list[ParentItem]
) -> list[tuple[ParentItem, dict[str, Any], dict[int, list[str]]]]:
    """Each repository's first page of pull requests, with the errors GitHub reported per pull
    request; a query that times out is asked again for half the repositories."""
    try:
        result = _query(ctx, REPOSITORIES, {"ids": [p.payload["node_id"] for p in chunk], "first": PULLS_FIRST})
    except QueryTimedOut:
        if len(chunk) == 1:
            raise
        half = len(chunk) // 2
        return _first_pages(ctx, chunk[:half]) + _first_pages(ctx, chunk[half:])
    found = []
    for i, parent in enumerate(chunk):
        node = (result.data.get("nodes") or [None] * len(chunk))[i]
        if not node or node.get("pullRequests") is None:
            error = result.error_at("nodes", i) or {}
            ctx.warn(f"the pull requests of {parent.payload.get('full_name', parent.external_id)} were not read: "
                     f"GitHub answered {error.get('type', 'no data')}: {error.get('message', 'nothing')}")
            continue
        found.append((parent, node["pullRequests"], _errors_by_pull(result, ("nodes", i, "pullRequests", "nodes"))))
    return found


def _repository_page(ctx: ExtractContext, parent: ParentItem, after: str) -> dict[str, Any]:
    """A further page of one repository's pull requests, smaller when GitHub times out on it."""
    size = PULLS_PAGE
    while True:
        try:
            variables = {"id": parent.payload["node_id"], "first": size, "after": after}
            result = _query(ctx, REPOSITORY_PAGE, variables)
            break
        except QueryTimedOut:
            if size == 1:
                raise
            size = max(1, size // 2)
    node = result.data.get("node") or {}
    if node.get("pullRequests") is None:
        raise Incomplete(f"the pull requests of {parent.payload.get('full_name')} stopped after the first page")
    return dict(node["pullRequests"])


def _refetch(ctx: ExtractContext, ids: list[str], seen: set[str]) -> Iterator[Batch]:
    """These pull requests again, complete, by node id, ten to a query and queries side by side."""
    fetch = functools.partial(_read_pull_requests, ctx, seen=seen)
    for payloads in collect.in_chunks(ctx, [i for i in ids if i not in seen], fetch, PULLS_PER_REFETCH):
        if payloads:
            yield Batch(payloads)


def _read_pull_requests(ctx: ExtractContext, chunk: list[str], seen: set[str]) -> list[dict[str, Any]]:
    result = _query(ctx, PULL_REQUESTS, {"ids": chunk})
    errors = _errors_by_pull(result, ("nodes",))
    pulls = []
    for i, (pull_id, node) in enumerate(zip(chunk, result.data.get("nodes") or [], strict=False)):
        if node:
            pulls.append((node, errors.get(i, [])))
        else:
            log.warning("pull request %s is no longer on GitHub: %s", pull_id, "; ".join(errors.get(i, ["gone"])))
    return _finished(ctx, pulls, seen)


def _finished(
    ctx: ExtractContext, pulls: list[tuple[dict[str, Any], list[str]]], seen: set[str]
) -> list[dict[str, Any]]:
    """The pull requests not met before in this run, each with its nested connections read to the end.

    One whose rest cannot be read is still stored, marked incomplete: its transform then fails
    it with the reason, and the next run fetches it again.
    """
    out = []
    for pull, errors in pulls:
        if not ctx.first_time(seen, pull["id"]):
            continue
        if errors:
            pull["errors"] = list(errors)
        out.append(pull)
    _read_nested(ctx, out)
    for pull in out:
        _note_commit_cap(ctx, pull)
        if pull.get("errors"):
            log.warning("GitHub reported errors inside pull request %s (kept what it returned): %s",
                        pull.get("url"), "; ".join(pull["errors"]))
    ctx.count("pull_requests", len(out))
    return out


COMMITS_CAP = 250  # REST lists at most 250 commits of a pull request; GitHub may stop there


def _note_commit_cap(ctx: ExtractContext, pull: dict[str, Any]) -> None:
    """A commits connection read to its end with fewer than its totalCount (above 250): GitHub
    lists no more, so what it gave is kept, the item is not failed, and the reason is kept on
    the item (`notes` in its raw payload) and on the run (`ctx.note`, not holding the cut-off)."""
    commits = pull.get("commits") or {}
    stored, total = len(commits.get("nodes") or []), commits.get("totalCount") or 0
    if pull.get("incomplete") or total <= COMMITS_CAP or stored >= total:
        return
    where = urlsplit(pull.get("url") or "").path.strip("/").split("/")
    name = f"{where[0]}/{where[1]}#{pull.get('number')}" if len(where) >= 2 else str(pull.get("id"))
    message = f"{name}: GitHub lists at most {stored} of its {total} commits; {stored} stored"
    pull.setdefault("notes", []).append(message)
    ctx.note(message)


PULL_CONNECTIONS = ("commits", "reviews", "comments", "reviewThreads")


@dataclass
class _Open:
    """A nested connection of a pull request still being read: its nodes so far and the cursor
    of its next page (None once read to the end)."""

    pull: dict[str, Any]
    kind: str
    node_id: str
    connection: dict[str, Any]
    after: str | None


def _read_nested(ctx: ExtractContext, pulls: list[dict[str, Any]]) -> None:
    """Complete every nested connection of these pull requests in place. Only those that overflow
    cost a request, and those of all the pull requests are asked for together, every open
    connection of a pull request (and the comments of each of its threads) in one slot, several
    slots to a query (`REST`), round after round until none has a next page; the comments of the
    threads a follow-up finds are read on from the next round."""
    opened = [_opened(pull, field, pull["id"], pull, field) for pull in pulls for field in PULL_CONNECTIONS]
    opened += [_opened(pull, "threadComments", thread["id"], thread, "comments")
               for pull in pulls for thread in pull["reviewThreads"]["nodes"]]
    _to_end(ctx, [o for o in opened if o is not None])


def _opened(pull: dict[str, Any], kind: str, node_id: str, owner: dict[str, Any], field: str) -> _Open | None:
    """`owner[field]` as the nodes read so far (null nodes left out); an `_Open` if it has more."""
    first = owner.get(field)
    if first is None:
        owner[field] = {"totalCount": 0, "nodes": []}
        return None
    owner[field] = {"totalCount": first["totalCount"], "nodes": [n for n in first["nodes"] if n]}
    info = first["pageInfo"]
    return _Open(pull, kind, node_id, owner[field], info["endCursor"]) if info["hasNextPage"] else None


def _to_end(ctx: ExtractContext, opened: list[_Open]) -> None:
    """Read these connections to their end: each round asks for the next page of every one still
    open, the connections of a node in one slot, up to `SLOTS_PER_QUERY` slots per query. A pull
    request found incomplete is not read on."""
    while opened := [o for o in opened if o.after is not None and not o.pull.get("incomplete")]:
        slots: dict[str, list[_Open]] = {}
        for item in opened:
            slots.setdefault(item.node_id, []).append(item)
        found: list[_Open] = []
        for batch in collect.batched(list(slots.values()), SLOTS_PER_QUERY):
            found += _follow_up(ctx, batch)
        opened += found


def _follow_up(ctx: ExtractContext, batch: list[list[_Open]]) -> list[_Open]:
    """The next page of each open connection of the nodes of `batch`, in one query; one GitHub
    times out on is asked again in halves. A connection GitHub gives no page for marks its pull
    request incomplete, with the reason; errors beside a page are kept on the pull request with
    the page. Returns the comments still to read of the threads these pages brought."""
    variables: dict[str, Any] = {}
    for i, slot in enumerate(batch):
        variables[f"id{i}"] = slot[0].node_id
        for item in slot:
            variables.update({f"{item.kind}{i}": FOLLOW_UPS[item.kind][2], f"{item.kind}After{i}": item.after})
    try:
        result = _query(ctx, REST[len(batch)], variables)
    except QueryTimedOut:
        if len(batch) == 1:
            raise
        half = len(batch) // 2
        return _follow_up(ctx, batch[:half]) + _follow_up(ctx, batch[half:])
    found: list[_Open] = []
    for i, slot in enumerate(batch):
        alias = f"n{i}"
        node = result.data.get(alias) or {}
        paths = [(tuple(e.get("path") or ()), e) for e in result.errors]
        whole = [e for path, e in paths if path == (alias,)]
        for position, item in enumerate(slot):
            page = node.get(item.kind)
            mine = [e for path, e in paths if path[:2] == (alias, item.kind)]
            item.after = None
            if page is None:
                error = (mine + whole)[0].get("message") if mine + whole else "no data"
                if not item.pull.get("incomplete"):
                    item.pull["incomplete"] = (f"its {FOLLOW_UPS[item.kind][1]} stopped before the end of "
                                               f"{item.connection['totalCount']}: {error}")
                continue
            new = [n for n in page["nodes"] if n]
            item.connection["nodes"] += new
            if page["pageInfo"]["hasNextPage"]:
                item.after = page["pageInfo"]["endCursor"]
            if item.kind == "reviewThreads":
                found += [o for thread in new
                          if (o := _opened(item.pull, "threadComments", thread["id"], thread, "comments"))]
            kept = mine + (whole if position == 0 else [])
            if kept:
                item.pull.setdefault("errors", []).extend(
                    f"{'.'.join(map(str, [item.node_id, *(e.get('path') or ())[1:]]))}: {e.get('message')}"
                    for e in kept)
    return found


def _errors_by_pull(result: Result, prefix: tuple[str | int, ...]) -> dict[int, list[str]]:
    """GitHub's errors inside the pull requests at `prefix + (index, ...)`, by index."""
    found: dict[int, list[str]] = {}
    for error in result.errors:
        path = tuple(error.get("path") or ())
        if len(path) > len(prefix) and path[: len(prefix)] == prefix and isinstance(path[len(prefix)], int):
            found.setdefault(path[len(prefix)], []).append(f"{'.'.join(map(str, path))}: {error.get('message')}")
    return found


def _changed(ctx: ExtractContext) -> list[tuple[str, str, str]]:
    """(pull request id, repository id, updatedAt) of what the search finds updated since the cut-off."""
    low = ctx.cutoff or dt.datetime(2008, 1, 1, tzinfo=dt.UTC)
    high = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    return list(_searched(ctx, low.replace(microsecond=0), high.replace(microsecond=0), open_ended=True))


def _searched(ctx: ExtractContext, low: dt.datetime, high: dt.datetime, *, open_ended: bool = False
              ) -> Iterator[tuple[str, str, str]]:
    """Every match in [low, high]; a range holding more than the search serves is split in two."""
    span = f">={_iso(low)}" if open_ended else f"{_iso(low)}..{_iso(high)}"
    query = f"user:{ctx.integration['owner']} is:pr updated:{span}"
    result = _query(ctx, SEARCH, {"q": query, "after": None})
    search = result.data["search"]
    if search["issueCount"] > SEARCH_CAP and high - low > dt.timedelta(seconds=1):
        middle = low + (high - low) / 2
        middle = middle.replace(microsecond=0)
        yield from _searched(ctx, low, middle)
        yield from _searched(ctx, middle + dt.timedelta(seconds=1), high)
        return
    if search["issueCount"] > SEARCH_CAP:
        ctx.warn(f"more than {SEARCH_CAP} pull requests were updated at {_iso(low)}; some were not refetched")
    while True:
        for node in search["nodes"]:
            if node and node.get("id"):
                yield node["id"], str(node["repository"]["databaseId"]), node["updatedAt"]
        if not search["pageInfo"]["hasNextPage"]:
            return
        result = _query(ctx, SEARCH, {"q": query, "after": search["pageInfo"]["endCursor"]})
        search = result.data["search"]


def _moment(text: str) -> dt.datetime:
    moment = parse_time(text)
    if moment is None:
        raise ValueError("GitHub's search gave a pull request without updatedAt")
    return moment


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _active_repositories(conn: Connection, ctx: ExtractContext) -> set[str]:
    return set(conn.execute(sa.select(repositories.c.external_id).where(
        repositories.c.tenant_id == ctx.tenant_id, repositories.c.integration_id == ctx.integration["id"],
        repositories.c.active.is_(True))).scalars())


def _stored_versions(conn: Connection, ctx: ExtractContext, ids: list[str]) -> dict[str, dt.datetime]:
    """GitHub's updatedAt of the pull requests stored: the cut-off's overlap finds some of them
    again, and a pull request not changed since needs no refetch."""
    found: dict[str, dt.datetime] = {}
    for chunk in collect.batched(ids, 500):
        found.update(conn.execute(sa.select(pull_requests.c.external_id, pull_requests.c.gh_updated_at).where(
            pull_requests.c.tenant_id == ctx.tenant_id, pull_requests.c.integration_id == ctx.integration["id"],
            pull_requests.c.external_id.in_(chunk), pull_requests.c.gh_updated_at.is_not(None))).all())
    return found


def _repositories_with_pull_requests(conn: Connection, ctx: ExtractContext) -> set[str]:
    return set(conn.execute(
        sa.select(repositories.c.external_id).distinct()
        .join(pull_requests, pull_requests.c.repository_id == repositories.c.id)
        .where(repositories.c.tenant_id == ctx.tenant_id, repositories.c.integration_id == ctx.integration["id"])
    ).scalars())


# ----- extractor / convertor ------------------------------------------------------------------

def _login(actor: dict[str, Any] | None) -> str | None:
    """A deleted account is `null` in GraphQL: stored as NULL, never a crash."""
    return None if not actor else actor.get("login")


def to_row(payload: dict[str, Any], ctx: RowContext) -> dict[str, Any]:
    """One complete payload as a `pull_requests` row, its children under `children`."""
    if payload.get("incomplete"):
        raise ValueError(f"pull request read incompletely: {payload['incomplete']}")
    if payload["state"] not in STATES:
        raise ValueError(f"unknown pull request state {payload['state']!r} (known: {', '.join(STATES)})")
    author = _login(payload.get("author"))
    scope = {"tenant_id": ctx["tenant_id"], "integration_id": ctx["integration_id"]}
    commits = [_commit(n, scope) for n in payload["commits"]["nodes"]]
    reviews = [_review(n, scope) for n in payload["reviews"]["nodes"]]
    comments = [_issue_comment(n, scope) for n in payload["comments"]["nodes"]] + [
        _review_comment(c, thread, scope) for thread in payload["reviewThreads"]["nodes"]
        for c in thread["comments"]["nodes"]]
    submitted = [(r["submitted_at"], r) for r in reviews if r["submitted_at"] is not None]
    return {
        **scope,
        "external_id": str(payload["id"]),
        "parent_external_id": ctx.get("parent_external_id") or parent_key(payload),
        "database_id": payload.get("databaseId"),
        "number": int(payload["number"]),
        "title": payload["title"],
        "body": payload.get("body"),
        "url": payload.get("url"),
        "state": payload["state"],
        "is_draft": bool(payload.get("isDraft")),
        "author_login": author,
        "merged_by_login": _login(payload.get("mergedBy")),
        "base_ref": payload.get("baseRefName"),
        "head_ref": payload.get("headRefName"),
        "merge_commit_sha": (payload.get("mergeCommit") or {}).get("oid"),
        "additions": payload.get("additions"),
        "deletions": payload.get("deletions"),
        "changed_files": payload.get("changedFiles"),
        "commits_total": payload["commits"]["totalCount"],
        "reviews_total": payload["reviews"]["totalCount"],
        "comments_total": payload["comments"]["totalCount"],
        "review_decision": payload.get("reviewDecision"),
        "gh_created_at": parse_time(payload.get("createdAt")),
        "gh_updated_at": parse_time(payload.get("updatedAt")),
        "closed_at": parse_time(payload.get("closedAt")),
        "merged_at": parse_time(payload.get("mergedAt")),
        "first_commit_at": min((c["authored_at"] for c in commits if c["authored_at"]), default=None),
        "first_review_at": min((at for at, r in submitted if r["author_login"] is None or r["author_login"] != author),
                               default=None),
        "first_approval_at": min((at for at, r in submitted if r["state"] == "APPROVED"), default=None),
        "fetched_at": ctx.get("fetched_at"),
        "children": {"commits": commits, "reviews": reviews, "comments": comments},
    }


def _commit(node: dict[str, Any], scope: dict[str, Any]) -> dict[str, Any]:
    commit = node["commit"]
    author = commit.get("author") or {}
    return {**scope, "external_id": node["id"], "sha": commit["oid"], "message_headline": commit.get("messageHeadline"),
            "author_name": author.get("name"), "author_email": author.get("email"),
            "author_login": _login(author.get("user")), "authored_at": parse_time(commit.get("authoredDate")),
            "committer_name": (commit.get("committer") or {}).get("name"),
            "committed_at": parse_time(commit.get("committedDate")),
            "additions": commit.get("additions"), "deletions": commit.get("deletions")}


def _review(node: dict[str, Any], scope: dict[str, Any]) -> dict[str, Any]:
    if node["state"] not in REVIEW_STATES:
        raise ValueError(f"unknown review state {node['state']!r} (known: {', '.join(REVIEW_STATES)})")
    return {**scope, "external_id": node["id"], "state": node["state"], "author_login": _login(node.get("author")),
            "body": node.get("body"), "submitted_at": parse_time(node.get("submittedAt")),
            "commit_sha": (node.get("commit") or {}).get("oid")}


def _issue_comment(node: dict[str, Any], scope: dict[str, Any]) -> dict[str, Any]:
    return {**scope, "external_id": node["id"], "kind": "issue", "author_login": _login(node.get("author")),
            "body": node.get("body"), "gh_created_at": parse_time(node.get("createdAt")),
            "gh_updated_at": parse_time(node.get("updatedAt")), "path": None, "line": None,
            "thread_external_id": None, "review_external_id": None, "reply_to_external_id": None,
            "thread_resolved": None}


def _review_comment(node: dict[str, Any], thread: dict[str, Any], scope: dict[str, Any]) -> dict[str, Any]:
    return {**scope, "external_id": node["id"], "kind": "review", "author_login": _login(node.get("author")),
            "body": node.get("body"), "gh_created_at": parse_time(node.get("createdAt")),
            "gh_updated_at": parse_time(node.get("updatedAt")), "path": node.get("path"), "line": node.get("line"),
            "thread_external_id": thread["id"], "review_external_id": (node.get("pullRequestReview") or {}).get("id"),
            "reply_to_external_id": (node.get("replyTo") or {}).get("id"), "thread_resolved": thread.get("isResolved")}


CHILD_TABLES = {"commits": pull_request_commits, "reviews": pull_request_reviews, "comments": pull_request_comments}


def upsert(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Upsert the pull requests, then replace the children of each one this batch holds the newest
    version of; a late older payload changes neither the row nor its children."""
    by_repository = _repository_ids(conn, rows)
    now = db.utcnow()
    heads = []
    for row in rows:
        head = {k: v for k, v in row.items() if k not in ("children", "parent_external_id")}
        head.update(repository_id=by_repository.get(row["parent_external_id"]), last_synced_at=now)
        heads.append(head)
    db.upsert(conn, pull_requests, heads, KEY, newest=("gh_updated_at", "fetched_at"))
    stored = {r.external_id: r for r in conn.execute(
        sa.select(pull_requests.c.id, pull_requests.c.external_id, pull_requests.c.gh_updated_at,
                  pull_requests.c.fetched_at)
        .where(pull_requests.c.tenant_id == rows[0]["tenant_id"],
               pull_requests.c.integration_id == rows[0]["integration_id"],
               pull_requests.c.external_id.in_([r["external_id"] for r in rows])))}
    current = {}
    for row in rows:
        found = stored.get(row["external_id"])
        if found is not None and (found.gh_updated_at, found.fetched_at) == (row["gh_updated_at"], row["fetched_at"]):
            current[found.id] = row
    if not current:
        return
    for name, table in CHILD_TABLES.items():
        conn.execute(table.delete().where(table.c.pull_request_id.in_(list(current))))
        children = [{**child, "pull_request_id": pull_id, "last_synced_at": now}
                    for pull_id, row in current.items() for child in _unique(row["children"][name], name)]
        if children:
            db.insert(conn, table, children)


def _unique(children: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """A pull request lists a commit once; should a payload repeat one, the first stays."""
    field = "sha" if name == "commits" else "external_id"
    return list({c[field]: c for c in reversed(children)}.values())[::-1]


def _repository_ids(conn: Connection, rows: list[dict[str, Any]]) -> dict[str, int]:
    wanted = sorted({r["parent_external_id"] for r in rows})
    return dict(conn.execute(sa.select(repositories.c.external_id, repositories.c.id).where(
        repositories.c.tenant_id == rows[0]["tenant_id"],
        repositories.c.integration_id == rows[0]["integration_id"],
        repositories.c.external_id.in_(wanted))).all())


def embed_text(row: dict[str, Any]) -> str:
    """Title and the start of the body: what someone looking for a change would search by."""
    return f"{row['title']}\n{(row.get('body') or '')[:EMBED_BODY_CHARS]}".strip()
