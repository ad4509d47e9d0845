"""JSON shapes of GitHub resources, built from the sandbox's records.

Key sets and key order follow the recordings in /work/shared/github-recordings:
- full repository: extracted/get-repository.pygithub-2025.authenticated.json (admin view) and
  get-repository.pygithub-2026.unauthenticated.json (public view, which also shows the 2026 fields
  ``has_pull_requests`` and ``pull_request_creation_policy``);
- listing items (minimal-repository): the same serializer without the full-only keys, matching
  NamedUser.testGetReposWithAllArgs.txt plus the fields added since (topics, visibility, ...), see
  extracted/minimal-repository-items.openapi-example.json and openapi-notes.md;
- organization: octokit-fixtures/get-organization.raw-fixture.json; user:
  RateLimiting.testRateLimiting.txt (GET /users/{login}).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

import orjson

from .data import LICENSES, Owner, Repo

REPO_URL_TEMPLATES = (
    ("forks_url", "/forks"), ("keys_url", "/keys{/key_id}"),
    ("collaborators_url", "/collaborators{/collaborator}"), ("teams_url", "/teams"),
    ("hooks_url", "/hooks"), ("issue_events_url", "/issues/events{/number}"), ("events_url", "/events"),
    ("assignees_url", "/assignees{/user}"), ("branches_url", "/branches{/branch}"), ("tags_url", "/tags"),
    ("blobs_url", "/git/blobs{/sha}"), ("git_tags_url", "/git/tags{/sha}"), ("git_refs_url", "/git/refs{/sha}"),
    ("trees_url", "/git/trees{/sha}"), ("statuses_url", "/statuses/{sha}"), ("languages_url", "/languages"),
    ("stargazers_url", "/stargazers"), ("contributors_url", "/contributors"),
    ("subscribers_url", "/subscribers"), ("subscription_url", "/subscription"),
    ("commits_url", "/commits{/sha}"), ("git_commits_url", "/git/commits{/sha}"),
    ("comments_url", "/comments{/number}"), ("issue_comment_url", "/issues/comments{/number}"),
    ("contents_url", "/contents/{+path}"), ("compare_url", "/compare/{base}...{head}"),
    ("merges_url", "/merges"), ("archive_url", "/{archive_format}{/ref}"), ("downloads_url", "/downloads"),
    ("issues_url", "/issues{/number}"), ("pulls_url", "/pulls{/number}"),
    ("milestones_url", "/milestones{/number}"), ("notifications_url", "/notifications{?since,all,participating}"),
    ("labels_url", "/labels{/name}"), ("releases_url", "/releases{/id}"), ("deployments_url", "/deployments"),
)

ADMIN = {"admin": True, "maintain": True, "push": True, "triage": True, "pull": True}
READER = {"admin": False, "maintain": False, "push": False, "triage": False, "pull": True}

# How a caller sees a repository: no token, a token without write access, or an admin token.
VIEWS = ("anon", "pull", "admin")


@dataclass(frozen=True)
class Site:
    """Where the sandbox lives: API root, web root and git host, used in every URL it renders."""

    api: str
    web: str
    host: str
    avatars: str


def site_for(api_url: str, prefix: str) -> Site:
    """Web URLs drop the API prefix, as GitHub Enterprise Server does (https://HOST/api/v3 -> https://HOST)."""
    web = api_url[: -len(prefix)] if prefix else api_url
    host = web.split("://", 1)[1]
    avatars = f"{web}/avatars" if prefix else "https://avatars.githubusercontent.com"
    return Site(api=api_url, web=web, host=host, avatars=avatars)


def iso(moment: datetime | None) -> str | None:
    """GitHub's timestamp format: UTC, second precision, trailing Z (moments are stored in UTC)."""
    return None if moment is None else moment.replace(microsecond=0, tzinfo=None).isoformat() + "Z"


def legacy_node_id(kind: str, number: int) -> str:
    """The classic global node id, e.g. base64("010:Repository3544490") = MDEwOlJlcG9zaXRvcnkzNTQ0NDkw."""
    prefixes = {"Repository": "010", "User": "04", "Organization": "012", "License": "07"}
    return base64.b64encode(f"{prefixes[kind]}:{kind}{number}".encode()).decode()


def simple_user(owner: Owner, site: Site) -> dict[str, Any]:
    """The ``owner``/``organization`` object embedded in repositories."""
    user_url = f"{site.api}/users/{owner.login}"
    return {
        "login": owner.login,
        "id": owner.id,
        "node_id": legacy_node_id(owner.kind, owner.id),
        "avatar_url": f"{site.avatars}/u/{owner.id}?v=4",
        "gravatar_id": "",
        "url": user_url,
        "html_url": f"{site.web}/{owner.login}",
        "followers_url": f"{user_url}/followers",
        "following_url": f"{user_url}/following{{/other_user}}",
        "gists_url": f"{user_url}/gists{{/gist_id}}",
        "starred_url": f"{user_url}/starred{{/owner}}{{/repo}}",
        "subscriptions_url": f"{user_url}/subscriptions",
        "organizations_url": f"{user_url}/orgs",
        "repos_url": f"{user_url}/repos",
        "events_url": f"{user_url}/events{{/privacy}}",
        "received_events_url": f"{user_url}/received_events",
        "type": owner.kind,
        "user_view_type": "public",
        "site_admin": False,
    }


def license_object(key: str | None, site: Site) -> dict[str, Any] | None:
    if key is None:
        return None
    name, spdx, slug, number = LICENSES[key]
    return {"key": key, "name": name, "spdx_id": spdx,
            "url": f"{site.api}/licenses/{slug}" if slug else None,
            "node_id": legacy_node_id("License", number)}


def repository(repo: Repo, owner: Owner, site: Site, view: str, full: bool) -> dict[str, Any]:
    """A listing item (``full=False``) or the GET /repos/{owner}/{repo} body (``full=True``).

    ``view`` decides what GitHub reveals: ``permissions`` only to authenticated callers, merge
    settings and ``security_and_analysis`` only to admins (compare the 2025 authenticated and
    2026 unauthenticated recordings).
    """
    full_name = repo.full_name
    api = f"{site.api}/repos/{full_name}"
    body: dict[str, Any] = {
        "id": repo.id,
        "node_id": legacy_node_id("Repository", repo.id),
        "name": repo.name,
        "full_name": full_name,
        "private": repo.private,
        "owner": simple_user(owner, site),
        "html_url": f"{site.web}/{full_name}",
        "description": repo.description,
        "fork": repo.fork,
        "url": api,
    }
    for key, suffix in REPO_URL_TEMPLATES:
        body[key] = api + suffix
    body.update({
        "created_at": iso(repo.created_at),
        "updated_at": iso(repo.updated_at),
        "pushed_at": iso(repo.pushed_at),
        "git_url": f"git://{site.host}/{full_name}.git",
        "ssh_url": f"git@{site.host.split(':')[0]}:{full_name}.git",
        "clone_url": f"{site.web}/{full_name}.git",
        "svn_url": f"{site.web}/{full_name}",
        "homepage": repo.homepage,
        "size": repo.size,
        "stargazers_count": repo.stargazers_count,
        "watchers_count": repo.stargazers_count,
        "language": repo.language,
        "has_issues": repo.has_issues,
        "has_projects": repo.has_projects,
        "has_downloads": True,
        "has_wiki": repo.has_wiki,
        "has_pages": repo.has_pages,
        "has_discussions": repo.has_discussions,
        "forks_count": repo.forks_count,
        "mirror_url": None,
        "archived": repo.archived,
        "disabled": False,
        "open_issues_count": repo.open_issues_count,
        "license": license_object(repo.license, site),
        "allow_forking": True,
        "is_template": repo.is_template,
        "web_commit_signoff_required": False,
        "has_pull_requests": True,
        "pull_request_creation_policy": "all",
        "topics": list(repo.topics),
        "visibility": repo.visibility,
        "forks": repo.forks_count,
        "open_issues": repo.open_issues_count,
        "watchers": repo.stargazers_count,
        "default_branch": repo.default_branch,
    })
    if view != "anon":
        body["permissions"] = dict(ADMIN if view == "admin" else READER)
    if full:
        body.update(_full_extras(repo, owner, site, view))
    return body


def repository_json(repo: Repo, owner_json: str, site: Site, view: str) -> bytes:
    """The listing item of ``repository(..., full=False)`` serialized about three times faster.

    Only the fields that vary are serialized; the owner object (``owner_json``, the
    serialized ``simple_user``) and the 36 URL templates are spliced in as text.  Repository and
    owner names are restricted to ``[A-Za-z0-9._-]``, so they need no JSON escaping.  The tests
    check that the result equals ``repository(...)`` key for key and in order.
    """
    full_name = repo.full_name
    head = _dumps({"id": repo.id, "node_id": legacy_node_id("Repository", repo.id), "name": repo.name,
                   "full_name": full_name, "private": repo.private})
    middle = _dumps({"html_url": f"{site.web}/{full_name}", "description": repo.description, "fork": repo.fork,
                     "url": f"{site.api}/repos/{full_name}"})
    tail = {
        "created_at": iso(repo.created_at), "updated_at": iso(repo.updated_at), "pushed_at": iso(repo.pushed_at),
        "git_url": f"git://{site.host}/{full_name}.git", "ssh_url": f"git@{site.host.split(':')[0]}:{full_name}.git",
        "clone_url": f"{site.web}/{full_name}.git", "svn_url": f"{site.web}/{full_name}",
        "homepage": repo.homepage, "size": repo.size, "stargazers_count": repo.stargazers_count,
        "watchers_count": repo.stargazers_count, "language": repo.language, "has_issues": repo.has_issues,
        "has_projects": repo.has_projects, "has_downloads": True, "has_wiki": repo.has_wiki,
        "has_pages": repo.has_pages, "has_discussions": repo.has_discussions, "forks_count": repo.forks_count,
        "mirror_url": None, "archived": repo.archived, "disabled": False,
        "open_issues_count": repo.open_issues_count, "license": license_object(repo.license, site),
        "allow_forking": True, "is_template": repo.is_template, "web_commit_signoff_required": False,
        "has_pull_requests": True, "pull_request_creation_policy": "all", "topics": repo.topics,
        "visibility": repo.visibility, "forks": repo.forks_count, "open_issues": repo.open_issues_count,
        "watchers": repo.stargazers_count, "default_branch": repo.default_branch,
    }
    if view != "anon":
        tail["permissions"] = ADMIN if view == "admin" else READER
    urls = _url_fragment(site.api).replace("{full_name}", full_name)
    text = f'{head[:-1]},"owner":{owner_json},{middle[1:-1]},{urls},{_dumps(tail)[1:]}'
    return text.encode()


def _dumps(value: dict[str, Any]) -> str:
    return orjson.dumps(value).decode()


@lru_cache(maxsize=16)
def _url_fragment(api: str) -> str:
    """The serialized ``*_url`` members with a ``{full_name}`` marker where the full name goes."""
    base = f"{api}/repos/{{full_name}}"
    return ",".join(f'"{key}":"{base}{suffix}"' for key, suffix in REPO_URL_TEMPLATES)


def _full_extras(repo: Repo, owner: Owner, site: Site, view: str) -> dict[str, Any]:
    extras: dict[str, Any] = {"temp_clone_token": "" if view == "admin" else None}
    if view == "admin":
        extras.update({
            "allow_squash_merge": True,
            "allow_merge_commit": True,
            "allow_rebase_merge": True,
            "allow_auto_merge": False,
            "delete_branch_on_merge": False,
            "allow_update_branch": False,
            "use_squash_pr_title_as_default": False,
            "squash_merge_commit_message": "COMMIT_MESSAGES",
            "squash_merge_commit_title": "COMMIT_OR_PR_TITLE",
            "merge_commit_message": "PR_TITLE",
            "merge_commit_title": "MERGE_MESSAGE",
        })
    extras["custom_properties"] = {}
    if owner.kind == "Organization":
        extras["organization"] = simple_user(owner, site)
    if view == "admin":
        scanning = "enabled" if repo.visibility == "public" else "disabled"
        extras["security_and_analysis"] = {
            "secret_scanning": {"status": scanning},
            "secret_scanning_push_protection": {"status": scanning},
            "dependabot_security_updates": {"status": "disabled"},
            "secret_scanning_non_provider_patterns": {"status": "disabled"},
            "secret_scanning_validity_checks": {"status": "disabled"},
        }
    extras["network_count"] = repo.forks_count
    extras["subscribers_count"] = repo.subscribers_count
    return extras


def organization(owner: Owner, site: Site, public_repos: int, private_repos: int,
                 member: bool) -> dict[str, Any]:
    """GET /orgs/{org}; members also see the plan and private counts (get-organization fixture).

    GitHub leaves out ``name``, ``company``, ``blog``, ``location`` and ``email`` when they are
    unset (the fixture has none of them), so only the set ones are emitted.
    """
    org_url = f"{site.api}/orgs/{owner.login}"
    body: dict[str, Any] = {
        "login": owner.login,
        "id": owner.id,
        "node_id": legacy_node_id("Organization", owner.id),
        "url": org_url,
        "repos_url": f"{org_url}/repos",
        "events_url": f"{org_url}/events",
        "hooks_url": f"{org_url}/hooks",
        "issues_url": f"{org_url}/issues",
        "members_url": f"{org_url}/members{{/member}}",
        "public_members_url": f"{org_url}/public_members{{/member}}",
        "avatar_url": f"{site.avatars}/u/{owner.id}?v=4",
        "description": owner.description,
    }
    for key in ("name", "company", "blog", "location"):
        if getattr(owner, key):
            body[key] = getattr(owner, key)
    body.update({
        "is_verified": False,
        "has_organization_projects": True,
        "has_repository_projects": True,
        "public_repos": public_repos,
        "public_gists": 0,
        "followers": 0,
        "following": 0,
        "html_url": f"{site.web}/{owner.login}",
        "created_at": iso(owner.created_at),
        "updated_at": iso(owner.updated_at),
        "archived_at": None,
        "type": "Organization",
    })
    if member:
        body.update({
            "total_private_repos": private_repos,
            "owned_private_repos": private_repos,
            "private_gists": 0,
            "disk_usage": 1,
            "collaborators": 0,
            "billing_email": f"billing@{owner.login}.example.com",
            "default_repository_permission": "read",
            "members_can_create_repositories": True,
            "two_factor_requirement_enabled": False,
            "members_allowed_repository_creation_type": "all",
            "members_can_create_public_repositories": True,
            "members_can_create_private_repositories": True,
            "members_can_create_internal_repositories": True,
            "members_can_create_pages": True,
            "members_can_fork_private_repositories": False,
            "members_can_create_public_pages": True,
            "members_can_create_private_pages": True,
            "web_commit_signoff_required": False,
            "plan": {"name": "enterprise", "space": 976562499, "private_repos": 999999,
                     "filled_seats": 12, "seats": 50},
        })
    return body


def user(owner: Owner, site: Site, public_repos: int) -> dict[str, Any]:
    """GET /users/{login}; for an organization GitHub answers too, with ``type: Organization``."""
    body = simple_user(owner, site)
    body.update({
        "name": owner.name,
        "company": owner.company,
        "blog": owner.blog,
        "location": owner.location,
        "email": None,
        "hireable": None,
        "bio": owner.description,
        "twitter_username": None,
        "public_repos": public_repos,
        "public_gists": 0,
        "followers": 0,
        "following": 0,
        "created_at": iso(owner.created_at),
        "updated_at": iso(owner.updated_at),
    })
    return body


def private_user(owner: Owner, site: Site, public_repos: int, private_repos: int) -> dict[str, Any]:
    """GET /user: the public profile plus what only the account itself may see."""
    body = user(owner, site, public_repos)
    body.update({
        "private_gists": 0,
        "total_private_repos": private_repos,
        "owned_private_repos": private_repos,
        "disk_usage": 0,
        "collaborators": 0,
        "two_factor_authentication": True,
        "plan": {"name": "pro", "space": 976562499, "collaborators": 0, "private_repos": 9999},
    })
    return body
