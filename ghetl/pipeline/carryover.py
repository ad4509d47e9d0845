"""Work that earlier runs left unfinished is the next run's work, whatever became of their messages.

A run can end before its items do: killed, timed out, its queued messages purged or lost with a
broker rebuilt without its disk. Their raw payloads are stored, and the listing pages' ETags
say they were fetched, so no listing would bring them again. Hence, when a run starts:

- items of earlier runs still `pending` or `transformed` move into it and are published again
  from their stored payload (`adopt`); one carried over GHETL_GIVE_UP_AFTER_RUNS times fails;
- items whose latest attempt failed are fetched again by id (`to_refetch`), from every earlier
  run, not only the last one: a run that failed at the listing never reached them.

An item that failed in GHETL_GIVE_UP_AFTER_RUNS runs in a row (3) is given up, with the reason
in the run's status, so that a payload no worker can store does not cost every run for ever. A given-up
repository comes back by itself when GitHub changes it (the listing brings it again).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .. import config
from ..store.db import raw_extraction_data
from . import jobs

raw = raw_extraction_data
EXAMPLES = 5


def give_up_after() -> int:
    """How many runs an item may take without reaching its final state."""
    return int(config.env_float("GHETL_GIVE_UP_AFTER_RUNS", 3, minimum=1))


@dataclass
class GivenUp:
    """Items of one step that no run will try again, with a few of their reasons."""

    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, external_id: str, reason: str) -> None:
        self.count += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append(f"{external_id}: {reason}")

    def as_dict(self) -> dict[str, Any]:
        return {"count": self.count, "examples": self.examples}


def adopt(conn: Connection, run: jobs.Run, step: str) -> list[dict[str, Any]]:
    """Move the job's unfinished items of earlier runs into `run`, pending again; return their
    transform message items.

    Their old runs' counts lose them and this run's gain them, in this transaction, so each run
    still counts only its own items. A late message of an old run finds them under another run
    id and moves nothing (the workers' updates match the run). Items carried over too often
    fail where they are instead, which makes them items to fetch again (`to_refetch`): call
    this first.
    """
    limit = give_up_after()
    found = conn.execute(
        sa.select(raw.c.id, raw.c.run_id, raw.c.status, raw.c.external_id, raw.c.parent_external_id,
                  raw.c.carried_over)
        .where(raw.c.tenant_id == run.tenant_id, raw.c.job_id == run.job_id, raw.c.entity_type == step,
               raw.c.status.in_(("pending", "transformed")), raw.c.run_id != run.run_id)
        .order_by(raw.c.id)
        .with_for_update()
    ).all()
    moved: Counter[tuple[str, str]] = Counter()
    taken: list[Any] = []
    dropped: list[Any] = []
    for row in found:
        moved[(row.run_id, row.status)] += 1
        (dropped if (row.carried_over or 0) + 1 >= limit else taken).append(row)
    for (old_run, status), n in moved.items():
        jobs.count_items(conn, old_run, step, {status: -n})
    if dropped:
        reason = f"given up: not finished in {limit} runs (its messages were lost or never handled)"
        _by_ids(conn, [r.id for r in dropped], status="failed", failed_stage="transform", error_message=reason)
        for old_run, n in Counter(r.run_id for r in dropped).items():
            jobs.count_items(conn, old_run, step, {"failed_transform": n})
    if taken:
        _by_ids(conn, [r.id for r in taken], run_id=run.run_id, status="pending",
                carried_over=sa.func.coalesce(raw.c.carried_over, 0) + 1)
        jobs.count_items(conn, run.run_id, step, {"pending": len(taken)})
    return [{"raw_data_id": r.id, "external_id": r.external_id, "parent_external_id": r.parent_external_id,
             "first_item": False, "last_item": False, "last_job_item": False} for r in taken]


def _by_ids(conn: Connection, ids: list[int], **values: Any) -> None:
    for start in range(0, len(ids), 1000):
        conn.execute(raw.update().where(raw.c.id.in_(ids[start:start + 1000])).values(**values))


def to_refetch(conn: Connection, run: jobs.Run, step: str, given_up: GivenUp) -> set[str]:
    """External ids whose latest item failed, in any earlier run, and that have not yet failed
    in GHETL_GIVE_UP_AFTER_RUNS runs in a row: this run fetches them again by id."""
    limit = give_up_after()
    later = raw.alias("later")
    succeeded_since = sa.exists().where(
        later.c.tenant_id == raw.c.tenant_id, later.c.entity_type == raw.c.entity_type,
        later.c.external_id == raw.c.external_id, later.c.job_id == raw.c.job_id,
        later.c.id > raw.c.id, later.c.status != "failed",
    )
    rows = conn.execute(
        sa.select(raw.c.external_id, raw.c.error_message)
        .where(raw.c.tenant_id == run.tenant_id, raw.c.job_id == run.job_id, raw.c.entity_type == step,
               raw.c.status == "failed", raw.c.run_id != run.run_id, ~succeeded_since)
        .order_by(raw.c.id)
    ).all()
    failures = Counter(r.external_id for r in rows)
    last_error = {r.external_id: r.error_message or "failed" for r in rows}
    retry = set()
    for external_id, n in failures.items():
        if n >= limit:
            given_up.add(external_id, f"given up after failing in {n} runs: {last_error[external_id]}")
        else:
            retry.add(external_id)
    return retry
