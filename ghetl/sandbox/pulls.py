"""Generated pull requests, with their commits, reviews, comments and review threads.

A repository's pull requests are generated on first access from a seed derived from the sandbox
seed and the repository id, so the sandbox starts as fast as before and the same repository has
the same pull requests on every run.  Most repositories have 0-5 pull requests and a few have
hundreds; a few pull requests have more than 100 commits, comments or reviews, and a few have
6-30 review threads or a thread of 21-60 comments, so that a client must page nested
connections (threads included).  The busy threads come from a second random stream per
repository, so the rest of a repository's pull requests is the same with or without them (but for
database ids, which follow the moments).  Authors are drawn from a per-owner pool of people and bots;
about one in thirty is a deleted account (``author: null`` in GraphQL, GitHub's ghost).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from .data import GITHUB_EPOCH, THEMES, Repo, anchor_for
from .nodeids import node_id, parse_node_id
from .state import Store, now_utc

FIRST_NAMES = ("ana", "ben", "chen", "dara", "emil", "fatou", "goran", "hana", "ivan", "jun", "kofi", "lena",
               "mateo", "nadia", "oskar", "priya", "quinn", "rosa", "sami", "tariq", "uma", "vik", "wen",
               "yara", "zoe")
LAST_NAMES = ("okafor", "schmidt", "tanaka", "silva", "novak", "haddad", "kim", "larsen", "moreau", "patel",
              "rossi", "garcia", "ivanova", "nguyen", "müller")
BOTS = ("dependabot", "renovate", "github-actions")
VERBS = ("Add", "Fix", "Refactor", "Speed up", "Document", "Remove", "Handle", "Test", "Rework", "Bump")
FILES = ("src/main.py", "src/api/handlers.go", "lib/core.ts", "README.md", "config/settings.yaml",
         "internal/store/store.go", "tests/test_core.py", "Makefile", "docs/index.md", "app/models.rb")
REVIEW_BODIES = ("Looks good to me.", "A few nits, otherwise fine.", "Please add a test for the edge case.",
                 "This breaks the retry path, see inline comments.", "", "Nice cleanup!")
COMMENT_BODIES = ("Thanks for the fix!", "Could we split this into two pull requests?", "CI is green now.",
                  "Rebased on main.", "Is this still needed?", "Merging after the release. 🚀",
                  "Ça marche chez moi.", "LGTM")


@dataclass(frozen=True, slots=True)
class Person:
    """A pull-request participant: a User or a Bot (GraphQL ``__typename``)."""

    login: str
    id: int
    kind: str
    name: str
    email: str
    created_at: datetime

    @property
    def node_id(self) -> str:
        return node_id("BOT" if self.kind == "Bot" else "U", self.id)


@dataclass(slots=True)
class Commit:
    oid: str
    message: str
    authored_at: datetime
    committed_at: datetime
    additions: int
    deletions: int
    author_name: str
    author_email: str
    author: Person | None
    committer_name: str


@dataclass(slots=True)
class Review:
    id: int
    state: str
    author: Person | None
    body: str
    created_at: datetime
    submitted_at: datetime | None
    updated_at: datetime
    commit_oid: str | None


@dataclass(slots=True)
class IssueComment:
    id: int
    author: Person | None
    body: str
    created_at: datetime
    updated_at: datetime


@dataclass(slots=True)
class ReviewComment:
    id: int
    author: Person | None
    body: str
    path: str
    line: int | None
    created_at: datetime
    updated_at: datetime
    review_id: int
    reply_to: int | None


@dataclass(slots=True)
class ReviewThread:
    id: int
    path: str
    line: int | None
    resolved: bool
    outdated: bool
    comments: list[ReviewComment] = field(default_factory=list)


@dataclass(slots=True)
class PullRequest:
    """The mutable state of one pull request; GraphQL and ground-truth shapes derive from it."""

    repo_id: int
    id: int
    number: int
    title: str
    body: str
    state: str
    is_draft: bool
    author: Person | None
    merged_by: Person | None
    base_ref: str
    head_ref: str
    merge_oid: str | None
    changed_files: int
    created_at: datetime
    updated_at: datetime
    closed_at: datetime | None
    merged_at: datetime | None
    commits: list[Commit] = field(default_factory=list)
    reviews: list[Review] = field(default_factory=list)
    comments: list[IssueComment] = field(default_factory=list)
    threads: list[ReviewThread] = field(default_factory=list)
    rewritten: list[Commit] = field(default_factory=list)

    @property
    def node_id(self) -> str:
        return node_id("PR", self.repo_id, self.id)

    def commit_by_oid(self, oid: str) -> Commit | None:
        """A commit of the branch, or one a force-push removed (reviews still point at it)."""
        return next((c for c in (*self.commits, *self.rewritten) if c.oid == oid), None)

    @property
    def additions(self) -> int:
        return sum(c.additions for c in self.commits)

    @property
    def deletions(self) -> int:
        return sum(c.deletions for c in self.commits)

    @property
    def review_comments(self) -> list[ReviewComment]:
        return [c for t in self.threads for c in t.comments]

    @property
    def review_decision(self) -> str | None:
        """APPROVED / CHANGES_REQUESTED from each reviewer's latest verdict, else REVIEW_REQUIRED."""
        latest: dict[str, str] = {}
        for review in self.reviews:
            if review.author is not None and review.state in ("APPROVED", "CHANGES_REQUESTED", "DISMISSED"):
                latest[review.author.login] = review.state
        if "CHANGES_REQUESTED" in latest.values():
            return "CHANGES_REQUESTED"
        if "APPROVED" in latest.values():
            return "APPROVED"
        return "REVIEW_REQUIRED" if self.state == "OPEN" else None

    def touched(self, moment: datetime) -> None:
        self.updated_at = max(self.updated_at, moment)


# ----- generation ---------------------------------------------------------------------------

def people_of(owner: str, seed: int) -> list[Person]:
    """The owner's contributors: 24 people and the bots, the same for every repository of the owner."""
    rng = random.Random(f"{seed}:people:{owner.lower()}")
    people: list[Person] = []
    logins: set[str] = set()
    while len(people) < 24:
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        login = f"{first}-{last}" if rng.random() < 0.5 else f"{first}{last[:3]}{rng.randint(1, 99)}"
        login = login.replace("ü", "u")
        if login in logins:
            continue
        logins.add(login)
        created = GITHUB_EPOCH + timedelta(days=rng.randint(100, 5000), seconds=rng.randint(0, 86_399))
        people.append(Person(login, rng.randint(1_000_000, 190_000_000), "User",
                             f"{first.title()} {last.title()}", f"{login}@users.noreply.example.com", created))
    for bot in BOTS:
        people.append(Person(f"{bot}[bot]" if bot != "github-actions" else bot, rng.randint(20_000_000, 60_000_000),
                             "Bot", bot, f"{bot}@bots.example.com", GITHUB_EPOCH + timedelta(days=3000)))
    return people


def _pick(rng: random.Random, people: list[Person], ghost_rate: float = 0.03) -> Person | None:
    """A participant; None stands for a deleted account."""
    if rng.random() < ghost_rate:
        return None
    kind = "Bot" if rng.random() < 0.06 else "User"
    return rng.choice([p for p in people if p.kind == kind])


def _count(rng: random.Random, heavy: float, small: tuple[int, int], large: tuple[int, int]) -> int:
    return rng.randint(*large) if rng.random() < heavy else rng.randint(*small)


def _pull_count(rng: random.Random) -> int:
    roll = rng.random()
    if roll < 0.9:
        return rng.randint(0, 5)
    if roll < 0.99:
        return rng.randint(6, 40)
    return rng.randint(101, 300)


# A pull request with a submitted review has 0-3 review threads, of 1-5 comments; one in fifty of
# them gets 6-30 threads (most of one or two comments: inline remarks of one review), and one
# thread in a hundred is a discussion of 21-60 comments.
MANY_THREADS = 0.02
MANY_THREADS_RANGE = (6, 30)
LONG_THREAD = 0.01
LONG_THREAD_RANGE = (21, 60)


def _oid(rng: random.Random) -> str:
    return hashlib.sha1(rng.getrandbits(64).to_bytes(8, "big")).hexdigest()


# Database ids per kind: base + seconds since 2008, so they grow with time as GitHub's do and stay
# below GraphQL's 32-bit Int limit (2 147 483 647) until about 2031.
ID_BASES = {"pr": 100_000_000, "thread": 700_000_000, "comment": 800_000_000, "review": 1_400_000_000}


class _Ids:
    """Increasing database ids of one kind, derived from the moment each object was created."""

    def __init__(self, base: int) -> None:
        self.base = base
        self.last = 0

    def at(self, moment: datetime) -> int:
        value = self.base + int((moment - GITHUB_EPOCH).total_seconds())
        self.last = max(self.last + 1, value)
        return self.last


def _id_makers() -> dict[str, _Ids]:
    return {kind: _Ids(base) for kind, base in ID_BASES.items()}


def generate_pulls(repo: Repo, seed: int, people: list[Person], now: datetime) -> list[PullRequest]:
    """The repository's pull requests in number order, a pure function of (repo id, seed)."""
    rng = random.Random(f"{seed}:pulls:{repo.id}")
    end = max(repo.created_at + timedelta(hours=1), min(repo.updated_at, anchor_for(now)))
    span = (end - repo.created_at).total_seconds()
    starts = sorted(repo.created_at + timedelta(seconds=int(span * rng.random())) for _ in range(_pull_count(rng)))
    ids = _id_makers()
    phrases = [p for key in repo.themes for p in THEMES[key].phrases] or ["the build"]
    busy = random.Random(f"{seed}:threads:{repo.id}")
    return [_pull(rng, busy, repo, number, created, end, people, ids, phrases)
            for number, created in enumerate(starts, start=1)]


def _pull(rng: random.Random, busy: random.Random, repo: Repo, number: int, created: datetime, end: datetime,
          people: list[Person], ids: dict[str, _Ids], phrases: list[str]) -> PullRequest:
    author = _pick(rng, people)
    title = f"{rng.choice(VERBS)} {rng.choice(phrases)}"
    roll = rng.random()
    state = "MERGED" if roll < 0.6 else "CLOSED" if roll < 0.75 else "OPEN"
    life = timedelta(seconds=int(rng.random() ** 2 * max(60, (end - created).total_seconds())) + 60)
    closed = created + life if state != "OPEN" else None
    last = closed or max(end, created + timedelta(minutes=1))
    pr = PullRequest(
        repo_id=repo.id, id=ids["pr"].at(created), number=number, title=title,
        body="" if rng.random() < 0.15 else f"{title}.\n\nThis change {rng.choice(phrases)}.",
        state=state, is_draft=state == "OPEN" and rng.random() < 0.2, author=author,
        merged_by=_pick(rng, people, 0.02) if state == "MERGED" else None, base_ref=repo.default_branch,
        head_ref=f"{(author.login if author else 'ghost').replace('[bot]', '')}/change-{number}",
        merge_oid=_oid(rng) if state == "MERGED" else None, changed_files=0,
        created_at=created, updated_at=created, closed_at=closed, merged_at=closed if state == "MERGED" else None)
    pr.commits = _commits(rng, pr, _count(rng, 0.03, (1, 12), (101, 260)), created - timedelta(days=rng.randint(0, 6)),
                          last, people)
    pr.changed_files = min(3000, max(1, len(pr.commits) // 2 + rng.randint(0, 8)))
    pr.reviews = _reviews(rng, pr, _count(rng, 0.015, (0, 4), (101, 140)), last, people, ids["review"])
    pr.comments = _comments(rng, _count(rng, 0.02, (0, 6), (101, 180)), created, last, people, ids["comment"])
    pr.threads = _threads(rng, busy, pr, last, people, ids["thread"], ids["comment"])
    moments = [created, *(c.committed_at for c in pr.commits), *(r.updated_at for r in pr.reviews),
               *(c.updated_at for c in pr.comments), *(c.updated_at for c in pr.review_comments)]
    pr.updated_at = max([*moments, closed or created])
    return pr


def _between(rng: random.Random, start: datetime, stop: datetime) -> datetime:
    seconds = max(1, int((stop - start).total_seconds()))
    return start + timedelta(seconds=rng.randint(1, seconds))


def _commits(rng: random.Random, pr: PullRequest, count: int, start: datetime, stop: datetime,
             people: list[Person]) -> list[Commit]:
    """Commits in branch order; authored dates may predate the pull request (work started earlier)."""
    moments = sorted(_between(rng, start, stop) for _ in range(count))
    commits = []
    for moment in moments:
        author = pr.author if pr.author is not None and rng.random() < 0.8 else _pick(rng, people)
        name = author.name if author else "Former Contributor"
        email = author.email if author else "former@example.com"
        linked = author if author is not None and rng.random() < 0.92 else None
        headline = f"{rng.choice(VERBS)} {rng.choice(FILES).rsplit('/', 1)[-1]}"
        commits.append(Commit(
            oid=_oid(rng), message=headline + ("" if rng.random() < 0.6 else "\n\nDetails in the pull request."),
            authored_at=moment, committed_at=max(moment, min(stop, moment + timedelta(seconds=rng.randint(0, 3600)))),
            additions=int(rng.paretovariate(1.3) * 5), deletions=int(rng.paretovariate(1.5) * 2),
            author_name=name, author_email=email, author=linked,
            committer_name="GitHub" if rng.random() < 0.2 else name))
    return commits


def _reviews(rng: random.Random, pr: PullRequest, count: int, stop: datetime, people: list[Person],
             ids: _Ids) -> list[Review]:
    """Reviews after the pull request opened; a PENDING review has no submittedAt."""
    moments = sorted(_between(rng, pr.created_at, stop) for _ in range(count))
    reviews = []
    for moment in moments:
        roll = rng.random()
        state = ("APPROVED" if roll < 0.45 else "COMMENTED" if roll < 0.75 else "CHANGES_REQUESTED" if roll < 0.9
                 else "DISMISSED" if roll < 0.95 else "PENDING")
        commit = rng.choice(pr.commits).oid if pr.commits else None
        reviews.append(Review(ids.at(moment), state, _pick(rng, people), rng.choice(REVIEW_BODIES), moment,
                              None if state == "PENDING" else moment, moment, commit))
    return reviews


def _comments(rng: random.Random, count: int, start: datetime, stop: datetime, people: list[Person],
              ids: _Ids) -> list[IssueComment]:
    moments = sorted(_between(rng, start, stop) for _ in range(count))
    comments = []
    for moment in moments:
        edited = moment + timedelta(minutes=rng.randint(1, 90)) if rng.random() < 0.1 else moment
        comments.append(IssueComment(ids.at(moment), _pick(rng, people), rng.choice(COMMENT_BODIES), moment,
                                     min(edited, max(stop, moment))))
    return comments


def _threads(rng: random.Random, busy: random.Random, pr: PullRequest, stop: datetime, people: list[Person],
             ids: _Ids, comment_ids: _Ids) -> list[ReviewThread]:
    """Inline threads on submitted reviews: a first comment, then replies to it.

    `rng` draws the ordinary threads, `busy` whether this pull request has many threads and
    which threads are long discussions, and everything of those extra threads and replies.
    """
    submitted = [r for r in pr.reviews if r.submitted_at is not None]
    if not submitted:
        return []
    ordinary = rng.randint(0, 3)
    total = max(ordinary, busy.randint(*MANY_THREADS_RANGE)) if busy.random() < MANY_THREADS else ordinary
    threads = []
    for n in range(total):
        draw = rng if n < ordinary else busy
        review = draw.choice(submitted)
        start = review.submitted_at or pr.created_at
        thread = ReviewThread(ids.at(start), draw.choice(FILES), draw.choice((None, *range(1, 400))),
                              draw.random() < 0.4, draw.random() < 0.15)
        later = max(stop, start + timedelta(minutes=1))
        moments = sorted(_between(draw, start, later)
                         for _ in range(draw.randint(0, 4) if n < ordinary else draw.randint(0, 1)))
        first = _thread_comments(draw, thread, review, [start, *moments], people, comment_ids, None)
        if busy.random() < LONG_THREAD:
            # The rest of a long discussion, after what the thread's own draw gave it.
            begun = thread.comments[-1].created_at
            more = sorted(_between(busy, begun, max(later, begun + timedelta(minutes=1)))
                          for _ in range(busy.randint(*LONG_THREAD_RANGE) - len(thread.comments)))
            _thread_comments(busy, thread, review, more, people, comment_ids, first)
        threads.append(thread)
    return threads


def _thread_comments(rng: random.Random, thread: ReviewThread, review: Review, moments: list[datetime],
                     people: list[Person], comment_ids: _Ids, first: ReviewComment | None) -> ReviewComment | None:
    """Comments at these moments appended to the thread, each a reply to its first; returns that first."""
    for moment in moments:
        comment = ReviewComment(comment_ids.at(moment), _pick(rng, people), rng.choice(COMMENT_BODIES),
                                thread.path, thread.line, moment, moment, review.id,
                                None if first is None else first.id)
        first = first or comment
        thread.comments.append(comment)
    return first


# ----- the store ----------------------------------------------------------------------------

class PullStore:
    """Pull requests per repository, generated on first access and then mutated by control calls.

    Shares the repository store's lock, so a request sees a repository and its pull requests in
    one consistent state.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        # At most this many of a pull request's commits in PullRequest.commits (None: all of them),
        # totalCount still the real number. REST's "list commits on a pull request" is documented
        # to stop at 250; GraphQL's connection is not documented to, and projects that meet the
        # REST cap (dcoapp/app#310, linuxfoundation/easycla#4801) move to GraphQL to read past
        # it, so the sandbox serves all by default and `set_pull_commits_cap` turns a cap on.
        self.commit_cap: int | None = None
        self._pulls: dict[int, list[PullRequest]] = {}
        self._people: dict[str, list[Person]] = {}
        self._ids = _id_makers()

    def people(self, owner: str) -> list[Person]:
        with self.store.lock:
            key = owner.lower()
            if key not in self._people:
                self._people[key] = people_of(owner, self.store.seed)
            return self._people[key]

    def person(self, login: str) -> Person | None:
        with self.store.lock:
            for owner in self.store.owners():
                found = next((p for p in self.people(owner.login) if p.login.lower() == login.lower()), None)
                if found is not None:
                    return found
            return None

    def of(self, repo: Repo) -> list[PullRequest]:
        """The repository's pull requests in number order (generated on first call).

        Generation runs outside the lock, so REST requests are not held up by a first GraphQL
        search over a large organization; callers must not hold the lock when calling this.
        """
        pulls = self._pulls.get(repo.id)
        if pulls is not None:
            return pulls
        generated = generate_pulls(repo, self.store.seed, self.people(repo.owner), now_utc())
        with self.store.lock:
            return self._pulls.setdefault(repo.id, generated)

    def get(self, repo: Repo, number: int) -> PullRequest:
        pull = next((p for p in self.of(repo) if p.number == number), None)
        if pull is None:
            raise KeyError(f"no pull request #{number} in {repo.full_name}")
        return pull

    def by_id(self, repo: Repo, pull_id: int) -> PullRequest | None:
        return next((p for p in self.of(repo) if p.id == pull_id), None)

    # ----- mutations: each moves the pull request's updatedAt to now --------------------------

    def _actor(self, repo: Repo, login: str | None) -> Person | None:
        if login is None:
            return self.people(repo.owner)[0]
        found = self.person(login)
        if found is None:
            raise KeyError(f"no person {login!r} in the sandbox")
        return found

    def touch(self, repo: Repo, number: int, **changes: Any) -> PullRequest:
        allowed = {"title", "body", "is_draft", "state"}
        unknown = set(changes) - allowed
        if unknown:
            raise TypeError(f"cannot set {', '.join(sorted(unknown))}; settable: {', '.join(sorted(allowed))}")
        with self.store.lock:
            pull = self.get(repo, number)
            moment = now_utc()
            state = changes.pop("state", pull.state)
            if state not in ("OPEN", "CLOSED", "MERGED"):
                raise ValueError("state must be OPEN, CLOSED or MERGED")
            if state != pull.state:
                _set_state(pull, state, moment)
            for key, value in changes.items():
                setattr(pull, key, value)
            pull.touched(moment)
            return pull

    def add(self, repo: Repo, title: str, author: str | None = None, body: str = "", commits: int = 1) -> PullRequest:
        with self.store.lock:
            pulls = self.of(repo)
            moment = now_utc()
            person = self._actor(repo, author)
            number = max((p.number for p in pulls), default=0) + 1
            pull = PullRequest(repo.id, self._ids["pr"].at(moment), number, title, body, "OPEN", False, person, None,
                               repo.default_branch, f"{person.login if person else 'ghost'}/change-{number}", None,
                               1, moment, moment, None, None)
            pull.commits = self._new_commits(pull, commits, moment)
            pulls.append(pull)
            return pull

    def comment(self, repo: Repo, number: int, body: str, author: str | None = None) -> IssueComment:
        with self.store.lock:
            pull = self.get(repo, number)
            moment = now_utc()
            comment = IssueComment(self._ids["comment"].at(moment), self._actor(repo, author), body, moment, moment)
            pull.comments.append(comment)
            pull.touched(moment)
            return comment

    def review(self, repo: Repo, number: int, state: str = "APPROVED", body: str = "",
               author: str | None = None) -> Review:
        if state not in ("APPROVED", "COMMENTED", "CHANGES_REQUESTED", "DISMISSED", "PENDING"):
            raise ValueError("state must be APPROVED, COMMENTED, CHANGES_REQUESTED, DISMISSED or PENDING")
        with self.store.lock:
            pull = self.get(repo, number)
            moment = now_utc()
            review = Review(self._ids["review"].at(moment), state, self._actor(repo, author), body, moment,
                            None if state == "PENDING" else moment, moment,
                            pull.commits[-1].oid if pull.commits else None)
            pull.reviews.append(review)
            pull.touched(moment)
            return review

    def delete_comment(self, repo: Repo, number: int, external_id: str) -> PullRequest:
        """Remove an issue comment (IC_ id) or a review comment (PRRC_ id); a thread left empty goes too."""
        parsed = parse_node_id(external_id)
        if parsed is None or parsed[0] not in ("IC", "PRRC") or len(parsed[1]) != 2:
            raise ValueError(f"not an issue or review comment id: {external_id!r}")
        wanted = parsed[1][1]
        with self.store.lock:
            pull = self.get(repo, number)
            before = len(pull.comments) + len(pull.review_comments)
            if parsed[0] == "IC":
                pull.comments = [c for c in pull.comments if c.id != wanted]
            else:
                for thread in pull.threads:
                    thread.comments = [c for c in thread.comments if c.id != wanted]
                pull.threads = [t for t in pull.threads if t.comments]
            if len(pull.comments) + len(pull.review_comments) == before:
                raise KeyError(f"no comment {external_id} on {repo.full_name}#{number}")
            pull.touched(now_utc())
            return pull

    def force_push(self, repo: Repo, number: int, commits: int = 1) -> PullRequest:
        """Replace the branch's commits: the old ones disappear from the pull request."""
        if commits < 1:
            raise ValueError("a pull request keeps at least one commit")
        with self.store.lock:
            pull = self.get(repo, number)
            moment = now_utc()
            pull.rewritten.extend(pull.commits)
            pull.commits = self._new_commits(pull, commits, moment)
            pull.touched(moment)
            return pull

    def _new_commits(self, pull: PullRequest, count: int, moment: datetime) -> list[Commit]:
        rng = random.Random(f"{self.store.seed}:push:{pull.repo_id}:{pull.number}:{moment.isoformat()}:{count}")
        name = pull.author.name if pull.author else "Former Contributor"
        email = pull.author.email if pull.author else "former@example.com"
        return [Commit(_oid(rng), f"Update {rng.choice(FILES)}", moment - timedelta(seconds=count - i),
                       moment - timedelta(seconds=count - i), rng.randint(1, 40), rng.randint(0, 10), name, email,
                       pull.author, name) for i in range(count)]


def _set_state(pull: PullRequest, state: str, moment: datetime) -> None:
    pull.state = state
    pull.closed_at = None if state == "OPEN" else moment
    pull.merged_at = moment if state == "MERGED" else None
    pull.merge_oid = hashlib.sha1(f"{pull.node_id}:{moment}".encode()).hexdigest() if state == "MERGED" else None
    pull.is_draft = pull.is_draft and state == "OPEN"


# ----- ground truth for tests ---------------------------------------------------------------

def _login(person: Person | None) -> str | None:
    return None if person is None else person.login


def served_commits(pull: PullRequest, cap: int | None) -> list[Commit]:
    """The commits PullRequest.commits lists, oldest first: the first ``cap`` if there is a cap."""
    return pull.commits if cap is None else pull.commits[:cap]


def ground_truth(pull: PullRequest, url: str, commit_cap: int | None = None) -> dict[str, Any]:
    """A pull request as the Phase 4 tables should hold it (column names of DESIGN.md), with children:
    the commits GitHub lists (see ``PullStore.commit_cap``), ``commits_total`` all of them."""
    served = served_commits(pull, commit_cap)
    author = _login(pull.author)
    by_others = [r.submitted_at for r in pull.reviews
                 if r.submitted_at is not None and (r.author is None or r.author.login != author)]
    approvals = [r.submitted_at for r in pull.reviews if r.submitted_at is not None and r.state == "APPROVED"]
    review_ids = {r.id: node_id("PRR", pull.repo_id, r.id) for r in pull.reviews}
    return {
        "external_id": pull.node_id, "database_id": pull.id, "number": pull.number, "title": pull.title,
        "body": pull.body, "url": url, "state": pull.state, "is_draft": pull.is_draft, "author_login": author,
        "merged_by_login": _login(pull.merged_by), "base_ref": pull.base_ref, "head_ref": pull.head_ref,
        "merge_commit_sha": pull.merge_oid, "additions": pull.additions, "deletions": pull.deletions,
        "changed_files": pull.changed_files, "commits_total": len(pull.commits), "reviews_total": len(pull.reviews),
        "comments_total": len(pull.comments), "review_decision": pull.review_decision,
        "gh_created_at": pull.created_at, "gh_updated_at": pull.updated_at, "closed_at": pull.closed_at,
        "merged_at": pull.merged_at,
        "first_commit_at": min((c.authored_at for c in served), default=None),
        "first_review_at": min(by_others, default=None),
        "first_approval_at": min(approvals, default=None),
        "commits": [{"sha": c.oid, "message_headline": c.message.split("\n", 1)[0], "author_name": c.author_name,
                     "author_email": c.author_email, "author_login": _login(c.author), "authored_at": c.authored_at,
                     "committer_name": c.committer_name, "committed_at": c.committed_at, "additions": c.additions,
                     "deletions": c.deletions} for c in served],
        "reviews": [{"external_id": review_ids[r.id], "state": r.state, "author_login": _login(r.author),
                     "body": r.body, "submitted_at": r.submitted_at, "commit_sha": r.commit_oid}
                    for r in pull.reviews],
        "comments": [{"external_id": node_id("IC", pull.repo_id, c.id), "kind": "issue",
                      "author_login": _login(c.author), "body": c.body, "gh_created_at": c.created_at,
                      "gh_updated_at": c.updated_at} for c in pull.comments]
                    + [{"external_id": node_id("PRRC", pull.repo_id, c.id), "kind": "review",
                        "author_login": _login(c.author), "body": c.body, "gh_created_at": c.created_at,
                        "gh_updated_at": c.updated_at, "path": c.path, "line": c.line,
                        "thread_external_id": node_id("PRRT", pull.repo_id, t.id),
                        "review_external_id": review_ids.get(c.review_id),
                        "reply_to_external_id": None if c.reply_to is None else node_id("PRRC", pull.repo_id,
                                                                                         c.reply_to),
                        "thread_resolved": t.resolved} for t in pull.threads for c in t.comments],
    }
