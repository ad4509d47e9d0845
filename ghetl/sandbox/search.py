"""GET /search/repositories: query parsing, matching, scoring and ordering.

Supported syntax (the subset of GitHub's that an ETL client uses): plain words and "quoted
phrases" matched in name, description and topics (narrowed with ``in:name,description,topics``;
``in:readme`` searches descriptions since sandbox repositories have no README),
``NOT word``, and the qualifiers user:, org:, repo:, language:, topic:, license:, fork:true|only,
archived:true|false, is:public|private|internal, created:, pushed:, stars:, forks:, size: with
``>``, ``>=``, ``<``, ``<=``, ``a..b`` and ``*`` ranges; a ``-`` before a qualifier negates it.
As on GitHub, forks are left out unless ``fork:`` asks for them, and repeated user:/org:/repo:/
language: qualifiers are alternatives while repeated topic: qualifiers must all match.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from .data import Repo

MAX_QUERY_LENGTH = 256
MAX_OPERATORS = 5
MAX_RESULTS = 1000
TOKEN = re.compile(r'(-?[A-Za-z_]+):("[^"]*"|\S+)|"([^"]*)"|(\S+)')
QUALIFIERS = {"user", "org", "repo", "in", "language", "topic", "license", "fork", "archived", "is",
              "created", "pushed", "stars", "forks", "size"}
SORT_KEYS: dict[str, Callable[[Repo], Any]] = {
    "stars": lambda r: r.stargazers_count,
    "forks": lambda r: r.forks_count,
    "help-wanted-issues": lambda r: r.open_issues_count,
    "updated": lambda r: r.updated_at,
}


class QueryError(ValueError):
    """A query GitHub rejects with 422 Validation Failed; ``error`` is the item of ``errors``."""

    def __init__(self, error: dict[str, str]) -> None:
        super().__init__(error.get("message", error["code"]))
        self.error = error


@dataclass
class Query:
    words: list[str] = field(default_factory=list)
    excluded_words: list[str] = field(default_factory=list)
    fields: tuple[str, ...] = ("name", "description", "topics")
    owners: set[str] = field(default_factory=set)
    org_only: bool = False
    repos: set[str] = field(default_factory=set)
    languages: set[str] = field(default_factory=set)
    fork: str = "false"
    filters: list[Callable[[Repo], bool]] = field(default_factory=list)


def parse(q: str | None) -> Query:
    """Turn ``q`` into a Query, or raise QueryError with GitHub's validation error."""
    if q is None or not q.strip():
        raise QueryError({"resource": "Search", "field": "q", "code": "missing"})
    if len(q) > MAX_QUERY_LENGTH:
        raise QueryError({"message": f"The search is longer than {MAX_QUERY_LENGTH} characters.",
                          "resource": "Search", "field": "q", "code": "invalid"})
    if sum(1 for word in q.split() if word in ("AND", "OR", "NOT")) > MAX_OPERATORS:
        raise QueryError({"message": f"The search contains more than {MAX_OPERATORS} AND / OR / NOT operators.",
                          "resource": "Search", "field": "q", "code": "invalid"})
    query = Query()
    negate_next = False
    for qualifier, value, phrase, word in TOKEN.findall(q):
        if qualifier and qualifier.lstrip("-").lower() in QUALIFIERS:
            _qualifier(query, qualifier, value.strip('"'))
            continue
        text = phrase or word or f"{qualifier}:{value}"
        if text in ("AND", "OR"):
            continue
        if text == "NOT":
            negate_next = True
            continue
        (query.excluded_words if negate_next else query.words).append(text.lower())
        negate_next = False
    return query


def _qualifier(query: Query, qualifier: str, value: str) -> None:
    negated = qualifier.startswith("-")
    name = qualifier.lstrip("-").lower()
    lowered = value.lower()
    test: Callable[[Repo], bool] | None = None
    if name in ("user", "org") and not negated:
        query.owners.add(lowered)
        query.org_only = query.org_only or name == "org"
    elif name == "repo" and not negated:
        query.repos.add(lowered)
    elif name == "language" and not negated:
        query.languages.add(lowered)
    elif name == "in":
        wanted = {"readme": "description"}
        fields = [wanted.get(f, f) for f in lowered.split(",")]
        query.fields = tuple(dict.fromkeys(f for f in fields if f in ("name", "description", "topics")))
    elif name == "fork":
        query.fork = lowered
    elif name in ("user", "org"):
        test = lambda r: r.owner.lower() != lowered  # noqa: E731
    elif name == "repo":
        test = lambda r: r.full_name.lower() != lowered  # noqa: E731
    elif name == "language":
        test = lambda r: (r.language or "").lower() != lowered  # noqa: E731
    else:
        test = _filter(name, lowered)
        if test is not None and negated:
            inner = test
            test = lambda r: not inner(r)  # noqa: E731
    if test is not None:
        query.filters.append(test)


def _filter(name: str, value: str) -> Callable[[Repo], bool] | None:
    if name == "topic":
        return lambda r: value in r.topics
    if name == "license":
        return lambda r: r.license == value
    if name == "archived":
        return lambda r: r.archived == (value == "true")
    if name == "is":
        if value in ("public", "private", "internal"):
            return lambda r: r.visibility == value
        if value == "archived":
            return lambda r: r.archived
        return None
    if name in ("created", "pushed"):
        within = date_range(value)
        return lambda r: within(getattr(r, f"{name}_at"))
    if name in ("stars", "forks", "size"):
        attribute = {"stars": "stargazers_count", "forks": "forks_count", "size": "size"}[name]
        within_number = _number_range(value)
        return lambda r: within_number(getattr(r, attribute))
    return None


def _parse_moment(text: str, upper: bool) -> datetime:
    """A date covers its whole day: as a lower bound it starts at 00:00, as an upper bound it ends at 24:00."""
    if "T" in text:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    day = datetime.fromisoformat(text).replace(tzinfo=UTC)
    return day + timedelta(days=1) if upper else day


def date_range(value: str) -> Callable[[datetime | None], bool]:
    try:
        return _range(value, _parse_moment)
    except ValueError:
        raise QueryError({"message": f"Invalid date in the search: {value}", "resource": "Search",
                          "field": "q", "code": "invalid"}) from None


def _number_range(value: str) -> Callable[[int], bool]:
    try:
        return _range(value, lambda text, upper: int(text) + (1 if upper else 0))
    except ValueError:
        raise QueryError({"message": f"Invalid number in the search: {value}", "resource": "Search",
                          "field": "q", "code": "invalid"}) from None


def _range(value: str, parse_bound) -> Callable:
    """Half-open intervals [low, high) from GitHub's range syntax."""
    low = high = None
    if ".." in value:
        start, end = value.split("..", 1)
        low = None if start == "*" else parse_bound(start, False)
        high = None if end == "*" else parse_bound(end, True)
    elif value.startswith(">="):
        low = parse_bound(value[2:], False)
    elif value.startswith(">"):
        low = parse_bound(value[1:], True)
    elif value.startswith("<="):
        high = parse_bound(value[2:], True)
    elif value.startswith("<"):
        high = parse_bound(value[1:], False)
    else:
        low, high = parse_bound(value, False), parse_bound(value, True)
    return lambda x: x is not None and (low is None or x >= low) and (high is None or x < high)


def matches(query: Query, repo: Repo, owner_is_org: bool) -> float | None:
    """The relevance score of ``repo`` for ``query``, or None when it does not match."""
    if query.owners and (repo.owner.lower() not in query.owners or (query.org_only and not owner_is_org)):
        return None
    if query.repos and repo.full_name.lower() not in query.repos:
        return None
    if query.languages and (repo.language or "").lower() not in query.languages:
        return None
    if (query.fork == "only" and not repo.fork) or (query.fork not in ("true", "only") and repo.fork):
        return None
    if not all(test(repo) for test in query.filters):
        return None
    haystacks = _haystacks(repo, query.fields)
    if any(word in text for word in query.excluded_words for text in haystacks.values()):
        return None
    score = 0.0
    for word in query.words:
        hits = [name for name, text in haystacks.items() if word in text]
        if not hits:
            return None
        score += 3.0 if "name" in hits else 1.0
    return round(1.0 + score + math.log10(1 + repo.stargazers_count) / 10, 6)


def _haystacks(repo: Repo, fields: tuple[str, ...]) -> dict[str, str]:
    texts = {"name": repo.name.lower(), "description": (repo.description or "").lower(),
             "topics": " ".join(repo.topics)}
    return {name: texts[name] for name in fields}


def order(results: list[tuple[Repo, float]], sort: str | None, direction: str | None) -> list[tuple[Repo, float]]:
    """Best match (score) unless ``sort`` names a field; ``order`` only applies with ``sort``."""
    key = SORT_KEYS.get(sort or "")
    if key is None:
        return sorted(results, key=lambda pair: (-pair[1], -pair[0].stargazers_count, pair[0].id))
    descending = direction != "asc"
    ranked = sorted(results, key=lambda pair: pair[0].id)
    return sorted(ranked, key=lambda pair: key(pair[0]), reverse=descending)
