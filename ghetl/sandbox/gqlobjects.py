"""GraphQL objects of the sandbox: repositories, pull requests and their children as resolvable dicts.

graphql-core's default resolver reads a dict key and calls it when it is callable, so every
object is a dict whose nested connections are functions of the field arguments: nothing below
a field is built unless the query selects it.  Connections page with keyset cursors (the sort
key of the edge, see ``nodeids``) and enforce GitHub's pagination rules where GitHub does, in
the resolver: an error with the connection's path, and ``null`` in ``data`` up to the nearest
nullable parent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from graphql import FieldNode, FragmentSpreadNode, GraphQLError, GraphQLResolveInfo, InlineFragmentNode

from .data import Owner, Repo
from .limits import Bucket
from .nodeids import cursor, node_id, parse_cursor
from .pulls import Commit, IssueComment, Person, PullRequest, Review, ReviewComment, ReviewThread, served_commits
from .shapes import iso

if TYPE_CHECKING:
    from .sandbox import Sandbox

MAX_PAGE = 100
ORDER_KEYS: dict[str, Callable[[PullRequest], Any]] = {
    "CREATED_AT": lambda p: [iso_offset(p.created_at), p.id],
    "UPDATED_AT": lambda p: [iso_offset(p.updated_at), p.id],
    "COMMENTS": lambda p: [len(p.comments), p.id],
}


def iso_offset(moment: datetime) -> str:
    """Cursor sort keys carry the timestamp with its offset, as GitHub's do (2024-09-13T19:23:09+02:00)."""
    return moment.replace(microsecond=0).isoformat()


def gh_error(kind: str | None, message: str) -> GraphQLError:
    """A resolver error; the endpoint renders ``type`` first, as GitHub does (when GitHub gives one)."""
    return GraphQLError(message, extensions={"type": kind} if kind else None)


@dataclass
class Context:
    """Per-request state the resolvers share."""

    sb: Sandbox
    cost: int
    nodes: int
    bucket: Bucket


# ----- connections ----------------------------------------------------------------------------

def _selects_nodes(info: GraphQLResolveInfo) -> bool:
    """Whether ``nodes`` or ``edges`` is selected: counting alone (totalCount) needs no first/last."""
    def walk(selection_set: Any) -> bool:
        for selection in (selection_set.selections or ()) if selection_set else ():
            if isinstance(selection, FieldNode) and selection.name.value in ("nodes", "edges"):
                return True
            if isinstance(selection, InlineFragmentNode) and walk(selection.selection_set):
                return True
            if isinstance(selection, FragmentSpreadNode) and walk(info.fragments[selection.name.value].selection_set):
                return True
        return False
    return any(walk(node.selection_set) for node in info.field_nodes)


def _position(keys: list[list], raw: str, descending: bool, inclusive: bool) -> int:
    """How many items come before (``inclusive``: up to and including) the cursor's key."""
    try:
        key = parse_cursor(raw)
        if descending:
            return sum(1 for k in keys if (k >= key if inclusive else k > key))
        return sum(1 for k in keys if (k <= key if inclusive else k < key))
    except (ValueError, TypeError):
        raise invalid_cursor(raw) from None


def check_page_arguments(info: GraphQLResolveInfo, args: dict[str, Any]) -> None:
    """MISSING_PAGINATION_BOUNDARIES, EXCESSIVE_PAGINATION and the other page-size refusals, in GitHub's words."""
    name = info.field_name
    if args.get("first") is None and args.get("last") is None and _selects_nodes(info):
        raise gh_error("MISSING_PAGINATION_BOUNDARIES",
                       f"You must provide a `first` or `last` value to properly paginate the `{name}` connection.")
    if args.get("first") is not None and args.get("last") is not None:
        raise gh_error(None, f"Passing both `first` and `last` to paginate the `{name}` connection is not supported.")
    for argument in ("first", "last"):
        value = args.get(argument)
        if value is not None and value > MAX_PAGE:
            raise gh_error("EXCESSIVE_PAGINATION", f"Requesting {value} records on the `{name}` connection exceeds "
                                                   f"the `{argument}` limit of {MAX_PAGE} records.")
        if value is not None and value < 0:
            raise gh_error(None, f"`{argument}` on the `{name}` connection cannot be less than zero.")


def connection(info: GraphQLResolveInfo, args: dict[str, Any], items: Sequence[Any], key: Callable[[Any], list],
               render: Callable[[Any], dict], descending: bool = False, total: int | None = None) -> dict[str, Any]:
    """One page of ``items`` (already in connection order) as a Relay connection with keyset cursors;
    ``total`` is its ``totalCount`` when that counts more than the connection lists."""
    check_page_arguments(info, args)
    keys = [key(item) for item in items]
    start = _position(keys, args["after"], descending, True) if args.get("after") else 0
    end = _position(keys, args["before"], descending, False) if args.get("before") else len(items)
    return page(items, args, start, end, lambda i: cursor(keys[i]), render, total)


def invalid_cursor(raw: str) -> GraphQLError:
    return gh_error("INVALID_CURSOR_ARGUMENTS", f"`{raw}` does not appear to be a valid cursor.")


def page(items: Sequence[Any], args: dict[str, Any], start: int, end: int, cursor_at: Callable[[int], str],
         render: Callable[[Any], dict], total: int | None = None) -> dict[str, Any]:
    """The items between the cursors (``start`` to ``end``), cut to ``first`` or ``last``."""
    end = max(start, min(end, len(items)))
    if args.get("first") is not None:
        end = min(end, start + args["first"])
    if args.get("last") is not None:
        start = max(start, end - args["last"])
    shown = range(start, end)
    return {
        "totalCount": len(items) if total is None else total,
        "pageInfo": {"hasNextPage": end < len(items), "hasPreviousPage": start > 0,
                     "startCursor": cursor_at(start) if shown else None,
                     "endCursor": cursor_at(end - 1) if shown else None},
        "nodes": lambda info: [render(items[i]) for i in shown],
        "edges": lambda info: [{"cursor": cursor_at(i), "node": render(items[i])} for i in shown],
    }


def _by_id(item: Any) -> list:
    return [item.id]


# ----- actors ---------------------------------------------------------------------------------

def maybe_person(sb: Sandbox, who: Person | None) -> dict[str, Any] | None:
    """None for a deleted account, as GitHub answers ``author: null``."""
    return None if who is None else person(sb, who)


def person(sb: Sandbox, who: Person) -> dict[str, Any]:
    """A User or Bot."""
    web = sb.store.site.web
    path = f"/apps/{who.login.removesuffix('[bot]')}" if who.kind == "Bot" else f"/{who.login}"
    return {"__typename": who.kind, "id": who.node_id, "databaseId": who.id, "login": who.login,
            "name": who.name, "email": "", "createdAt": iso(who.created_at), "updatedAt": iso(who.created_at),
            "url": web + path, "resourcePath": path,
            "avatarUrl": lambda info, size=None: f"{sb.store.site.avatars}/u/{who.id}?v=4"}


def _owner_of(sb: Sandbox, repo: Repo) -> Owner:
    """Every repository's owner is in the store: a transfer to an unknown account creates it."""
    found = sb.store.owner(repo.owner)
    assert found is not None, repo.full_name
    return found


def owner(sb: Sandbox, account: Owner) -> dict[str, Any]:
    """An organization or user account of the sandbox (a RepositoryOwner)."""
    prefix = "O" if account.kind == "Organization" else "U"
    return {"__typename": account.kind, "id": node_id(prefix, account.id), "databaseId": account.id,
            "login": account.login, "name": account.name, "email": "", "createdAt": iso(account.created_at),
            "updatedAt": iso(account.updated_at), "url": f"{sb.store.site.web}/{account.login}",
            "resourcePath": f"/{account.login}",
            "avatarUrl": lambda info, size=None: f"{sb.store.site.avatars}/u/{account.id}?v=4",
            "repository": lambda info, name, followRenames=True: find_repository(sb, account.login, name,
                                                                                 followRenames)}


# ----- repositories and pull requests ---------------------------------------------------------

def find_repository(sb: Sandbox, login: str, name: str, follow_renames: bool = True) -> dict[str, Any] | None:
    store = sb.store
    with store.lock:
        repo = store.repo_by_name(login, name) or (store.redirect_for(login, name) if follow_renames else None)
        if repo is None or not store.can_see(repo, True):
            return None
        return repository(sb, repo)


def repository(sb: Sandbox, repo: Repo) -> dict[str, Any]:
    store = sb.store
    return {
        "__typename": "Repository", "id": node_id("R", repo.id), "databaseId": repo.id, "name": repo.name,
        "nameWithOwner": repo.full_name, "isPrivate": repo.private, "createdAt": iso(repo.created_at),
        "updatedAt": iso(repo.updated_at), "url": f"{store.site.web}/{repo.full_name}",
        "resourcePath": f"/{repo.full_name}",
        "owner": lambda info: owner(sb, _owner_of(sb, repo)),
        "pullRequest": lambda info, number: _pull_or_none(sb, repo, number),
        "pullRequests": lambda info, **args: _pull_requests(sb, repo, info, args),
    }


def _pull_or_none(sb: Sandbox, repo: Repo, number: int) -> dict[str, Any] | None:
    found = next((p for p in sb.pull_store.of(repo) if p.number == number), None)
    if found is None:
        raise gh_error("NOT_FOUND", f"Could not resolve to a PullRequest with the number of {number}.")
    return pull_request(sb, repo, found)


def _pull_requests(sb: Sandbox, repo: Repo, info: GraphQLResolveInfo, args: dict[str, Any]) -> dict[str, Any]:
    """Repository.pullRequests: states, baseRefName, headRefName filters; orderBy (default CREATED_AT ASC).

    Sandbox pull requests carry no labels, so a ``labels`` filter matches none.
    """
    order = args.get("orderBy") or {"field": "CREATED_AT", "direction": "ASC"}
    key = ORDER_KEYS[order["field"]]
    every = sb.pull_store.of(repo)
    with sb.store.lock:
        pulls = [p for p in every
                 if not args.get("labels") and (not args.get("states") or p.state in args["states"])
                 and (args.get("baseRefName") is None or p.base_ref == args["baseRefName"])
                 and (args.get("headRefName") is None or p.head_ref == args["headRefName"])]
        descending = order["direction"] == "DESC"
        pulls.sort(key=key, reverse=descending)
        return connection(info, args, pulls, key, lambda p: pull_request(sb, repo, p), descending)


def _association(sb: Sandbox, repo: Repo, who: Person | None) -> str:
    if who is None:
        return "NONE"
    if who.kind == "Bot":
        return "CONTRIBUTOR"
    return "MEMBER" if _owner_of(sb, repo).kind == "Organization" else "COLLABORATOR"


def pull_request(sb: Sandbox, repo: Repo, pull: PullRequest) -> dict[str, Any]:
    path = f"/{repo.full_name}/pull/{pull.number}"
    head = pull.commits[-1].oid if pull.commits else "0" * 40
    return {
        "__typename": "PullRequest", "id": pull.node_id, "databaseId": pull.id, "number": pull.number,
        "title": pull.title, "body": pull.body, "url": sb.store.site.web + path, "resourcePath": path,
        "state": pull.state, "isDraft": pull.is_draft, "closed": pull.state != "OPEN",
        "merged": pull.state == "MERGED", "author": maybe_person(sb, pull.author),
        "mergedBy": maybe_person(sb, pull.merged_by),
        "authorAssociation": _association(sb, repo, pull.author),
        "baseRefName": pull.base_ref, "headRefName": pull.head_ref, "headRefOid": head, "isCrossRepository": False,
        "headRepositoryOwner": lambda info: owner(sb, _owner_of(sb, repo)),
        "baseRefOid": _pseudo_oid(f"{repo.id}:{pull.base_ref}"),
        "mergeCommit": None if pull.merge_oid is None or pull.merged_at is None else _merge_commit(
            sb, repo, pull, pull.merge_oid, pull.merged_at),
        "additions": pull.additions, "deletions": pull.deletions, "changedFiles": pull.changed_files,
        "reviewDecision": pull.review_decision, "createdAt": iso(pull.created_at),
        "updatedAt": iso(pull.updated_at), "closedAt": iso(pull.closed_at), "mergedAt": iso(pull.merged_at),
        "repository": lambda info: repository(sb, repo),
        "commits": lambda info, **args: connection(
            info, args, list(enumerate(served_commits(pull, sb.pull_store.commit_cap), start=1)),
            lambda pair: [pair[0]], lambda pair: pull_request_commit(sb, repo, pull, *pair), total=len(pull.commits)),
        "reviews": lambda info, **args: connection(
            info, args, [r for r in pull.reviews if _review_matches(r, args)], _by_id,
            lambda r: review(sb, repo, pull, r)),
        "comments": lambda info, **args: connection(
            info, args, list(pull.comments), _by_id, lambda c: issue_comment(sb, repo, pull, c)),
        "reviewThreads": lambda info, **args: connection(
            info, args, list(pull.threads), _by_id, lambda t: review_thread(sb, repo, pull, t)),
    }


def _review_matches(item: Review, args: dict[str, Any]) -> bool:
    states, login = args.get("states"), args.get("author")
    return (not states or item.state in states) and (login is None or (
        item.author is not None and item.author.login == login))


def _pseudo_oid(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def _merge_commit(sb: Sandbox, repo: Repo, pull: PullRequest, oid: str, moment: datetime) -> dict[str, Any]:
    merger = pull.merged_by
    return commit(sb, repo, Commit(oid, f"Merge pull request #{pull.number} from {pull.head_ref}",
                                   moment, moment, pull.additions, pull.deletions,
                                   merger.name if merger else "GitHub", merger.email if merger else "",
                                   merger, "GitHub"))


def pull_request_commit(sb: Sandbox, repo: Repo, pull: PullRequest, position: int, item: Commit) -> dict[str, Any]:
    path = f"/{repo.full_name}/pull/{pull.number}/commits/{item.oid}"
    return {"__typename": "PullRequestCommit", "id": node_id("PURC", repo.id, pull.id, position),
            "url": sb.store.site.web + path, "resourcePath": path, "commit": commit(sb, repo, item),
            "pullRequest": lambda info: pull_request(sb, repo, pull)}


def commit(sb: Sandbox, repo: Repo, item: Commit) -> dict[str, Any]:
    path = f"/{repo.full_name}/commit/{item.oid}"
    return {
        "__typename": "Commit", "id": node_id("C", repo.id, item.oid), "oid": item.oid, "message": item.message,
        "messageHeadline": item.message.split("\n", 1)[0], "authoredDate": iso(item.authored_at),
        "committedDate": iso(item.committed_at), "additions": item.additions, "deletions": item.deletions,
        "url": sb.store.site.web + path, "resourcePath": path,
        "author": {"name": item.author_name, "email": item.author_email, "date": iso(item.authored_at),
                   "user": maybe_person(sb, item.author)},
        "committer": {"name": item.committer_name,
                      "email": "noreply@github.com" if item.committer_name == "GitHub" else item.author_email,
                      "date": iso(item.committed_at), "user": None},
    }


def review(sb: Sandbox, repo: Repo, pull: PullRequest, item: Review) -> dict[str, Any]:
    path = f"/{repo.full_name}/pull/{pull.number}#pullrequestreview-{item.id}"
    own = [c for t in pull.threads for c in t.comments if c.review_id == item.id]
    return {
        "__typename": "PullRequestReview", "id": node_id("PRR", repo.id, item.id), "databaseId": item.id,
        "author": maybe_person(sb, item.author), "authorAssociation": _association(sb, repo, item.author),
        "body": item.body, "state": item.state, "submittedAt": iso(item.submitted_at),
        "createdAt": iso(item.created_at), "updatedAt": iso(item.updated_at), "url": sb.store.site.web + path,
        "resourcePath": path,
        "commit": _commit_or_none(sb, repo, pull, item.commit_oid),
        "pullRequest": lambda info: pull_request(sb, repo, pull),
        "comments": lambda info, **args: connection(info, args, own, _by_id,
                                                    lambda c: review_comment(sb, repo, pull, c)),
    }


def _commit_or_none(sb: Sandbox, repo: Repo, pull: PullRequest, oid: str | None) -> dict[str, Any] | None:
    found = None if oid is None else pull.commit_by_oid(oid)
    return None if found is None else commit(sb, repo, found)


def issue_comment(sb: Sandbox, repo: Repo, pull: PullRequest, item: IssueComment) -> dict[str, Any]:
    path = f"/{repo.full_name}/pull/{pull.number}#issuecomment-{item.id}"
    return {"__typename": "IssueComment", "id": node_id("IC", repo.id, item.id), "databaseId": item.id,
            "author": maybe_person(sb, item.author), "authorAssociation": _association(sb, repo, item.author),
            "body": item.body, "createdAt": iso(item.created_at), "updatedAt": iso(item.updated_at),
            "url": sb.store.site.web + path, "resourcePath": path,
            "pullRequest": lambda info: pull_request(sb, repo, pull)}


def review_thread(sb: Sandbox, repo: Repo, pull: PullRequest, item: ReviewThread) -> dict[str, Any]:
    return {"__typename": "PullRequestReviewThread", "id": node_id("PRRT", repo.id, item.id),
            "isResolved": item.resolved, "isOutdated": item.outdated, "path": item.path, "line": item.line,
            "pullRequest": lambda info: pull_request(sb, repo, pull),
            "comments": lambda info, **args: connection(info, args, list(item.comments), _by_id,
                                                        lambda c: review_comment(sb, repo, pull, c))}


def review_comment(sb: Sandbox, repo: Repo, pull: PullRequest, item: ReviewComment) -> dict[str, Any]:
    path = f"/{repo.full_name}/pull/{pull.number}#discussion_r{item.id}"
    parent = None if item.reply_to is None else next(
        (c for t in pull.threads for c in t.comments if c.id == item.reply_to), None)
    parent_review = next((r for r in pull.reviews if r.id == item.review_id), None)
    return {
        "__typename": "PullRequestReviewComment", "id": node_id("PRRC", repo.id, item.id), "databaseId": item.id,
        "author": maybe_person(sb, item.author), "authorAssociation": _association(sb, repo, item.author),
        "body": item.body, "path": item.path, "line": item.line, "originalLine": item.line,
        "createdAt": iso(item.created_at), "updatedAt": iso(item.updated_at), "url": sb.store.site.web + path,
        "resourcePath": path, "commit": None,
        "replyTo": lambda info: None if parent is None else review_comment(sb, repo, pull, parent),
        "pullRequestReview": lambda info: None if parent_review is None else review(sb, repo, pull, parent_review),
        "pullRequest": lambda info: pull_request(sb, repo, pull),
    }
