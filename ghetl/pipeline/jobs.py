"""The job's life: create, start atomically, move each stage's circle, and finish exactly once.

Completion is decided by counting, never by message order: after every committed batch,
`advance` counts the run's items by processing status and moves each stage to `finished`
only when nothing of that stage is pending and the stage before it has finished. Several
workers may call it at once; the job row lock and conditional transitions make every change
happen once, and redelivered messages cannot be counted twice because items are counted by
their stored status, not by messages seen.
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import logging
import os
import socket
import uuid
from dataclasses import dataclass
from typing import Any

import psutil
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .. import steps
from ..logs import redact
from ..records import QUEUE_STAGES, QueueStage, Stage, StageStatus
from ..status.events import STAGES, Event, job_event, stage_event
from ..store.db import dialect_insert, etl_job_runs, etl_jobs, etl_run_counts, utcnow

log = logging.getLogger(__name__)

STALE_AFTER = dt.timedelta(minutes=5)
INCREMENTAL_OVERLAP = dt.timedelta(seconds=60)


class AlreadyRunning(RuntimeError):
    """Another run of the same job is in progress."""


@dataclass(frozen=True)
class Run:
    run_id: str
    job_id: int
    tenant_id: int
    integration_id: int
    started_at: dt.datetime
    full: bool
    cutoff: dt.datetime | None


def initial_status() -> dict[str, Any]:
    return {
        "overall": "READY",
        "steps": {
            step.name: {"order": step.order, "display_name": step.display_name, **{s: "idle" for s in STAGES}}
            for step in steps.registry().values()
        },
    }


def create_github_job(conn: Connection, tenant_id: int, integration_id: int) -> int:
    job_id: int = conn.execute(
        etl_jobs.insert()
        .values(tenant_id=tenant_id, integration_id=integration_id, job_name=steps.JOB_NAME, status=initial_status())
        .returning(etl_jobs.c.id)
    ).scalar_one()
    return job_id


def get_job(conn: Connection, tenant_id: int, integration_id: int) -> dict[str, Any]:
    row = conn.execute(
        sa.select(etl_jobs).where(
            etl_jobs.c.tenant_id == tenant_id,
            etl_jobs.c.integration_id == integration_id,
            etl_jobs.c.job_name == steps.JOB_NAME,
        )
    ).mappings().first()
    if row is None:
        raise LookupError(f"integration {integration_id} has no {steps.JOB_NAME} job; run: ghetl init")
    return dict(row)


def job_by_id(conn: Connection, job_id: int) -> dict[str, Any]:
    return dict(conn.execute(sa.select(etl_jobs).where(etl_jobs.c.id == job_id)).mappings().one())


def list_jobs(conn: Connection, tenant_id: int | None = None) -> list[dict[str, Any]]:
    query = sa.select(etl_jobs).order_by(etl_jobs.c.id)
    if tenant_id is not None:
        query = query.where(etl_jobs.c.tenant_id == tenant_id)
    return [dict(r) for r in conn.execute(query).mappings()]


@dataclass(frozen=True)
class Owner:
    """The process that runs a sync: a pid alone is reused by the system, its start time is not."""

    host: str
    pid: int
    started: float

    @classmethod
    def this_process(cls) -> Owner:
        return cls(socket.gethostname(), os.getpid(), psutil.Process().create_time())

    def gone(self) -> bool:
        """Whether this process has ended; only answerable on its own host."""
        try:
            return abs(psutil.Process(self.pid).create_time() - self.started) > 1.0
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return True
        except psutil.AccessDenied:
            return False


def orphaned(conn: Connection, job: dict[str, Any]) -> str | None:
    """Why the job's running run has nobody working on it, or None when it has (or is not running).

    On the host of its sync process the answer is immediate (that process is gone); elsewhere it
    is the heartbeat that ran out.
    """
    if job["status"]["overall"] != "RUNNING" or not job["run_id"]:
        return None
    run = conn.execute(sa.select(etl_job_runs.c.host, etl_job_runs.c.pid, etl_job_runs.c.process_started)
                       .where(etl_job_runs.c.run_id == job["run_id"])).first()
    if run is not None and run.host == socket.gethostname() and run.pid is not None and run.process_started:
        if Owner(run.host, run.pid, run.process_started).gone():
            return f"its sync process (pid {run.pid} on {run.host}) is gone"
        return None
    beat = job["heartbeat_at"]
    if beat is None or utcnow() - beat > STALE_AFTER:
        return "its sync process stopped responding (no heartbeat)"
    return None


def start(conn: Connection, job: dict[str, Any], *, full: bool, anonymous: bool = False,
          settings: str | None = None) -> tuple[Run, list[Event]]:
    """Claim the job for a new run with one conditional UPDATE, or raise AlreadyRunning.

    A run whose sync process is gone no longer blocks the job: at once when that process ran on
    this host (its pid and start time are recorded with the run), after STALE_AFTER without a
    heartbeat otherwise, so a killed scheduler run cannot lock a tenant out.
    An `anonymous` run (no token) does not move `last_sync_date` when it finishes: it saw no
    private repository, so the next run with a token must look as far back as this one did.
    `settings` is the integration's settings fingerprint: a run under settings other than the
    last finished run's is full, since an incremental listing would not show which repositories
    the new settings keep or drop.
    """
    now = utcnow()
    run_id = uuid.uuid4().hex
    status = initial_status()
    status["overall"] = "RUNNING"
    current = job_by_id(conn, job["id"])
    orphan = orphaned(conn, current)
    claimable = [etl_jobs.c.status["overall"].as_string() != "RUNNING", _stale(now)]
    if orphan is not None and current["run_id"]:
        claimable.append(etl_jobs.c.run_id == current["run_id"])
    claimed = conn.execute(
        etl_jobs.update()
        .where(etl_jobs.c.id == job["id"], sa.or_(*claimable))
        .values(status=status, run_id=run_id, last_run_started_at=now, heartbeat_at=now, error_message=None)
    ).rowcount
    if claimed != 1:
        raise AlreadyRunning(
            f"job {job['id']} ({job['job_name']}) is already running; wait for it or check: ghetl jobs"
        )
    if current["run_id"]:
        conn.execute(
            etl_job_runs.update()
            .where(etl_job_runs.c.run_id == current["run_id"], etl_job_runs.c.overall == "RUNNING")
            .values(overall="FAILED", finished_at=now,
                    error_message=f"superseded: {orphan or 'its process stopped responding'}")
        )
    owner = Owner.this_process()
    last = current["last_sync_date"]
    if settings is not None and not full and _settings_changed(conn, job["id"], settings):
        log.info("the integration's settings changed since the last finished run: this run is a full listing")
        full = True
    cutoff = None if full or last is None else last - INCREMENTAL_OVERLAP
    run = Run(run_id, job["id"], job["tenant_id"], job["integration_id"], now, full or last is None, cutoff)
    conn.execute(
        etl_job_runs.insert().values(
            run_id=run_id, job_id=job["id"], tenant_id=job["tenant_id"], full=run.full, anonymous=anonymous,
            cutoff=cutoff, started_at=now, overall="RUNNING", stats={"settings": settings} if settings else {},
            totals={},
            host=owner.host, pid=owner.pid, process_started=owner.started,
        )
    )
    return run, [job_event(run.tenant_id, run.job_id, run_id, "RUNNING")]


def _settings_changed(conn: Connection, job_id: int, settings: str) -> bool:
    previous = conn.execute(
        sa.select(etl_job_runs.c.stats)
        .where(etl_job_runs.c.job_id == job_id, etl_job_runs.c.overall == "FINISHED")
        .order_by(etl_job_runs.c.started_at.desc()).limit(1)
    ).scalar()
    return previous is not None and previous.get("settings") not in (None, settings)


def get_run(conn: Connection, run_id: str) -> dict[str, Any] | None:
    row = conn.execute(sa.select(etl_job_runs).where(etl_job_runs.c.run_id == run_id)).mappings().first()
    return dict(row) if row else None


def _lock_job(conn: Connection, job_id: int) -> dict[str, Any]:
    """Read the job row under a lock (PostgreSQL FOR NO KEY UPDATE; SQLite already holds the write lock).

    Not FOR UPDATE: that would also block the foreign-key checks (KEY SHARE) of every raw
    payload inserted for this job, so extraction and the workers' counting would take turns.
    """
    query = sa.select(etl_jobs).where(etl_jobs.c.id == job_id).with_for_update(key_share=True)
    return dict(conn.execute(query).mappings().one())


def _move(
    job: dict[str, Any], run_id: str, step: str, stage: Stage, new: StageStatus, events: list[Event], **counts: Any
) -> None:
    """Change one circle in the locked job's status (in memory) and record the event."""
    job["status"]["steps"][step][stage] = new
    events.append(stage_event(job["tenant_id"], job["id"], run_id, step, stage, new, **counts))


def _save_status(conn: Connection, job: dict[str, Any], **values: Any) -> None:
    conn.execute(etl_jobs.update().where(etl_jobs.c.id == job["id"]).values(status=job["status"], **values))


def stage_running(conn: Connection, run_id: str, job_id: int, step: str, stage: Stage) -> list[Event]:
    """Turn a stage's circle to running if it is still idle in this run."""
    job = _lock_job(conn, job_id)
    if job["run_id"] != run_id or job["status"]["steps"][step][stage] != "idle":
        return []
    job["status"] = copy.deepcopy(job["status"])
    events: list[Event] = []
    _move(job, run_id, step, stage, "running", events)
    _save_status(conn, job)
    return events


def extraction_done(
    conn: Connection, run: Run, step: str, total: int, stats: dict[str, Any], error: str | None,
    warnings: list[str] | None = None, given_up: dict[str, Any] | None = None, notes: list[str] | None = None,
) -> list[Event]:
    """Record how many items the step has in this run; until then its later stages cannot finish.

    The step's embedding stage also owes the catch-up (every row of its table still without a
    vector of the workers' model, embedded with the step's last item): it is counted as pending
    work here, so the stage cannot finish while a worker is still at it.
    `warnings` are the step's gaps: the run still finishes, shows them in the job's status, and
    does not move `last_sync_date` past them. `given_up` (count and examples) are the step's
    items that no run will try again (see carryover.py): shown the same way, but they do not
    hold `last_sync_date`, which would otherwise never move again. `notes` are GitHub's own limits
    met (data kept as complete as GitHub gives it): shown like warnings, not holding it either.
    `error` is redacted here, as in `fail`: the run's error becomes the job's, which `ghetl
    jobs`, the status stream and notebooks show, so no caller has to remember to.
    """
    job = _lock_job(conn, run.job_id)
    if job["run_id"] != run.run_id:
        return []
    count_items(conn, run.run_id, step, {"catch_up": 1})
    row = get_run(conn, run.run_id)
    assert row is not None
    values: dict[str, Any] = {"totals": {**row["totals"], step: total}, "stats": {**row["stats"], **stats}}
    if warnings:
        values["stats"]["warnings"] = [*row["stats"].get("warnings", []), *(redact(w) for w in warnings)]
    if notes:
        values["stats"]["notes"] = [*row["stats"].get("notes", []), *(redact(n) for n in notes)]
    if given_up:
        values["stats"]["given_up"] = {**row["stats"].get("given_up", {}),
                                       step: {**given_up, "examples": [redact(e) for e in given_up["examples"]]}}
    if error:
        values["error_message"] = redact(error)
    conn.execute(etl_job_runs.update().where(etl_job_runs.c.run_id == run.run_id).values(**values))
    job["status"] = copy.deepcopy(job["status"])
    for key in ("warnings", "notes", "given_up"):
        if key in values["stats"]:
            job["status"][key] = values["stats"][key]
    events: list[Event] = []
    if job["status"]["steps"][step]["extraction"] == "idle":
        _move(job, run.run_id, step, "extraction", "running", events)
    _move(job, run.run_id, step, "extraction", "failed" if error else "finished", events, processed=total, total=total)
    _save_status(conn, job)
    return events


def heartbeat(conn: Connection, run: Run) -> None:
    conn.execute(
        etl_jobs.update()
        .where(etl_jobs.c.id == run.job_id, etl_jobs.c.run_id == run.run_id)
        .values(heartbeat_at=utcnow())
    )


# The statements every batch runs are built once: building one costs as much client CPU as
# running it (about 0.2 ms each, measured), and a batch runs several.
_RUN_COUNTS = sa.select(etl_run_counts.c.step, etl_run_counts.c.status, etl_run_counts.c.n).where(
    etl_run_counts.c.run_id == sa.bindparam("run_id")
)
_JOB_OF_RUN = (
    sa.select(etl_jobs, etl_job_runs.c.totals.label("run_totals"))
    .join(etl_job_runs, etl_job_runs.c.job_id == etl_jobs.c.id)
    .where(etl_job_runs.c.run_id == sa.bindparam("run_id"))
)


def item_counts(conn: Connection, run_id: str) -> dict[str, dict[str, int]]:
    """Per step, the run's items by processing status (failed ones by the stage they failed in).

    Read from `etl_run_counts`, which every status change of an item updates in the same
    transaction: a few rows per run, so checking for completion after each batch costs the
    same at the last batch of a million items as at the first.
    """
    rows = conn.execute(_RUN_COUNTS, {"run_id": run_id}).all()
    per_step: dict[str, dict[str, int]] = {}
    for step, status, n in rows:
        counts = per_step.setdefault(step, zero_counts())
        counts[status] = n
        if status.startswith("failed_"):
            counts["failed"] += n
    return per_step


def count_items(conn: Connection, run_id: str, step: str, changes: dict[str, int]) -> None:
    """Add to the run's item counts by status, e.g. {"pending": -3, "transformed": 3}.

    Callers pass the rowcounts of the conditional UPDATEs that moved the items, in the same
    transaction, so a redelivered message that moves nothing counts nothing.
    """
    rows = [{"run_id": run_id, "step": step, "status": status, "n": n} for status, n in changes.items() if n]
    if rows:
        conn.execute(_count_statement(conn.dialect.name), rows)


def catch_up_done(conn: Connection, run_id: str, step: str) -> None:
    """The step's catch-up is over (done, or given up with its message); a redelivery changes nothing."""
    conn.execute(etl_run_counts.update().where(
        etl_run_counts.c.run_id == run_id, etl_run_counts.c.step == step, etl_run_counts.c.status == "catch_up",
        etl_run_counts.c.n > 0,
    ).values(n=etl_run_counts.c.n - 1))


@functools.lru_cache(maxsize=4)
def _count_statement(dialect: str) -> Any:
    stmt = dialect_insert(dialect, etl_run_counts)
    return stmt.on_conflict_do_update(index_elements=["run_id", "step", "status"],
                                      set_={"n": etl_run_counts.c.n + stmt.excluded.n})


def job_progress(conn: Connection, job: dict[str, Any]) -> dict[str, dict[Stage, dict[str, int | None]]]:
    """Processed/total/failed per step and stage for the job's current run, counted from the database."""
    if not job["run_id"]:
        return {}
    run = get_run(conn, job["run_id"])
    totals = run["totals"] if run else {}
    counts_by_step = item_counts(conn, job["run_id"])
    progress: dict[str, dict[Stage, dict[str, int | None]]] = {}
    for step in job["status"]["steps"]:
        counts = counts_by_step.get(step, zero_counts())
        total = totals.get(step)
        stages = stage_progress(counts)
        extracted = sum(counts[s] for s in ("pending", "transformed", "embedded", "failed"))
        by_stage: dict[Stage, dict[str, int | None]] = {
            "extraction": {"processed": extracted, "total": total, "failed": 0}
        }
        for s, p in stages.items():
            by_stage[s] = {"processed": p["processed"], "total": total, "failed": p["failed"]}
        progress[step] = by_stage
    return progress


def zero_counts() -> dict[str, int]:
    return {"pending": 0, "transformed": 0, "embedded": 0, "failed": 0, "failed_transform": 0, "failed_embedding": 0,
            "catch_up": 0}


def stage_progress(counts: dict[str, int]) -> dict[QueueStage, dict[str, int]]:
    """How many items each stage has processed and how many are still waiting for it."""
    return {
        "transform": {
            "processed": counts["transformed"] + counts["embedded"] + counts["failed"],
            "pending": counts["pending"],
            "failed": counts["failed_transform"],
        },
        "embedding": {
            "processed": counts["embedded"] + counts["failed"],
            "pending": counts["pending"] + counts["transformed"] + counts["catch_up"],
            "failed": counts["failed_embedding"],
        },
    }


def advance(conn: Connection, run_id: str) -> list[Event]:
    """Finish every stage that is done and, when the last one is, the job; report progress.

    Most batches finish nothing: then the counts are read without locking the job row, the
    progress is reported, and nothing is written. Only when a stage may finish is the row
    locked and everything read again, so two workers racing to the end still finish it once;
    the last batch's worker always takes that path, since its own counts were committed first.
    """
    found = _job_of_run(conn, run_id)
    if found is None:
        return []
    job, totals = found
    if job["run_id"] != run_id or job["status"]["overall"] != "RUNNING":
        return []
    moves, events = _stage_changes(job, totals, item_counts(conn, run_id))
    if not moves and not _heartbeat_due(job):
        return events
    job = _lock_job(conn, job["id"])
    if job["run_id"] != run_id or job["status"]["overall"] != "RUNNING":
        return []
    run = get_run(conn, run_id)
    assert run is not None, run_id  # the job's current run: its row is written with the job's run_id
    job["status"] = copy.deepcopy(job["status"])
    moves, events = _stage_changes(job, run["totals"], item_counts(conn, run_id))
    for step, stage, counts in moves:
        if job["status"]["steps"][step][stage] == "idle":
            _move(job, run_id, step, stage, "running", events)
        _move(job, run_id, step, stage, "finished", events, **counts)
    if all(c["embedding"] == "finished" for c in job["status"]["steps"].values()):
        events += _finish(conn, job, run)
    else:
        _save_status(conn, job, heartbeat_at=utcnow())
    return events


def _job_of_run(conn: Connection, run_id: str) -> tuple[dict[str, Any], dict[str, int]] | None:
    """The run's job and the run's totals in one query: `advance` runs after every batch."""
    row = conn.execute(_JOB_OF_RUN, {"run_id": run_id}).mappings().first()
    if row is None:
        return None
    job = dict(row)
    return job, job.pop("run_totals")


def _stage_changes(
    job: dict[str, Any], totals: dict[str, int], counts_by_step: dict[str, dict[str, int]]
) -> tuple[list[tuple[str, Stage, dict[str, Any]]], list[Event]]:
    """The stages of the job's current run that are done now (step, stage, final counts), and
    progress events of the others; `totals` are the run's extracted items per step.

    A stage is done when the one before it has finished and none of its items is pending; a
    stage finishing here lets the next one be judged in the same pass.
    """
    moves: list[tuple[str, Stage, dict[str, Any]]] = []
    events: list[Event] = []
    for step, circles in job["status"]["steps"].items():
        total = totals.get(step)
        progress = stage_progress(counts_by_step.get(step, zero_counts()))
        upstream_done = circles["extraction"] in ("finished", "failed") and total is not None
        for stage in QUEUE_STAGES:
            p = progress[stage]
            counts = {"processed": p["processed"], "total": total, "failed": p["failed"]}
            done = upstream_done and p["pending"] == 0 and circles[stage] in ("idle", "running")
            if done:
                moves.append((step, stage, counts))
            elif circles[stage] == "running":
                events.append(stage_event(job["tenant_id"], job["id"], job["run_id"], step, stage, "running", **counts))
            upstream_done = done or circles[stage] == "finished"
    return moves, events


def _heartbeat_due(job: dict[str, Any]) -> bool:
    """Whether the run's lease should be renewed: well before it would go stale."""
    beat = job["heartbeat_at"]
    return beat is None or utcnow() - beat > STALE_AFTER / 10


def _finish(conn: Connection, job: dict[str, Any], run: dict[str, Any]) -> list[Event]:
    now = utcnow()
    error = run["error_message"]
    overall = "FAILED" if error else "FINISHED"
    job["status"]["overall"] = overall
    values: dict[str, Any] = {"last_run_finished_at": now, "error_message": error, "heartbeat_at": None}
    if not error and not run["anonymous"] and not run["stats"].get("warnings"):
        values["last_sync_date"] = run["started_at"]
    _save_status(conn, job, **values)
    conn.execute(
        etl_job_runs.update().where(etl_job_runs.c.run_id == run["run_id"]).values(overall=overall, finished_at=now)
    )
    return [job_event(job["tenant_id"], job["id"], run["run_id"], overall, error=error)]


def fail(conn: Connection, run: Run, message: str) -> list[Event]:
    """End a run at once as FAILED (interrupted or crashed); circles still running turn failed."""
    job = _lock_job(conn, run.job_id)
    if job["run_id"] != run.run_id or job["status"]["overall"] != "RUNNING":
        return []
    return _fail_locked(conn, job, redact(message))


def end_stale_runs(conn: Connection) -> list[Event]:
    """End as FAILED every run whose heartbeat is older than STALE_AFTER, with the events `fail` sends.

    A `ghetl sync` killed outright (kill -9, a lost host) never runs its own `fail`, and nothing
    else would end its run: every board would show it running forever. The sync process renews
    the heartbeat while it waits, and so does every worker's `advance` while it makes progress,
    so a run that is stale has nobody left working on it. Each job is re-checked under its row
    lock, so when several processes call this at once the run ends once.
    """
    now = utcnow()
    stale = conn.execute(
        sa.select(etl_jobs.c.id).where(etl_jobs.c.status["overall"].as_string() == "RUNNING", _stale(now))
    ).scalars().all()
    events: list[Event] = []
    for job_id in stale:
        job = conn.execute(
            sa.select(etl_jobs).where(etl_jobs.c.id == job_id, _stale(now)).with_for_update(key_share=True)
        ).mappings().first()
        if job is None or job["status"]["overall"] != "RUNNING":
            continue
        beat = job["heartbeat_at"]
        silent = f"{(now - beat).total_seconds() / 60:.0f} min" if beat else "too long"
        events += _fail_locked(conn, dict(job), f"its sync process stopped responding: no heartbeat for {silent}")
    return events


def _stale(now: dt.datetime) -> Any:
    """The condition `start` and `end_stale_runs` share: the run's lease ran out."""
    return sa.or_(etl_jobs.c.heartbeat_at.is_(None), etl_jobs.c.heartbeat_at < now - STALE_AFTER)


def _fail_locked(conn: Connection, job: dict[str, Any], message: str) -> list[Event]:
    """End the locked job's running run as FAILED: idle and running circles turn failed."""
    run_id = job["run_id"]
    job["status"] = copy.deepcopy(job["status"])
    events: list[Event] = []
    for step, circles in job["status"]["steps"].items():
        for stage in STAGES:
            if circles[stage] in ("idle", "running"):
                _move(job, run_id, step, stage, "failed", events)
    job["status"]["overall"] = "FAILED"
    now = utcnow()
    _save_status(conn, job, last_run_finished_at=now, error_message=message, heartbeat_at=None)
    conn.execute(
        etl_job_runs.update()
        .where(etl_job_runs.c.run_id == run_id)
        .values(overall="FAILED", finished_at=now, error_message=message)
    )
    return [*events, job_event(job["tenant_id"], job["id"], run_id, "FAILED", error=message)]
