"""Retention: what syncs leave behind (raw payloads, run records, listing ETags) is deleted
once nothing can need it any more.

Every run stores each payload it fetched, so without pruning `raw_extraction_data` grows by a
whole listing per full run. A run is *retained* when it is among its job's `keep_runs` most
recent, younger than `older_than_days`, still RUNNING, or its job's current run; the others go,
with their item counts. A raw row goes only when all of these hold:

- its run is not retained, or is gone already;
- its item is finished (`embedded`): a `pending`, `transformed` or `failed` row is work that a
  later run or a dead-letter replay still does;
- it is not younger than the age limit either (rows of older ghetl versions have no run);
- it is not the newest row of its item (tenant, integration, entity type, external id): a full
  run given a 304 for a listing page reads the page's payloads back by external id
  (`http_cache.PageCache.payloads`), newest first, and must find every one.

`ghetl sync` applies the default retention to its tenant after a FINISHED run, when `due` says
there is something to delete (GHETL_PRUNE_ON_SYNC=0 turns that off).

ETags are kept unless they were stored under settings other than the integration's current
ones: such an entry can never be used again (`PageCache.get` ignores it). An entry is not
removed for its age: an unchanged page is answered 304 and never rewritten, which is the point.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .. import settings as settings_mod
from ..store import http_cache as http_cache_mod
from ..store.db import etl_job_runs, etl_jobs, etl_run_counts, http_cache, integrations, raw_extraction_data, utcnow

DEFAULT_KEEP_RUNS = 5
DEFAULT_OLDER_THAN_DAYS = 30.0
UNFINISHED = ("pending", "transformed", "failed")


def prune(
    conn: Connection,
    *,
    keep_runs: int = DEFAULT_KEEP_RUNS,
    older_than_days: float = DEFAULT_OLDER_THAN_DAYS,
    tenant_id: int | None = None,
    dry_run: bool = False,
) -> dict[str, int]:
    """Delete (or with `dry_run` only count) what the retention rules above let go; return the
    number of rows per table. Run it in one transaction: raw rows and counts are chosen by the
    runs that survive, which are deleted last."""
    if keep_runs < 1:
        raise ValueError(f"keep_runs must be 1 or more (a job's latest run is its status), got {keep_runs}")
    cutoff = utcnow() - dt.timedelta(days=older_than_days)
    survivors = sa.select(etl_job_runs.c.run_id).where(
        etl_job_runs.c.run_id.not_in(_prunable_runs(keep_runs, cutoff, tenant_id))
    )
    targets = [
        (raw_extraction_data, _raw_to_delete(survivors, cutoff, tenant_id)),
        (etl_run_counts, etl_run_counts.c.run_id.not_in(survivors)),
        (http_cache, _stale_etags(conn, tenant_id)),
        (etl_job_runs, etl_job_runs.c.run_id.not_in(survivors)),
    ]
    counts = {}
    for table, where in targets:
        if dry_run:
            counts[table.name] = conn.execute(sa.select(sa.func.count()).select_from(table).where(where)).scalar_one()
        else:
            counts[table.name] = conn.execute(table.delete().where(where)).rowcount
    return counts


def due(conn: Connection, *, tenant_id: int | None = None) -> bool:
    """Whether the default retention has any run to let go: one query on the runs table, which
    holds a few rows per job, so a sync can ask after every run and prune only when it must."""
    cutoff = utcnow() - dt.timedelta(days=DEFAULT_OLDER_THAN_DAYS)
    runs = _prunable_runs(DEFAULT_KEEP_RUNS, cutoff, tenant_id).limit(1)
    return conn.execute(runs).first() is not None


def _prunable_runs(keep_runs: int, cutoff: dt.datetime, tenant_id: int | None) -> sa.Select[Any]:
    """Runs that are not retained: beyond their job's `keep_runs` newest, older than `cutoff`,
    ended, and not their job's current run (which its status and `ghetl jobs` describe, even if
    a host's clock made a later run look older)."""
    runs = etl_job_runs
    rank = sa.func.row_number().over(
        partition_by=runs.c.job_id, order_by=(runs.c.started_at.desc(), runs.c.run_id.desc())
    )
    ranked = sa.select(
        runs.c.run_id, runs.c.tenant_id, runs.c.started_at, runs.c.overall, rank.label("rank")
    ).subquery()
    current = sa.select(etl_jobs.c.run_id).where(etl_jobs.c.run_id.is_not(None))
    query = sa.select(ranked.c.run_id).where(ranked.c.rank > keep_runs, ranked.c.started_at < cutoff,
                                             ranked.c.overall != "RUNNING", ranked.c.run_id.not_in(current))
    return query if tenant_id is None else query.where(ranked.c.tenant_id == tenant_id)


def _raw_to_delete(survivors: sa.Select[Any], cutoff: dt.datetime, tenant_id: int | None) -> Any:
    raw = raw_extraction_data
    newest = sa.select(sa.func.max(raw.c.id)).group_by(raw.c.tenant_id, raw.c.integration_id, raw.c.entity_type,
                                                        raw.c.external_id)
    where = sa.and_(
        sa.or_(raw.c.run_id.is_(None), raw.c.run_id.not_in(survivors)),
        raw.c.created_at < cutoff,
        raw.c.status.not_in(UNFINISHED),
        raw.c.id.not_in(newest if tenant_id is None else newest.where(raw.c.tenant_id == tenant_id)),
    )
    return where if tenant_id is None else sa.and_(where, raw.c.tenant_id == tenant_id)


def _stale_etags(conn: Connection, tenant_id: int | None) -> Any:
    """Cache entries written under settings the integration no longer has."""
    query = sa.select(integrations.c.id, integrations.c.settings)
    if tenant_id is not None:
        query = query.where(integrations.c.tenant_id == tenant_id)
    current = [
        sa.and_(http_cache.c.integration_id == row.id,
                sa.func.coalesce(http_cache.c.fingerprint, "")
                != http_cache_mod.fingerprint(settings_mod.parse(row.settings, stored=True)))
        for row in conn.execute(query)
    ]
    return sa.or_(sa.false(), *current)
