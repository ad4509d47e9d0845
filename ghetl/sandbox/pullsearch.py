"""search(type: ISSUE, query: ...) over the sandbox's pull requests.

The qualifiers a pull-request ETL uses: org:/user:, repo:, is:pr|issue|open|closed|merged|draft,
state:open|closed, author:, created:/updated:/closed:/merged: with GitHub's range syntax, and
sort:created|updated[-asc|-desc]; other words must appear in the title or body.  The sandbox has
no issues, so is:issue finds nothing.  Without sort: results are newest first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .data import Repo
from .pulls import PullRequest
from .search import QueryError, date_range
from .state import NEVER

if TYPE_CHECKING:
    from .sandbox import Sandbox

MAX_RESULTS = 1000
DATES = {"created": "created_at", "updated": "updated_at", "closed": "closed_at", "merged": "merged_at"}
IS = {
    "pr": lambda p: True, "open": lambda p: p.state == "OPEN", "closed": lambda p: p.state != "OPEN",
    "merged": lambda p: p.state == "MERGED", "unmerged": lambda p: p.state == "CLOSED",
    "draft": lambda p: p.is_draft,
}


class SearchError(ValueError):
    """A query GitHub refuses (e.g. an invalid date); the message is GitHub-worded."""


def _test(name: str, text: str) -> Callable[[PullRequest], bool] | None:
    value = text.lower()
    if name == "is":
        return IS.get(value, (lambda p: False) if value == "issue" else None)
    if name == "state":
        return IS.get(value)
    if name == "author":
        return lambda p: p.author is not None and p.author.login.lower() == value
    if name in DATES:
        try:
            within = date_range(text)
        except QueryError as exc:
            raise SearchError(exc.error["message"]) from None
        attribute = DATES[name]
        return lambda p: within(getattr(p, attribute))
    return None


def find(sb: Sandbox, text: str) -> list[tuple[Repo, PullRequest]]:
    """Every match in result order (the caller applies the 1 000 cap to what it serves)."""
    owners: set[str] = set()
    repos: set[str] = set()
    tests: list[Callable[[PullRequest], bool]] = []
    words: list[str] = []
    sort = "created-desc"
    for token in text.split():
        name, sep, text = token.partition(":")
        name, value = name.lower(), text.lower()
        if sep and name in ("org", "user"):
            owners.add(value)
        elif sep and name == "repo":
            repos.add(value)
        elif sep and name == "sort":
            sort = value if "-" in value else f"{value}-desc"
        else:
            test = _test(name, text) if sep else None
            if test is not None:
                tests.append(test)
            else:
                words.append(token.lower())
    store = sb.store
    with store.lock:
        scope = [repo for repo in store.all_repos()
                 if (not owners or repo.owner.lower() in owners) and (not repos or repo.full_name.lower() in repos)
                 and store.can_see(repo, True)]
    pulls = {repo.id: sb.pull_store.of(repo) for repo in scope}
    with store.lock:
        found = [(repo, pull) for repo in scope for pull in pulls[repo.id]
                 if all(t(pull) for t in tests) and all(w in f"{pull.title} {pull.body}".lower() for w in words)]
    field, _, direction = sort.partition("-")
    attribute = DATES.get(field, "created_at")
    found.sort(key=lambda pair: (getattr(pair[1], attribute) or NEVER,
                                 pair[1].id), reverse=direction != "asc")
    return found
