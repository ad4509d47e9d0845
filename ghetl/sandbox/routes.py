"""GitHub REST endpoints served by the sandbox, each a function from a Call to a Reply.

Rate limiting, authentication, faults, conditional requests and headers are the server's job
(``server.py``); these functions only decide status, body and the per-endpoint metadata
(ETag/Last-Modified/Link/cache policy) that GitHub attaches to each endpoint.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from . import errors, search, shapes
from .data import Repo
from .paging import last_page, link_header, paging
from .state import SORTS, dumps

if TYPE_CHECKING:
    from .sandbox import Sandbox

DOCS = {
    "org": "https://docs.github.com/rest/orgs/orgs#get-an-organization",
    "user": "https://docs.github.com/rest/users/users#get-a-user",
    "viewer": "https://docs.github.com/rest/users/users#get-the-authenticated-user",
    "org_repos": "https://docs.github.com/rest/repos/repos#list-organization-repositories",
    "user_repos": "https://docs.github.com/rest/repos/repos#list-repositories-for-a-user",
    "viewer_repos": "https://docs.github.com/rest/repos/repos#list-repositories-for-the-authenticated-user",
    "repo": "https://docs.github.com/rest/repos/repos#get-a-repository",
    "search": "https://docs.github.com/rest/search/search#search-repositories",
}
REPO_SCOPES = "repo"
OTHER_RESOURCES = {
    "integration_manifest": 5000, "source_import": 100, "code_scanning_upload": 1000,
    "code_scanning_autofix": 10, "actions_runner_registration": 10000, "scim": 15000,
    "dependency_snapshots": 100, "dependency_sbom": 100, "audit_log": 1750, "audit_log_streaming": 15,
    "code_search": 10,
}


@dataclass
class Call:
    """One parsed API request."""

    method: str
    raw: str
    path: str
    pairs: list[tuple[str, str]]
    params: dict[str, str]
    authenticated: bool
    caller: str
    client_ip: str


@dataclass
class Reply:
    """An endpoint's answer; ``cache`` is ``max-age`` (private/public by auth), ``no-cache`` or None."""

    status: int
    body: Any = None
    etag: bool = False
    last_modified: datetime | None = None
    link: str | None = None
    location: str | None = None
    cache: str | None = None
    per_page: int | None = None
    scopes: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    media_type: str = "github.v3; format=json"

    def payload(self) -> bytes:
        if self.body is None:
            return b""
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode()
        return dumps(self.body)


@dataclass(frozen=True)
class Route:
    pattern: re.Pattern[str]
    handler: Callable[..., Reply]
    resource: str
    free: bool = False


def not_found(docs: str = errors.REST_DOCS) -> Reply:
    return Reply(404, errors.not_found(docs))


def rate_limit(sb: Sandbox, call: Call) -> Reply:
    """GET /rate_limit is free and reports every bucket (RateLimiting.testRateLimiting recording)."""
    buckets = sb.limits.snapshot(call.caller, call.authenticated)
    reset = buckets["core"].reset
    resources = {name: {"limit": b.limit, "used": b.used, "remaining": b.remaining, "reset": b.reset}
                 for name, b in buckets.items()}
    for name, limit in OTHER_RESOURCES.items():
        resources[name] = {"limit": limit, "used": 0, "remaining": limit, "reset": reset}
    return Reply(200, {"resources": resources, "rate": resources["core"]}, cache="no-cache")


def viewer(sb: Sandbox, call: Call) -> Reply:
    if not call.authenticated:
        return Reply(401, errors.requires_authentication(DOCS["viewer"]))
    me = sb.store.viewer
    public, private = sb.store.counts(me.login)
    return Reply(200, shapes.private_user(me, sb.store.site, public, private), etag=True,
                 last_modified=me.updated_at, cache="max-age")


def organization(sb: Sandbox, call: Call, login: str) -> Reply:
    owner = sb.store.owner(login)
    if owner is None or owner.kind != "Organization":
        return not_found(DOCS["org"])
    public, private = sb.store.counts(owner.login)
    body = shapes.organization(owner, sb.store.site, public, private, member=call.authenticated)
    return Reply(200, body, etag=True, last_modified=owner.updated_at, cache="max-age",
                 scopes="admin:org, read:org, repo, user, write:org")


def user(sb: Sandbox, call: Call, login: str) -> Reply:
    owner = sb.store.owner(login)
    if owner is None:
        return not_found(DOCS["user"])
    public, _ = sb.store.counts(owner.login)
    return Reply(200, shapes.user(owner, sb.store.site, public), etag=True, last_modified=owner.updated_at,
                 cache="max-age")


def _sort_params(call: Call, default_sort: str) -> tuple[str, str]:
    """Unknown values fall back to the defaults; direction defaults to asc only for full_name."""
    sort = call.params.get("sort", default_sort)
    sort = sort if sort in SORTS else default_sort
    direction = call.params.get("direction")
    if direction not in ("asc", "desc"):
        direction = "asc" if sort == "full_name" else "desc"
    return sort, direction


def _page(sb: Sandbox, call: Call, ids: list[int], view: str, link_base: str) -> Reply:
    per_page, page = paging(call.params)
    chunk = ids[(page - 1) * per_page: page * per_page]
    body = b"[" + b",".join(sb.store.items(chunk, view)) + b"]"
    link = link_header(link_base, call.pairs, page, last_page(len(ids), per_page))
    return Reply(200, body, etag=True, link=link, cache="max-age", per_page=per_page)


def org_repos(sb: Sandbox, call: Call, login: str) -> Reply:
    """GET /orgs/{org}/repos; Link points at /organizations/{id}/repos like GitHub's."""
    owner = sb.store.owner(login)
    if owner is None or owner.kind != "Organization":
        return not_found(DOCS["org_repos"])
    return _org_listing(sb, call, owner.login, owner.id)


def org_repos_by_id(sb: Sandbox, call: Call, owner_id: str) -> Reply:
    owner = sb.store.owner_by_id(int(owner_id))
    if owner is None or owner.kind != "Organization":
        return not_found(DOCS["org_repos"])
    return _org_listing(sb, call, owner.login, owner.id)


def _org_listing(sb: Sandbox, call: Call, login: str, owner_id: int) -> Reply:
    kinds = call.params.get("type", "all")
    kinds = kinds if kinds in ("all", "public", "private", "forks", "sources") else "all"
    sort, direction = _sort_params(call, "created")
    visible = "all" if call.authenticated else "public"
    ids = sb.store.listing(login, visible, kinds, sort, direction)
    view = "admin" if call.authenticated else "anon"
    return _page(sb, call, ids, view, f"{sb.store.site.api}/organizations/{owner_id}/repos")


def user_repos(sb: Sandbox, call: Call, login: str) -> Reply:
    """GET /users/{user}/repos lists public repositories only, for users and organizations alike.

    The Link header uses /user/{id}/repos (github3py-cassettes/GitHub_repositories_by.json).
    """
    owner = sb.store.owner(login)
    if owner is None:
        return not_found(DOCS["user_repos"])
    return _user_listing(sb, call, owner.login, owner.id)


def user_repos_by_id(sb: Sandbox, call: Call, owner_id: str) -> Reply:
    owner = sb.store.owner_by_id(int(owner_id))
    if owner is None:
        return not_found(DOCS["user_repos"])
    return _user_listing(sb, call, owner.login, owner.id)


def _user_listing(sb: Sandbox, call: Call, login: str, owner_id: int) -> Reply:
    sort, direction = _sort_params(call, "full_name")
    ids = sb.store.listing(login, "public", "all", sort, direction)
    view = sb.store.view_for_owner(login, call.authenticated)
    return _page(sb, call, ids, view, f"{sb.store.site.api}/user/{owner_id}/repos")


def viewer_repos(sb: Sandbox, call: Call) -> Reply:
    """GET /user/repos: the way to reach a user's private repositories with that user's token."""
    if not call.authenticated:
        return Reply(401, errors.requires_authentication(DOCS["viewer_repos"]))
    params = call.params
    if "type" in params and ("visibility" in params or "affiliation" in params):
        return Reply(422, errors.validation_failed(
            [{"resource": "Repository", "field": "type", "code": "invalid",
              "message": "type cannot be used with visibility or affiliation"}], DOCS["viewer_repos"]))
    affiliations = set(params.get("affiliation", "owner,collaborator,organization_member").split(","))
    kinds = params.get("visibility", "all")
    kind_type = params.get("type", "all")
    if kind_type in ("public", "private"):
        kinds = kind_type
    elif kind_type == "owner":
        affiliations = {"owner"}
    elif kind_type == "member":
        affiliations = {"collaborator", "organization_member"}
    kinds = kinds if kinds in ("all", "public", "private") else "all"
    sort, direction = _sort_params(call, "full_name")
    ids = sb.store.viewer_listing(affiliations, kinds, sort, direction)
    since, before = _moment(params.get("since")), _moment(params.get("before"))
    if since or before:
        ids = [i for i in ids if sb.store.updated_between(i, since, before)]
    return _page(sb, call, ids, "admin", f"{sb.store.site.api}/user/repos")


def _moment(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def repository(sb: Sandbox, call: Call, owner: str, name: str) -> Reply:
    """GET /repos/{owner}/{repo}; an old name answers 301 to /repositories/{id} (rename fixture)."""
    store = sb.store
    with store.lock:
        repo = store.repo_by_name(owner, name)
        if repo is not None and store.can_see(repo, call.authenticated):
            return _full(sb, call, repo)
        moved = None if repo is not None else store.redirect_for(owner, name)
        if moved is not None and store.can_see(moved, call.authenticated):
            url = f"{store.site.api}/repositories/{moved.id}"
            return Reply(301, errors.moved(url), location=url, scopes=REPO_SCOPES)
    return not_found(DOCS["repo"])



def repository_by_id(sb: Sandbox, call: Call, repo_id: str) -> Reply:
    store = sb.store
    with store.lock:
        repo = store.repo_by_id(int(repo_id))
        if repo is not None and store.can_see(repo, call.authenticated):
            return _full(sb, call, repo)
    return not_found(DOCS["repo"])


def _full(sb: Sandbox, call: Call, repo: Repo) -> Reply:
    view = sb.store.view_for(repo, call.authenticated)
    return Reply(200, sb.store.full(repo, view), etag=True, last_modified=repo.updated_at, cache="max-age",
                 scopes=REPO_SCOPES)


def search_repositories(sb: Sandbox, call: Call) -> Reply:
    """GET /search/repositories with GitHub's 1 000-result cap and 256-character query limit."""
    try:
        query = search.parse(call.params.get("q"))
    except search.QueryError as exc:
        return Reply(422, errors.validation_failed([exc.error], DOCS["search"]))
    per_page, page = paging(call.params)
    if (page - 1) * per_page >= search.MAX_RESULTS:
        return Reply(422, errors.search_cap())
    store = sb.store
    with store.lock:
        found = []
        for repo in store.all_repos():
            if not store.can_see(repo, call.authenticated):
                continue
            owner = store.owner(repo.owner)
            score = search.matches(query, repo, owner is not None and owner.kind == "Organization")
            if score is not None:
                found.append((repo, score))
        ranked = search.order(found, call.params.get("sort"), call.params.get("order"))
        reachable = ranked[: search.MAX_RESULTS]
        chunk = reachable[(page - 1) * per_page: page * per_page]
        items = [store.items([r.id], store.view_for(r, call.authenticated))[0][:-1]
                 + b',"score":' + repr(float(score)).encode() + b"}" for r, score in chunk]
    incomplete = sb.faults.take(call.raw, ("incomplete",)) is not None
    body = (b'{"total_count":%d,"incomplete_results":%s,"items":[' % (len(ranked), b"true" if incomplete else b"false")
            + b",".join(items) + b"]}")
    link = link_header(f"{store.site.api}/search/repositories", call.pairs, page,
                       last_page(len(reachable), per_page))
    return Reply(200, body, link=link, cache="no-cache", per_page=per_page)


ROUTES = (
    Route(re.compile(r"/rate_limit"), rate_limit, "core", free=True),
    Route(re.compile(r"/user"), viewer, "core"),
    Route(re.compile(r"/user/repos"), viewer_repos, "core"),
    Route(re.compile(r"/user/(\d+)/repos"), user_repos_by_id, "core"),
    Route(re.compile(r"/orgs/([^/]+)"), organization, "core"),
    Route(re.compile(r"/orgs/([^/]+)/repos"), org_repos, "core"),
    Route(re.compile(r"/organizations/(\d+)/repos"), org_repos_by_id, "core"),
    Route(re.compile(r"/users/([^/]+)"), user, "core"),
    Route(re.compile(r"/users/([^/]+)/repos"), user_repos, "core"),
    Route(re.compile(r"/repos/([^/]+)/([^/]+)"), repository, "core"),
    Route(re.compile(r"/repositories/(\d+)"), repository_by_id, "core"),
    Route(re.compile(r"/search/repositories"), search_repositories, "search"),
)


def route_for(path: str) -> tuple[Route | None, tuple[str, ...]]:
    for candidate in ROUTES:
        found = candidate.pattern.fullmatch(path)
        if found:
            return candidate, found.groups()
    return None, ()
