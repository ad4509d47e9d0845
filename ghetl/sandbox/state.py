"""The sandbox's world: owners, repositories, redirects, and the mutations tests drive.

One lock guards everything.  Serialized listing items and sorted listings are cached, because a
10 000-repository organization must page quickly, and are invalidated by every mutation.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import orjson

from . import shapes
from .data import THEMES, Owner, Repo, generate, new_repo_id, owner_for_login
from .shapes import Site

MUTABLE_FIELDS = {
    "description", "language", "topics", "visibility", "archived", "fork", "homepage", "license",
    "default_branch", "stargazers_count", "forks_count", "open_issues_count", "subscribers_count", "size",
    "has_issues", "has_projects", "has_wiki", "has_pages", "has_discussions", "is_template", "themes",
}
SORTS = ("created", "updated", "pushed", "full_name")
NEVER = datetime.min.replace(tzinfo=UTC)
VALID_NAME = re.compile(r"[A-Za-z0-9._-]{1,100}")


def now_utc() -> datetime:
    """Mutation timestamps: timezone-aware UTC at second precision, like GitHub's."""
    return datetime.now(UTC).replace(microsecond=0)


def dumps(value: Any) -> bytes:
    """GitHub sends compact UTF-8 JSON, non-ASCII characters unescaped."""
    return orjson.dumps(value)


class Store:
    """Owners and repositories with name/id indexes, redirects and render caches."""

    def __init__(self, orgs: dict[str, int], users: dict[str, int], seed: int, site: Site,
                 viewer: str | None = None) -> None:
        self.seed = seed
        self.site = site
        self.lock = threading.RLock()
        owners, repos = generate(orgs, users, seed)
        self._owners: dict[str, Owner] = {o.login.lower(): o for o in owners}
        self._repos: dict[int, Repo] = {r.id: r for r in repos}
        self._by_name: dict[str, int] = {r.full_name.lower(): r.id for r in repos}
        self._redirects: dict[str, int] = {}
        self._items: dict[tuple[int, str], bytes] = {}
        self._owners_json: dict[str, str] = {}
        self._orders: dict[tuple, list[int]] = {}
        viewer_login = viewer or (next(iter(users)) if users else "sandbox-admin")
        self.viewer = self._owners.get(viewer_login.lower()) or self._add_owner(viewer_login, "User")

    # ----- lookups -------------------------------------------------------------------------

    def owner(self, login: str) -> Owner | None:
        return self._owners.get(login.lower())

    def owner_by_id(self, owner_id: int) -> Owner | None:
        return next((o for o in self._owners.values() if o.id == owner_id), None)

    def owners(self) -> list[Owner]:
        with self.lock:
            return list(self._owners.values())

    def repo_by_id(self, repo_id: int) -> Repo | None:
        return self._repos.get(repo_id)

    def repo_by_name(self, owner: str, name: str) -> Repo | None:
        repo_id = self._by_name.get(f"{owner}/{name}".lower())
        return None if repo_id is None else self._repos.get(repo_id)

    def redirect_for(self, owner: str, name: str) -> Repo | None:
        """The repository an old (renamed or transferred) full name now points to, if it still exists."""
        repo_id = self._redirects.get(f"{owner}/{name}".lower())
        return None if repo_id is None else self._repos.get(repo_id)

    def resolve(self, ref: int | str) -> Repo:
        """A repository by id, by current full name or by an old full name; KeyError otherwise."""
        with self.lock:
            if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
                repo = self._repos.get(int(ref))
            else:
                owner, _, name = str(ref).partition("/")
                repo = self.repo_by_name(owner, name) or self.redirect_for(owner, name)
            if repo is None:
                raise KeyError(f"no repository {ref!r} in the sandbox")
            return repo

    def repos_of(self, login: str) -> list[Repo]:
        with self.lock:
            return [r for r in self._repos.values() if r.owner.lower() == login.lower()]

    def all_repos(self) -> list[Repo]:
        with self.lock:
            return list(self._repos.values())

    def counts(self, login: str) -> tuple[int, int]:
        """(public, private) repository counts of an owner; internal ones count as private."""
        repos = self.repos_of(login)
        public = sum(1 for r in repos if not r.private)
        return public, len(repos) - public

    # ----- rendering -----------------------------------------------------------------------

    def view_for(self, repo: Repo, authenticated: bool) -> str:
        """The token's user administers every organization and its own repositories."""
        return self.view_for_owner(repo.owner, authenticated)

    def view_for_owner(self, login: str, authenticated: bool) -> str:
        if not authenticated:
            return "anon"
        owner = self._owners[login.lower()]
        return "admin" if owner.kind == "Organization" or owner is self.viewer else "pull"

    def can_see(self, repo: Repo, authenticated: bool) -> bool:
        """Unauthenticated callers see public repositories only; others' private ones stay hidden."""
        if not repo.private:
            return True
        return authenticated and self.view_for(repo, True) == "admin"

    def full(self, repo: Repo, view: str) -> dict[str, Any]:
        with self.lock:
            return shapes.repository(repo, self._owners[repo.owner.lower()], self.site, view, full=True)

    def items(self, ids: list[int], view: str) -> list[bytes]:
        """Listing items, each serialized once per view and kept until its repository changes.

        Ids of repositories deleted since the listing was computed are skipped.
        """
        out = []
        with self.lock:
            for repo_id in ids:
                cached = self._items.get((repo_id, view))
                if cached is None:
                    repo = self._repos.get(repo_id)
                    if repo is None:
                        continue
                    cached = shapes.repository_json(repo, self._owner_json(repo.owner), self.site, view)
                    self._items[(repo_id, view)] = cached
                out.append(cached)
        return out

    def _owner_json(self, login: str) -> str:
        cached = self._owners_json.get(login)
        if cached is None:
            owner = self._owners[login.lower()]
            cached = self._owners_json[login] = dumps(shapes.simple_user(owner, self.site)).decode()
        return cached

    def updated_between(self, repo_id: int, since: datetime | None, before: datetime | None) -> bool:
        repo = self._repos.get(repo_id)
        return repo is not None and (since is None or repo.updated_at > since) and (
            before is None or repo.updated_at < before)

    def set_site(self, site: Site) -> None:
        with self.lock:
            self.site = site
            self._items.clear()
            self._owners_json.clear()

    # ----- listings ------------------------------------------------------------------------

    def listing(self, login: str, visible: str, kinds: str, sort: str, direction: str) -> list[int]:
        """Ids of an owner's repositories, filtered and sorted, cached until the next mutation.

        ``visible`` is ``public`` or ``all``; ``kinds`` is ``all``, ``public``, ``private``,
        ``forks`` or ``sources`` (the ``type`` parameter of GET /orgs/{org}/repos).
        """
        key = (login.lower(), visible, kinds, sort, direction)
        with self.lock:
            cached = self._orders.get(key)
            if cached is None:
                repos = [r for r in self.repos_of(login) if _kept(r, visible, kinds)]
                cached = self._orders[key] = [r.id for r in sort_repos(repos, sort, direction)]
            return cached

    def viewer_listing(self, affiliations: set[str], kinds: str, sort: str, direction: str) -> list[int]:
        """GET /user/repos: the token user's own repositories and those of its organizations."""
        key = ("@viewer", tuple(sorted(affiliations)), kinds, sort, direction)
        with self.lock:
            cached = self._orders.get(key)
            if cached is None:
                repos = [r for r in self._repos.values() if self._affiliated(r, affiliations)
                         and _kept(r, "all", kinds)]
                cached = self._orders[key] = [r.id for r in sort_repos(repos, sort, direction)]
            return cached

    def _affiliated(self, repo: Repo, affiliations: set[str]) -> bool:
        owner = self._owners[repo.owner.lower()]
        if owner is self.viewer:
            return "owner" in affiliations
        return owner.kind == "Organization" and "organization_member" in affiliations

    # ----- mutations -----------------------------------------------------------------------

    def _changed(self, repo_id: int | None = None) -> None:
        if repo_id is not None:
            for view in shapes.VIEWS:
                self._items.pop((repo_id, view), None)
        self._orders.clear()

    def _add_owner(self, login: str, kind: str) -> Owner:
        owner = owner_for_login(login, kind, self.seed, {o.id for o in self._owners.values()}, now_utc())
        self._owners[login.lower()] = owner
        return owner

    def touch(self, ref: int | str, **changes: Any) -> Repo:
        with self.lock:
            repo = self.resolve(ref)
            _apply(repo, changes)
            moment = now_utc()
            repo.updated_at = moment
            repo.pushed_at = moment
            self._changed(repo.id)
            return repo

    def create(self, owner_login: str, name: str, **fields: Any) -> Repo:
        with self.lock:
            owner = self.owner(owner_login)
            if owner is None:
                raise KeyError(f"no owner {owner_login!r} in the sandbox")
            self._check_free(owner.login, name)
            moment = now_utc()
            repo = Repo(id=new_repo_id(set(self._repos), moment), owner=owner.login, name=name,
                        description=None, language=None, topics=[], visibility="public", archived=False,
                        fork=False, license=None, homepage=None, created_at=moment, updated_at=moment,
                        pushed_at=moment, stargazers_count=0, forks_count=0, open_issues_count=0,
                        subscribers_count=1, size=0, default_branch="main")
            _apply(repo, fields)
            if owner.kind == "User" and repo.visibility == "internal":
                raise ValueError("user repositories cannot be internal")
            self._repos[repo.id] = repo
            self._index(repo)
            self._changed(repo.id)
            return repo

    def rename(self, ref: int | str, new_name: str) -> Repo:
        with self.lock:
            repo = self.resolve(ref)
            if new_name.lower() != repo.name.lower():
                self._check_free(repo.owner, new_name)
            self._move(repo, repo.owner, new_name)
            return repo

    def transfer(self, ref: int | str, new_owner: str) -> Repo:
        """Unknown targets are created as organizations, so a test can send a repository 'elsewhere'."""
        with self.lock:
            repo = self.resolve(ref)
            owner = self.owner(new_owner) or self._add_owner(new_owner, "Organization")
            self._check_free(owner.login, repo.name)
            if owner.kind == "User" and repo.visibility == "internal":
                repo.visibility = "private"
            self._move(repo, owner.login, repo.name)
            return repo

    def delete(self, ref: int | str) -> Repo:
        with self.lock:
            repo = self.resolve(ref)
            del self._repos[repo.id]
            self._by_name.pop(repo.full_name.lower(), None)
            self._redirects = {k: v for k, v in self._redirects.items() if v != repo.id}
            self._changed(repo.id)
            return repo

    def _check_free(self, owner: str, name: str) -> None:
        if not VALID_NAME.fullmatch(name) or name in (".", ".."):
            raise ValueError(f"invalid repository name {name!r}: use letters, digits, '.', '-' and '_'")
        if self.repo_by_name(owner, name) is not None:
            raise ValueError(f"name already exists on this account: {owner}/{name}")

    def _index(self, repo: Repo) -> None:
        key = repo.full_name.lower()
        self._by_name[key] = repo.id
        self._redirects.pop(key, None)

    def _move(self, repo: Repo, owner: str, name: str) -> None:
        """Rename/transfer: the old full name keeps redirecting (301) to /repositories/{id}."""
        old = repo.full_name.lower()
        del self._by_name[old]
        repo.owner, repo.name = owner, name
        repo.updated_at = now_utc()
        self._index(repo)
        if old != repo.full_name.lower():
            self._redirects[old] = repo.id
        self._changed(repo.id)


def _kept(repo: Repo, visible: str, kinds: str) -> bool:
    if visible == "public" and repo.private:
        return False
    if kinds == "public":
        return not repo.private
    if kinds == "private":
        return repo.private
    if kinds == "forks":
        return repo.fork
    if kinds == "sources":
        return not repo.fork
    return True


def sort_repos(repos: Iterable[Repo], sort: str, direction: str) -> list[Repo]:
    """GitHub's listing orders; ties broken by id so pages are stable between requests."""
    keys = {
        "created": lambda r: (r.created_at, r.id),
        "updated": lambda r: (r.updated_at, r.id),
        "pushed": lambda r: (r.pushed_at or NEVER, r.id),
        "full_name": lambda r: (r.full_name.lower(), r.id),
    }
    return sorted(repos, key=keys[sort], reverse=direction == "desc")


def _apply(repo: Repo, changes: dict[str, Any]) -> None:
    unknown = set(changes) - MUTABLE_FIELDS - {"private"}
    if unknown:
        raise TypeError(f"cannot set {', '.join(sorted(unknown))}; settable: {', '.join(sorted(MUTABLE_FIELDS))}")
    if "private" in changes and "visibility" not in changes:
        changes = {**changes, "visibility": "private" if changes["private"] else "public"}
    changes = {k: v for k, v in changes.items() if k != "private"}
    if changes.get("visibility", "public") not in ("public", "private", "internal"):
        raise ValueError("visibility must be public, private or internal")
    unknown_themes = set(changes.get("themes", [])) - set(THEMES)
    if unknown_themes:
        raise ValueError(f"unknown themes: {', '.join(sorted(unknown_themes))}")
    for key, value in changes.items():
        setattr(repo, key, list(value) if key in ("topics", "themes") else value)
