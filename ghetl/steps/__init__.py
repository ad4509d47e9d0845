"""The steps of the GitHub job: each step is one module holding every stage of one entity.

How to add an entity (pull requests, issues, releases, ...):

1. Write `ghetl/steps/<entity>.py` declaring
   - `STEP_NAME` (the key in the job's status JSON and in messages), `DISPLAY_NAME`, `ORDER`
     (its place in the job) and `TABLE` (the table its transform writes, with `tenant_id`,
     `integration_id` and a unique `external_id`); `TABLES` when it writes child tables too;
   - `DEPENDS_ON`: the step whose items it needs (pull requests need repositories), or None;
   - `extract(ctx: ExtractContext) -> Iterator[Batch]`: pages of API payloads. A dependent
     step iterates `ctx.parents()`, which yields the parent step's items of this run as soon
     as each one is transformed (its row exists), and ends when the parent's transform stage
     has ended; `ctx.wait_for_parent()` waits for that end when the step needs the parent's
     whole table instead. `collect` has what collectors share: `collect.listing` (a REST
     listing, each page conditional on its ETag, side by side on a full run, stopping at the
     cut-off on an incremental one; `Listed.landing` remembers a page as its items land),
     `collect.in_chunks` (ids or parent items in chunks, the chunks side by side) and `collect.to_end` (a
     GraphQL connection by cursor to its end); requests through `ctx.client` are paced per
     token whichever thread sends them, and `ctx.count`/`ctx.first_time` are safe from any;
   - `key(payload) -> str` (optional; default `str(payload["id"])`): the payload's GitHub id;
   - `parent_key(payload) -> str` (dependent steps): the parent's external id, which is stored
     with the raw payload and reaches `to_row` as `ctx["parent_external_id"]`;
   - `to_row(payload, ctx) -> dict` and `upsert(conn, rows)`: the transform stage (`ctx` also
     has `fetched_at`; `db.upsert(..., newest=(version column, "fetched_at"))` keeps a late
     older payload from replacing a newer row);
   - `EMBED_COLUMNS` and `embed_text(row) -> str`: what the embedding stage reads and embeds.
2. Define its tables in `ghetl/store/db.py`, and write their Alembic revision in
   `ghetl/store/migrations/versions/` (`alembic -c ghetl/store/migrations/alembic.ini revision
   --autogenerate -m "<entity> tables"`, see `ghetl/store/migrate.py`); a test checks that a new
   database is exactly the tables in code.
3. Add the module's name to `BUILTIN` below.

Nothing else changes: the sync extracts every registered step (a dependent one alongside its
parent), the workers run any step's stages, completion is counted per step and stage, and each
step gets its own embedding catch-up (rows without a vector of the current model) with its
last item. `register()` adds a step from outside the library; `registered()` runs a block with
exactly the given steps, which is how a test defines a job of its own.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, TypedDict

import sqlalchemy as sa

from ..store.db import etl_jobs, raw_extraction_data

log = logging.getLogger(__name__)

JOB_NAME = "GitHub"
BUILTIN = ("repositories", "pull_requests")
PARENT_POLL_SECONDS = 0.2


@dataclass
class Batch:
    """A page of payloads to store, and what to record in the same transaction as they land.

    `landed` is how a step remembers a page (its ETag) exactly when its items are stored: not
    before, or a crash would leave the page marked as seen without its items; not in a
    transaction of its own, which would cost a commit per page. A batch may have no payloads
    and only something to record (a page whose repositories the settings all leave out).
    """

    payloads: list[dict[str, Any]]
    landed: Callable[[sa.Connection], None] | None = None


class RowContext(TypedDict, total=False):
    """What `to_row` knows besides the payload: whose row it is, its parent's GitHub id, and
    when the payload was fetched (what orders two payloads of the same GitHub version)."""

    tenant_id: int | None
    integration_id: int | None
    parent_external_id: str | None
    fetched_at: dt.datetime | None


def _payload_id(payload: dict[str, Any]) -> str:
    return str(payload["id"])


@dataclass(frozen=True)
class Step:
    name: str
    display_name: str
    order: int
    table: sa.Table
    extract: Callable[[ExtractContext], Iterator[Batch]]
    to_row: Callable[[dict[str, Any], RowContext], dict[str, Any]]
    upsert: Callable[[sa.Connection, list[dict[str, Any]]], None]
    embed_text: Callable[[dict[str, Any]], str]
    embed_columns: tuple[str, ...]
    depends_on: str | None = None
    tables: tuple[sa.Table, ...] = ()
    key: Callable[[dict[str, Any]], str] = _payload_id
    parent_key: Callable[[dict[str, Any]], str] | None = None

    @property
    def table_name(self) -> str:
        return self.table.name

    @property
    def embedded_columns(self) -> list[sa.Column[Any]]:
        """What the embedding stage reads of a row: its id and what `embed_text` uses; the whole
        row (25 columns, timestamps converted one by one) cost a seventh of that stage."""
        return [self.table.c.external_id, *(self.table.c[name] for name in self.embed_columns)]

    @classmethod
    def from_module(cls, module: ModuleType) -> Step:
        """The step a module declares (see this package's docstring for the names)."""
        return cls(
            name=module.STEP_NAME,
            display_name=module.DISPLAY_NAME,
            order=module.ORDER,
            table=module.TABLE,
            extract=module.extract,
            to_row=module.to_row,
            upsert=module.upsert,
            embed_text=module.embed_text,
            embed_columns=tuple(module.EMBED_COLUMNS),
            depends_on=getattr(module, "DEPENDS_ON", None),
            tables=tuple(getattr(module, "TABLES", (module.TABLE,))),
            key=getattr(module, "key", _payload_id),
            parent_key=getattr(module, "parent_key", None),
        )


def _checked(found: Sequence[Step]) -> dict[str, Step]:
    """The steps by name in job order; a step whose parent is missing or comes later is refused."""
    ordered = sorted(found, key=lambda s: s.order)
    by_name: dict[str, Step] = {}
    for step in ordered:
        if step.name in by_name:
            raise ValueError(f"two steps are named '{step.name}'")
        if step.depends_on is not None and step.depends_on not in by_name:
            raise ValueError(
                f"step '{step.name}' depends on '{step.depends_on}', which is not an earlier step of the job"
            )
        if step.depends_on is not None and step.parent_key is None:
            raise ValueError(f"step '{step.name}' depends on '{step.depends_on}' but declares no parent_key")
        by_name[step.name] = step
    return by_name


_REGISTRY: dict[str, Step] | None = None


def registry() -> dict[str, Step]:
    """The job's steps by name, in job order."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = _checked([Step.from_module(importlib.import_module(f"{__name__}.{m}")) for m in BUILTIN])
    return _REGISTRY


def register(step: Step | ModuleType) -> Step:
    """Add a step to the job (a module as described above, or a Step)."""
    global _REGISTRY
    found = step if isinstance(step, Step) else Step.from_module(step)
    _REGISTRY = _checked([*registry().values(), found])
    return found


@contextlib.contextmanager
def registered(*found: Step | ModuleType) -> Iterator[dict[str, Step]]:
    """Run a block with exactly these steps as the job's, then restore the job's own."""
    global _REGISTRY
    before = registry()
    _REGISTRY = _checked([s if isinstance(s, Step) else Step.from_module(s) for s in found])
    try:
        yield _REGISTRY
    finally:
        _REGISTRY = before


def get(name: str) -> Step:
    try:
        return registry()[name]
    except KeyError:
        raise KeyError(f"unknown step '{name}'; known steps: {', '.join(registry())}") from None


@dataclass(frozen=True)
class ParentItem:
    """An item of the parent step in this run whose row is stored."""

    raw_data_id: int
    external_id: str
    payload: dict[str, Any]


@dataclass
class ExtractContext:
    """What a step's `extract` gets: the run's client and settings, and where to report.

    `warnings` collects the gaps of the run (results GitHub left incomplete, items skipped):
    the run still finishes, with them in its status, and its cut-off does not pass them.
    """

    client: Any
    engine: sa.Engine
    tenant_id: int
    integration: dict[str, Any]
    settings: dict[str, Any]
    cutoff: Any
    full: bool
    stats: dict[str, int]
    retry_ids: set[str] = field(default_factory=set)
    run_id: str | None = None
    job_id: int | None = None
    step: str | None = None
    depends_on: str | None = None
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, name: str, n: int = 1) -> None:
        """Add to one of the run's stats; a step's requests run in several threads at once."""
        with self._lock:
            self.stats[name] = self.stats.get(name, 0) + n

    def first_time(self, seen: set[str], key: str) -> bool:
        """Whether `key` is new to `seen` (and now in it): an item is fetched at most once per run."""
        with self._lock:
            if key in seen:
                return False
            seen.add(key)
            return True

    def warn(self, message: str) -> None:
        """Record a gap of this run: logged now, shown in the run's status, and it holds the cut-off."""
        log.warning("%s", message)
        self.warnings.append(message)

    def note(self, message: str) -> None:
        """Record a limit of GitHub's that no later run gets past (e.g. the 250 commits it lists of a
        pull request): logged now and shown in the run's status like a warning, but it does not
        hold the cut-off, which would otherwise never move again."""
        log.warning("%s", message)
        with self._lock:
            self.notes.append(message)

    def parents(self) -> Iterator[ParentItem]:
        """The parent step's items of this run, each as soon as its transform has stored its row.

        Polls the run's raw items: those at or below `floor` have all left `pending`, so each
        poll reads only what is above it. Ends once the parent's transform circle has ended and
        nothing new is left, or when the run is no longer the job's current one.
        """
        if self.depends_on is None or self.run_id is None or self.job_id is None:
            raise ValueError(f"step '{self.step}' has no parent step to iterate")
        floor, seen = 0, set[int]()
        while True:
            ended = _parent_transform_ended(self.engine, self.job_id, self.run_id, self.depends_on)
            with self.engine.connect() as conn:
                rows = conn.execute(_PARENT_ITEMS, {"run": self.run_id, "step": self.depends_on, "floor": floor}).all()
            waiting = False
            for row in rows:
                if row.status == "pending":
                    waiting = True
                    continue
                if not waiting:
                    floor = row.id
                if row.id not in seen and row.status in ("transformed", "embedded"):
                    seen.add(row.id)
                    yield ParentItem(row.id, row.external_id, row.raw_data)
            seen = {i for i in seen if i > floor}
            if ended is not False:
                return
            time.sleep(PARENT_POLL_SECONDS)

    def wait_for_parent(self) -> None:
        """Return once the parent step's transform stage has ended in this run."""
        for _ in self.parents():
            pass


_PARENT_ITEMS = (
    sa.select(raw_extraction_data.c.id, raw_extraction_data.c.external_id, raw_extraction_data.c.status,
              raw_extraction_data.c.raw_data)
    .where(raw_extraction_data.c.run_id == sa.bindparam("run"),
           raw_extraction_data.c.entity_type == sa.bindparam("step"),
           raw_extraction_data.c.id > sa.bindparam("floor"))
    .order_by(raw_extraction_data.c.id)
)


def _parent_transform_ended(engine: sa.Engine, job_id: int, run_id: str, parent: str) -> bool | None:
    """Whether the parent's transform circle has ended in this run; None when the run itself is over.

    Read before the items, so that items stored before the end are all seen by the read after it.
    """
    with engine.connect() as conn:
        job = conn.execute(sa.select(etl_jobs.c.run_id, etl_jobs.c.status).where(etl_jobs.c.id == job_id)).one()
    if job.run_id != run_id or job.status["overall"] != "RUNNING":
        return None
    return job.status["steps"][parent]["transform"] in ("finished", "failed")
