"""What is stored, as pandas DataFrames: repositories, pull requests and their flow metrics, raw
payloads, jobs, runs and what changed.

These are the tables an analyst would otherwise write SQL for, shaped for a notebook: one row
per thing, timestamps as timezone-aware datetimes, nested JSON flattened into dotted columns.
Every function reads only; each takes the tenant by name or id and the engine of
GHETL_DATABASE_URL unless one is given.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd
import sqlalchemy as sa

from .. import steps, tenants
from ..pipeline.sync import SyncResult
from ..status.events import STAGES
from ..store import db
from ..store.db import etl_job_runs, etl_jobs, raw_extraction_data
from ..store.db import pull_request_comments as comments_table
from ..store.db import pull_request_commits as commits_table
from ..store.db import pull_request_reviews as reviews_table
from ..store.db import pull_requests as pull_requests_table
from ..store.db import repositories as repositories_table
from ..store.db import tenants as tenants_table

DEFAULT_ENTITY = "github_repositories"
RAW_META = ["raw_id", "run_id", "external_id", "processing_status", "extracted_at"]
ROW_IDENTITY = {"tenant_id", "integration_id", "external_id", "content_hash", "fetched_at"}


def _engine(engine: sa.Engine | None) -> sa.Engine:
    return engine or db.engine()


def _tenant_id(conn: sa.Connection, tenant: str | int) -> int:
    return tenants.get_tenant(conn, tenant)["id"]


def repositories(tenant: str | int, *, include_inactive: bool = False, engine: sa.Engine | None = None) -> pd.DataFrame:
    """The tenant's `repositories` rows; repositories GitHub no longer has are left out unless asked for."""
    columns = [c for c in repositories_table.c if c.name not in ("tenant_id", "content_hash")]
    with _engine(engine).connect() as conn:
        query = sa.select(*columns).where(repositories_table.c.tenant_id == _tenant_id(conn, tenant))
        if not include_inactive:
            query = query.where(repositories_table.c.active.is_(True))
        rows = conn.execute(query.order_by(repositories_table.c.full_name)).mappings().all()
    return pd.DataFrame([dict(r) for r in rows], columns=[c.name for c in columns])


def pull_requests(
    tenant: str | int,
    *,
    since: dt.datetime | str | None = None,
    repository: str | None = None,
    engine: sa.Engine | None = None,
) -> pd.DataFrame:
    """The tenant's pull requests with the flow metrics engineering managers ask for.

    `since` keeps pull requests created at or after it; `repository` is a shell-style pattern on
    `owner/name`. Derived columns (Timedelta, NaT where the event has not happened):
    `time_to_first_review` (creation to the first submitted review by someone else; PENDING
    reviews do not count), `time_to_first_approval`, `review_time` (first review to merge),
    `time_to_merge` (creation to merge), `cycle_time` (first commit to merge), and `size`
    (additions + deletions). They are only as right as the data is complete, which is why the
    step reads every nested page before it stores a pull request.
    """
    frame = _of_pull_requests(pull_requests_table, tenant, since, repository, engine)
    frame["size"] = frame["additions"].fillna(0) + frame["deletions"].fillna(0)
    frame["time_to_first_review"] = frame["first_review_at"] - frame["gh_created_at"]
    frame["time_to_first_approval"] = frame["first_approval_at"] - frame["gh_created_at"]
    frame["review_time"] = frame["merged_at"] - frame["first_review_at"]
    frame["time_to_merge"] = frame["merged_at"] - frame["gh_created_at"]
    frame["cycle_time"] = frame["merged_at"] - frame["first_commit_at"]
    return frame


def pull_request_reviews(
    tenant: str | int,
    *,
    since: dt.datetime | str | None = None,
    repository: str | None = None,
    include_pending: bool = False,
    engine: sa.Engine | None = None,
) -> pd.DataFrame:
    """Reviews with their pull request's repository, number and author; `self_review` marks an
    author's own review. PENDING reviews (not submitted, no `submitted_at`) only when asked for."""
    frame = _of_pull_requests(reviews_table, tenant, since, repository, engine)
    if not include_pending:
        frame = frame[frame["submitted_at"].notna()].reset_index(drop=True)
    frame["self_review"] = frame["author_login"].notna() & (frame["author_login"] == frame["pull_request_author"])
    return frame


def pull_request_commits(tenant: str | int, *, since: dt.datetime | str | None = None, repository: str | None = None,
                         engine: sa.Engine | None = None) -> pd.DataFrame:
    """Commits of each pull request (a commit in two pull requests is a row for each)."""
    return _of_pull_requests(commits_table, tenant, since, repository, engine)


def pull_request_comments(tenant: str | int, *, since: dt.datetime | str | None = None, repository: str | None = None,
                          engine: sa.Engine | None = None) -> pd.DataFrame:
    """Issue comments (`kind` "issue") and review comments ("review", with path, line and thread)."""
    return _of_pull_requests(comments_table, tenant, since, repository, engine)


def _utc(moment: dt.datetime | str) -> dt.datetime:
    """A moment as aware UTC; a naive one (or a date such as "2024-01-01") is taken as UTC."""
    stamp = pd.Timestamp(moment)
    return (stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")).to_pydatetime()


def _of_pull_requests(table: sa.Table, tenant: str | int, since: dt.datetime | str | None, repository: str | None,
                      engine: sa.Engine | None) -> pd.DataFrame:
    """Rows of `table` (pull requests or one of their child tables) with the repository's name,
    the pull request's number and author, for pull requests created since `since`."""
    prs, repos = pull_requests_table, repositories_table
    own = [c for c in table.c if c.name not in ("tenant_id", "last_synced_at", "fetched_at", "created_at",
                                                "updated_at")]
    extra: list[sa.ColumnElement[Any]] = [repos.c.full_name.label("repository")]
    if table is not prs:
        extra += [prs.c.number, prs.c.author_login.label("pull_request_author")]
    joined = repos.join(prs, prs.c.repository_id == repos.c.id)
    if table is not prs:
        joined = joined.join(table, table.c.pull_request_id == prs.c.id)
    with _engine(engine).connect() as conn:
        query = sa.select(*extra, *own).select_from(joined).where(prs.c.tenant_id == _tenant_id(conn, tenant))
        if since is not None:
            query = query.where(prs.c.gh_created_at >= _utc(since))
        rows = conn.execute(query.order_by(repos.c.full_name, prs.c.number)).mappings().all()
    frame = pd.DataFrame([dict(r) for r in rows], columns=[c.name for c in (*extra, *own)])
    if repository is not None:
        frame = frame[[fnmatch.fnmatchcase(n.lower(), repository.lower()) for n in frame["repository"]]]
    for column in frame.columns:
        if column.endswith("_at"):
            frame[column] = pd.to_datetime(frame[column], utc=True)
    return frame.reset_index(drop=True)


def raw_payloads(
    tenant: str | int,
    entity: str = DEFAULT_ENTITY,
    run: str | None = None,
    *,
    engine: sa.Engine | None = None,
) -> pd.DataFrame:
    """Stored API payloads flattened with `pd.json_normalize` (`owner.login`, `license.spdx_id`, ...).

    With `run` (a run id, see `runs`), exactly the payloads that run extracted; without, the
    latest payload of every item the tenant ever extracted, which is what GitHub said last.
    """
    with _engine(engine).connect() as conn:
        tenant_id = _tenant_id(conn, tenant)
        if run is None:
            rows = _latest_payloads(conn, tenant_id, entity)
        else:
            rows = conn.execute(_payload_query(tenant_id, entity).where(raw_extraction_data.c.run_id == run)).all()
    return _flatten(rows)


def _payload_query(tenant_id: int, entity: str) -> sa.Select:
    r = raw_extraction_data.c
    return (
        sa.select(r.id, r.run_id, r.external_id, r.status, r.created_at, r.raw_data)
        .where(r.tenant_id == tenant_id, r.entity_type == entity)
        .order_by(r.id)
    )


def _latest_payloads(conn: sa.Connection, tenant_id: int, entity: str, as_of: Any = None) -> Sequence[Any]:
    """The newest payload per item, optionally only among runs that started by `as_of`."""
    r = raw_extraction_data.c
    newest = sa.select(sa.func.max(r.id)).where(r.tenant_id == tenant_id, r.entity_type == entity)
    if as_of is not None:
        newest = newest.join(etl_job_runs, etl_job_runs.c.run_id == r.run_id).where(etl_job_runs.c.started_at <= as_of)
    newest = newest.group_by(r.external_id)
    return conn.execute(_payload_query(tenant_id, entity).where(r.id.in_(newest))).all()


def _flatten(rows: Sequence[Any]) -> pd.DataFrame:
    meta = pd.DataFrame([tuple(r[:5]) for r in rows], columns=RAW_META)
    if not rows:
        return meta
    payloads = pd.json_normalize([r.raw_data for r in rows])
    for column in payloads.columns:
        if column.endswith("_at"):
            payloads[column] = pd.to_datetime(payloads[column], utc=True, format="ISO8601")
    return pd.concat([meta, payloads], axis=1)


def jobs(tenant: str | int | None = None, *, engine: sa.Engine | None = None) -> pd.DataFrame:
    """One row per job: its overall state, every circle as `step.stage`, last sync and last error."""
    with _engine(engine).connect() as conn:
        query = (
            sa.select(etl_jobs, tenants_table.c.name.label("tenant"))
            .join(tenants_table, tenants_table.c.id == etl_jobs.c.tenant_id)
            .order_by(etl_jobs.c.id)
        )
        if tenant is not None:
            query = query.where(etl_jobs.c.tenant_id == _tenant_id(conn, tenant))
        rows = conn.execute(query).mappings().all()
    records = []
    for job in rows:
        record = {"job_id": job["id"], "tenant": job["tenant"], "integration_id": job["integration_id"],
                  "job_name": job["job_name"], "overall": job["status"]["overall"]}
        for step, circles in job["status"]["steps"].items():
            record.update({f"{step}.{stage}": circles[stage] for stage in STAGES})
        record.update({k: job[k] for k in
                       ("last_sync_date", "last_run_started_at", "last_run_finished_at", "error_message")})
        records.append(record)
    if not records:
        return pd.DataFrame(columns=["job_id", "tenant", "integration_id", "job_name", "overall"])
    return pd.DataFrame(records)


RUN_COLUMNS = ["run_id", "job_id", "started_at", "finished_at", "seconds", "overall", "full", "items", "requests",
               "not_modified", "rate_limit_points", "deactivated", "error_message"]


def runs(tenant: str | int, *, engine: sa.Engine | None = None) -> pd.DataFrame:
    """The tenant's runs, oldest first, with what each extracted and what it cost in GitHub requests."""
    with _engine(engine).connect() as conn:
        rows = conn.execute(
            sa.select(etl_job_runs)
            .where(etl_job_runs.c.tenant_id == _tenant_id(conn, tenant))
            .order_by(etl_job_runs.c.started_at)
        ).mappings().all()
    records = [
        {
            **{k: run[k] for k in
               ("run_id", "job_id", "started_at", "finished_at", "overall", "full", "error_message")},
            "seconds": (run["finished_at"] - run["started_at"]).total_seconds() if run["finished_at"] else None,
            "items": sum(run["totals"].values()),
            **{k: run["stats"].get(k, 0) for k in ("requests", "not_modified", "rate_limit_points", "deactivated")},
        }
        for run in rows
    ]
    return pd.DataFrame(records, columns=RUN_COLUMNS)


CHANGE_COLUMNS = ["external_id", "full_name", "change", "field", "before", "after"]


def changes_between_runs(
    tenant: str | int,
    before: str | None = None,
    after: str | None = None,
    *,
    entity: str = DEFAULT_ENTITY,
    engine: sa.Engine | None = None,
) -> pd.DataFrame:
    """What GitHub told us differently after run `after` than after run `before`, field by field.

    Each side is the newest payload of every item as of that run, mapped through the step's own
    `to_row`, so only fields ghetl keeps are compared and an incremental run (which extracts
    only what changed) compares as fairly as a full one. `change` is `added`, `changed` (one row
    per field) or `removed` (GitHub answered 404 during a run in between). Without run ids the
    latest run is compared with the one before it.
    """
    step = steps.get(entity)
    with _engine(engine).connect() as conn:
        tenant_id = _tenant_id(conn, tenant)
        first, second = _two_runs(conn, tenant_id, before, after)
        old = _rows_by_id(step, _latest_payloads(conn, tenant_id, entity, first["started_at"]))
        new = _rows_by_id(step, _latest_payloads(conn, tenant_id, entity, second["started_at"]))
        removed = _removed(conn, tenant_id, step.table, first, second) if "active" in step.table.c else []
    records: list[tuple[Any, ...]] = []
    for external_id, row in new.items():
        if external_id not in old:
            records.append((external_id, row["full_name"], "added", None, None, None))
            continue
        records += [
            (external_id, row["full_name"], "changed", field, old[external_id][field], value)
            for field, value in row.items()
            if field not in ROW_IDENTITY and value != old[external_id][field]
        ]
    records += [(external_id, full_name, "removed", None, None, None) for external_id, full_name in removed]
    return pd.DataFrame(records, columns=CHANGE_COLUMNS)


def _two_runs(conn: sa.Connection, tenant_id: int, before: str | None, after: str | None) -> tuple[dict, dict]:
    rows = [dict(r) for r in conn.execute(
        sa.select(etl_job_runs).where(etl_job_runs.c.tenant_id == tenant_id).order_by(etl_job_runs.c.started_at)
    ).mappings()]
    ids = [r["run_id"] for r in rows]
    for run_id in (before, after):
        if run_id is not None and run_id not in ids:
            raise LookupError(
                f"tenant {tenant_id} has no run '{run_id}'; see ghetl.workbench.frames.runs(tenant) for its run ids"
            )
    second = ids.index(after) if after is not None else len(ids) - 1
    first = ids.index(before) if before is not None else second - 1
    if first < 0:
        raise LookupError(f"tenant {tenant_id} needs two runs to compare and has {len(ids)}; sync it (again) first")
    return rows[first], rows[second]


def _rows_by_id(step: steps.Step, payloads: Iterable[Any]) -> dict[str, dict[str, Any]]:
    identity: steps.RowContext = {"tenant_id": None, "integration_id": None}
    return {p.external_id: step.to_row(p.raw_data, identity) for p in payloads}


def _removed(conn: sa.Connection, tenant_id: int, table: sa.Table, first: dict, second: dict) -> Sequence[Any]:
    """Rows marked inactive after the earlier run ended and before the later one did."""
    end = second["finished_at"] or db.utcnow()
    return conn.execute(
        sa.select(table.c.external_id, table.c.full_name).where(
            table.c.tenant_id == tenant_id,
            table.c.active.is_(False),
            table.c.updated_at > (first["finished_at"] or first["started_at"]),
            table.c.updated_at <= end,
        ).order_by(table.c.full_name)
    ).all()


def embedding_models(tenant: str | int, *, engine: sa.Engine | None = None) -> pd.DataFrame:
    """How many stored vectors the tenant has per embedding model, most first."""
    table = db.embeddings
    with _engine(engine).connect() as conn:
        rows = conn.execute(
            sa.select(table.c.model, sa.func.count().label("vectors"))
            .where(table.c.tenant_id == _tenant_id(conn, tenant))
            .group_by(table.c.model)
            .order_by(sa.func.count().desc())
        ).all()
    return pd.DataFrame(rows, columns=["model", "vectors"])


def sync_summary(result: SyncResult) -> pd.DataFrame:
    """A sync's outcome as a two-column table for a notebook: counts per stage, requests, points, seconds."""
    facts: list[tuple[str, Any]] = [("overall", result.overall), ("kind", "full" if result.full else "incremental")]
    for step, counts in result.counts.items():
        facts += [(f"{step}: {stage}", n) for stage, n in counts.items()]
    facts += [
        ("GitHub requests", result.requests),
        ("not modified (304, free)", result.not_modified),
        ("rate-limit points", result.rate_limit_points),
        ("seconds", result.seconds),
    ]
    if result.error:
        facts.append(("error", result.error))
    return pd.DataFrame(facts, columns=["measure", "value"]).set_index("measure")
