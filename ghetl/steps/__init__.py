"""The registry of steps: each step is one module holding every stage of one GitHub entity.

A step module provides `extract` (batches of API payloads), `to_row` (one payload to one row),
`upsert` (a batch of rows into its table) and `embed_text` (the text that represents a row,
from the columns it names in `EMBED_COLUMNS`).
The worker loop, the broker and the status code only ever go through this registry, so adding
pull requests means adding `steps/pull_requests.py` and one line below.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import sqlalchemy as sa

JOB_NAME = "GitHub"


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


@dataclass(frozen=True)
class Step:
    name: str
    display_name: str
    order: int
    table: sa.Table
    extract: Callable[[Any], Iterator[Batch]]
    to_row: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]
    upsert: Callable[[sa.Connection, list[dict[str, Any]]], None]
    embed_text: Callable[[dict[str, Any]], str]
    embed_columns: tuple[str, ...]

    @property
    def table_name(self) -> str:
        return self.table.name

    @property
    def embedded_columns(self) -> list[sa.Column]:
        """What the embedding stage reads of a row: its id and what `embed_text` uses; the whole
        row (25 columns, timestamps converted one by one) cost a seventh of that stage."""
        return [self.table.c.external_id, *(self.table.c[name] for name in self.embed_columns)]


def _from_module(module: ModuleType) -> Step:
    return Step(
        name=module.STEP_NAME,
        display_name=module.DISPLAY_NAME,
        order=module.ORDER,
        table=module.TABLE,
        extract=module.extract,
        to_row=module.to_row,
        upsert=module.upsert,
        embed_text=module.embed_text,
        embed_columns=module.EMBED_COLUMNS,
    )


def _load() -> dict[str, Step]:
    from . import repositories

    steps = [_from_module(repositories)]
    return {s.name: s for s in sorted(steps, key=lambda s: s.order)}


_REGISTRY: dict[str, Step] | None = None


def registry() -> dict[str, Step]:
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = _load()
    return _REGISTRY


def get(name: str) -> Step:
    try:
        return registry()[name]
    except KeyError:
        raise KeyError(f"unknown step '{name}'; known steps: {', '.join(registry())}") from None


@dataclass
class ExtractContext:
    """What a step's `extract` gets: the run's client and settings, and where to report."""

    client: Any
    engine: sa.Engine
    tenant_id: int
    integration: dict[str, Any]
    settings: dict[str, Any]
    cutoff: Any
    full: bool
    stats: dict[str, int]
    retry_ids: set[str] = field(default_factory=set)
