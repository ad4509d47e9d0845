"""Running the GitHub job: claim it, extract, publish, and wait until every stage is done.

Extraction happens in the process that runs the sync, because that is where the user's token
is; the transform and embedding stages run wherever the broker's consumers are: threads of
this process on `memory://`, `ghetl worker` processes on RabbitMQ.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import httpx
import sqlalchemy as sa

from .. import config, steps, tenants
from .. import settings as settings_mod
from ..github import GitHubClient, GitHubError, Policy, credentials
from ..logs import safe_url
from ..queue import broker as broker_mod
from ..queue.broker import Broker, MemoryBroker
from ..records import Overall
from ..status.events import Event, stage_event
from ..store import db, http_cache
from ..store.db import raw_extraction_data, utcnow
from . import carryover, interrupts, jobs
from .prune import due as retention_due
from .prune import prune

if TYPE_CHECKING:
    from ..embeddings import Embedder

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 20.0
CONSUMER_CHECK_SECONDS = 5.0
UNATTENDED_REPEAT_SECONDS = 60.0
ITEMS_PER_MESSAGE = 100


@dataclass
class SyncResult:
    """What `ghetl sync --json` prints and what notebooks show as the run summary."""

    tenant: str
    job_id: int
    run_id: str
    overall: Overall
    full: bool
    counts: dict[str, dict[str, int]]
    requests: int
    not_modified: int
    rate_limit_points: int
    seconds: float
    error: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Progress(Protocol):
    """Where a sync reports its status events as they come: bars in a terminal, widgets in a notebook.

    The library draws nothing itself; the CLI passes `progress.StageBars`, the workbench its board.
    """

    def update(self, event: Event) -> None: ...


def sync(
    tenant: str | int,
    integration_id: int | None = None,
    *,
    full: bool = False,
    engine: sa.Engine | None = None,
    broker: Broker | None = None,
    progress: Progress | None = None,
    workers: int | tuple[int, int] = 1,
    run_workers: bool | None = None,
    timeout: float | None = None,
    on_event: Callable[[Event], None] | None = None,
) -> SyncResult:
    """Run the tenant's GitHub job to its end and return its summary.

    Raises AlreadyRunning when another run holds the job; a run that ends FAILED is returned,
    not raised (see `SyncResult.overall`), so callers choose how loud to be. The transform and
    embedding consumers run in this process when `run_workers` is true, which is the default on
    `memory://` (`workers` threads per stage, or a pair: transform threads, embedding threads);
    on RabbitMQ `ghetl worker` processes do it.
    """
    engine = engine or db.engine()
    own_broker = broker is None
    broker = broker or broker_mod.connect()
    if run_workers is None:
        run_workers = isinstance(broker, MemoryBroker)
    started = time.monotonic()
    with engine.begin() as conn:
        tenant_row = tenants.get_tenant(conn, tenant, active=True)
        integration = tenants.get_integration(conn, tenant_row["id"], integration_id)
        job = jobs.get_job(conn, tenant_row["id"], integration["id"])
        settings = settings_mod.parse(integration["settings"], stored=True)
    policy = Policy.from_env()
    client, creds = _client(tenant_row["name"], integration, policy)
    if creds.anonymous:
        log.warning("%s is empty: without a token GitHub shows public repositories only and allows 60 requests "
                    "an hour; this run marks nothing deleted and leaves last_sync_date where it is", creds.source)
    per_stage = _per_stage(workers)
    embedder = _check_consumers(per_stage) if run_workers else None
    broker.declare()
    with interrupts.deferred() as interrupt:
        with engine.begin() as conn:
            run, events = jobs.start(conn, job, full=full, anonymous=creds.anonymous,
                                     settings=http_cache.fingerprint(settings))
            carried = {name: carryover.adopt(conn, run, name) for name in steps.registry()}

        stop = threading.Event()
        consumers: _Consumers | None = None
        extraction: _Extraction | None = None
        unsubscribe: Callable[[], None] | None = None
        ended = False
        try:
            log.info("%s sync of %s started (run %s)", "full" if run.full else "incremental", integration["owner"],
                     run.run_id)
            unsubscribe = _listen(broker, run.run_id, progress, on_event)
            broker.publish_status(events)
            if run_workers:
                consumers = _Consumers(broker, engine, stop, per_stage, embedder)
            extraction = _Extraction(engine, broker, run, job, client, integration, settings, carried)
            _wait_for_end(engine, run, timeout, interrupt.check, None if run_workers else broker,
                          consumers, extraction)
            extraction.join()
            ended = True
            _retention(engine, run)
        except BaseException as exc:
            reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"{type(exc).__name__}: {exc}"
            with engine.begin() as conn:
                broker.publish_status(jobs.fail(conn, run, reason))
            if extraction is not None and not isinstance(exc, KeyboardInterrupt):
                extraction.join(check=False)  # a step waiting for its parent sees the run end and returns
            raise
        finally:
            client.close()
            creds.close()
            stop.set()
            if consumers is not None:
                consumers.join()
            if unsubscribe is not None:
                unsubscribe()
            if ended and progress is not None:
                _settle(progress, engine, run)
            if own_broker:
                broker.close()  # RabbitMQ: what was handed to the publisher is written before the process ends
    return _result(engine, tenant_row["name"], run, client, time.monotonic() - started)


def _retention(engine: sa.Engine, run: jobs.Run) -> None:
    """The default retention for this tenant (see prune.py), after a run that finished, when
    there is anything to delete: a failed run's payloads may still be the next run's work."""
    if config.env_float("GHETL_PRUNE_ON_SYNC", 1.0) == 0:
        return
    with engine.begin() as conn:
        finished = jobs.get_run(conn, run.run_id)
        if finished is None or finished["overall"] != "FINISHED" or not retention_due(conn, tenant_id=run.tenant_id):
            return
        counts = prune(conn, tenant_id=run.tenant_id)
    log.info("retention: deleted %s", ", ".join(f"{n} {table} rows" for table, n in counts.items() if n) or "nothing")


def _per_stage(workers: int | tuple[int, int]) -> tuple[int, int]:
    """Consumer threads for (transform, embedding): one number is both."""
    pair = (workers, workers) if isinstance(workers, int) else tuple(workers)
    if len(pair) != 2 or any(not isinstance(n, int) or n < 1 for n in pair):
        raise ValueError(f"workers must be 1 or more per stage, got {workers}")
    return pair[0], pair[1]


class _Extraction:
    """Every step of the job extracting, each in a thread of its own.

    Concurrently, because a dependent step (pull requests of repositories) works on its
    parent's items as they are transformed: the parent's later pages are still being listed
    while the first items' children are fetched. A step without a parent starts at once too.
    `carried` are the items each step took over from earlier runs (see carryover.py). The run
    is watched meanwhile (`_wait_for_end`): a dependent step waits for its parent's transform,
    so a run nobody transforms must end from outside the threads.
    """

    def __init__(self, engine: sa.Engine, broker: Broker, run: jobs.Run, job: dict[str, Any], client: GitHubClient,
                 integration: dict[str, Any], settings: dict[str, Any],
                 carried: dict[str, list[dict[str, Any]]]) -> None:
        self.client = client
        self.failures: list[BaseException] = []
        ordered = list(steps.registry().values())

        def extract(step: steps.Step) -> None:
            try:
                given_up = carryover.GivenUp()
                with engine.connect() as conn:
                    retry = carryover.to_refetch(conn, run, step.name, given_up)
                ctx = steps.ExtractContext(client, engine, run.tenant_id, integration, settings, run.cutoff, run.full,
                                           {}, retry_ids=retry, run_id=run.run_id, job_id=run.job_id, step=step.name,
                                           depends_on=step.depends_on)
                _extract(engine, broker, run, step, ctx, job, carried[step.name], given_up,
                         last_step=step is ordered[-1])
            except BaseException as exc:
                self.failures.append(exc)

        self._threads = [threading.Thread(target=extract, args=(step,), name=f"ghetl-extract-{step.name}",
                                          daemon=True) for step in ordered]
        for thread in self._threads:
            thread.start()

    def check(self) -> None:
        """Raise what stopped a step's extraction other than GitHub (which the step records)."""
        if self.failures:
            raise self.failures[0]

    def activity(self) -> tuple[int, float]:
        """Requests sent and seconds waited for GitHub so far: extraction moving, even while it stores nothing."""
        return self.client.stats.requests, self.client.stats.waited_seconds

    def join(self, check: bool = True) -> None:
        for thread in self._threads:
            thread.join()
        if check:
            self.check()


def _settle(progress: Progress, engine: sa.Engine, run: jobs.Run) -> None:
    """Draw the bars' last state from the database: the run's last status events may still be
    on their way from the workers when the job is seen to have ended."""
    with engine.connect() as conn:
        job = jobs.job_by_id(conn, run.job_id)
        counted = jobs.job_progress(conn, job) if job["run_id"] == run.run_id else {}
    for step, stages in counted.items():
        for stage, counts in stages.items():
            progress.update(stage_event(run.tenant_id, run.job_id, run.run_id, step, stage,
                                    job["status"]["steps"][step][stage], **counts))


def _listen(broker: Broker, run_id: str, progress: Progress | None,
            on_event: Callable[[Event], None] | None) -> Callable[[], None]:
    """Feed the run's status events to `progress` and `on_event`; returns how to stop.

    Nobody listening (`--json`, a pipe, a log file) means no subscription at all: on RabbitMQ
    it is a connection of its own, opened and closed for nothing.
    """
    if progress is None and on_event is None:
        return lambda: None
    return broker.subscribe_status(_for_run(run_id, progress.update if progress else None, on_event))


def _for_run(run_id: str, *callbacks: Callable[[Event], None] | None) -> Callable[[Event], None]:
    def forward(event: Event) -> None:
        if event.get("run_id") == run_id:
            for callback in callbacks:
                if callback is not None:
                    callback(event)

    return forward


def _client(tenant: str, integration: dict[str, Any],
            policy: Policy) -> tuple[GitHubClient, credentials.Credentials]:
    """The integration's GitHub client and credentials, built before the job starts: a malformed
    stored API URL or a credential that cannot be used is then one line, and no run is left behind."""
    try:
        creds = credentials.for_integration(integration, timeout=policy.timeout)
        return GitHubClient(integration["api_url"], None, policy=policy, auth=creds.auth), creds
    except httpx.InvalidURL as exc:
        raise ValueError(
            f"integration {integration['id']} has an invalid API URL '{safe_url(integration['api_url'])}' ({exc}); "
            f"add one with a valid URL: ghetl integration add --tenant {tenant} --owner {integration['owner']} "
            "--api-url URL"
        ) from None


def _check_consumers(per_stage: tuple[int, int]) -> Embedder:
    """Read what the consumers of this process need before the job starts, in this thread: a
    bad setting is then one error and no run, not a consumer thread that dies mid-run.

    Imported here, since a sync on RabbitMQ leaves the stages to `ghetl worker` processes and
    need not load numpy and the embedder.
    """
    from ..embeddings import get_embedder

    broker_mod.check_settings()
    return get_embedder()


class _Consumers:
    """The transform and embedding consumers of this process (embedded default), a thread per
    stage that keeps what stopped it: a sync must not wait forever for consumers that are gone."""

    def __init__(self, broker: Broker, engine: sa.Engine, stop: threading.Event, per_stage: tuple[int, int],
                 embedder: Embedder | None) -> None:
        from .workers import Pipeline

        self.error: BaseException | None = None
        deliver = Pipeline(engine, broker, embedder).deliver
        self._threads = [
            threading.Thread(target=self._consume, args=(broker, stage, deliver, n, stop),
                             name=f"ghetl-{stage}-consumers", daemon=True)
            for stage, n in zip(broker_mod.STAGE_QUEUES, per_stage, strict=True)
        ]
        for thread in self._threads:
            thread.start()

    def _consume(self, broker: Broker, stage: str, deliver: broker_mod.Deliver, n: int, stop: threading.Event) -> None:
        try:
            broker.consume([stage], deliver, concurrency=n, stop=stop)
        except BaseException as exc:
            self.error = exc

    def check(self) -> None:
        """Raise what stopped the consumers, if they stopped."""
        if self.error is not None:
            raise self.error

    def join(self) -> None:
        for thread in self._threads:
            thread.join()


def _extract(
    engine: sa.Engine, broker: Broker, run: jobs.Run, step: steps.Step, ctx: steps.ExtractContext,
    job: dict[str, Any], carried: list[dict[str, Any]], given_up: carryover.GivenUp, *, last_step: bool,
) -> None:
    """Publish the items carried over, then store each page of payloads and publish it; the
    last page waits until the total is recorded.

    Holding the last page back until `extraction_done` has committed guarantees that whichever
    worker finishes the last item sees the run's total, so the run cannot stall unfinished.
    The step's last item (`last_item`) also carries its embedding catch-up; the job's very last
    one (`last_job_item`) is the last step's.
    """
    envelope = {
        "tenant_id": run.tenant_id, "integration_id": run.integration_id, "job_id": run.job_id,
        "run_id": run.run_id, "step": step.name, "provider": "github",
        "last_sync_date": job["last_sync_date"].isoformat() if job["last_sync_date"] else None,
    }
    total = 0
    held: list[dict[str, Any]] | None = None
    error = None
    last_beat = time.monotonic()
    with engine.begin() as conn:
        broker.publish_status(jobs.stage_running(conn, run.run_id, run.job_id, step.name, "extraction"))
    if carried:
        log.info("%d %s items that earlier runs left unfinished are published again", len(carried), step.display_name)
    try:
        for items in _pages(engine, run, step, ctx, carried):
            if items:
                if held:
                    broker.publish("transform", [{**envelope, "items": held}])
                if total == 0:
                    items[0]["first_item"] = True
                held = items
                total += len(items)
                broker.publish_status([stage_event(run.tenant_id, run.job_id, run.run_id, step.name, "extraction",
                                                   "running", processed=total)])
            if time.monotonic() - last_beat > HEARTBEAT_SECONDS:
                with engine.begin() as conn:
                    jobs.heartbeat(conn, run)
                last_beat = time.monotonic()
    except (GitHubError, httpx.HTTPError) as exc:
        error = str(exc)
        log.error("extraction of %s stopped: %s; the %d items fetched so far are kept", step.display_name, error, total)
    stats = {**ctx.client.stats.as_dict(), **ctx.stats}
    with engine.begin() as conn:
        broker.publish_status(jobs.extraction_done(conn, run, step.name, total, stats, error, ctx.warnings,
                                                   given_up.as_dict() if given_up.count else None, ctx.notes))
    if held:
        held[-1].update(last_item=True, last_job_item=last_step)
        broker.publish("transform", [{**envelope, "items": held}])
    else:
        broker.publish("transform", [{**envelope, "items": [broker_mod.completion_item(last_job_item=last_step)]}])
    log.info("extraction of %s done: %d items published", step.name, total)


def _pages(engine: sa.Engine, run: jobs.Run, step: steps.Step, ctx: steps.ExtractContext,
           carried: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """The step's transform message items of this run: those carried over, then each stored page."""
    for start in range(0, len(carried), ITEMS_PER_MESSAGE):
        yield carried[start:start + ITEMS_PER_MESSAGE]
    for batch in step.extract(ctx):
        yield _store(engine, run, step, batch)


def _store(engine: sa.Engine, run: jobs.Run, step: steps.Step, batch: steps.Batch) -> list[dict[str, Any]]:
    """Insert one page of raw payloads, with what the step records as they land.

    Returns the items of the page's transform message.
    """
    now = utcnow()
    rows = [
        {
            "tenant_id": run.tenant_id, "integration_id": run.integration_id, "job_id": run.job_id,
            "run_id": run.run_id, "entity_type": step.name, "external_id": step.key(p),
            "parent_external_id": step.parent_key(p) if step.parent_key else None, "raw_data": p,
            "status": "pending", "attempts": 0, "created_at": now, "updated_at": now,
        }
        for p in batch.payloads
    ]
    with engine.begin() as conn:
        ids = db.insert(conn, raw_extraction_data, rows)
        jobs.count_items(conn, run.run_id, step.name, {"pending": len(ids)})
        if batch.landed is not None:
            batch.landed(conn)
    return [
        {"raw_data_id": raw_id, "external_id": row["external_id"], "parent_external_id": row["parent_external_id"],
         "first_item": False, "last_item": False, "last_job_item": False}
        for raw_id, row in zip(ids, rows, strict=True)
    ]


class Stalled(TimeoutError):
    """The run cannot end by itself: nobody consumes a stage it waits on, or nothing moves."""


def _wait_for_end(engine: sa.Engine, run: jobs.Run, timeout: float | None, interrupted: Callable[[], None],
                  remote: Broker | None = None, consumers: _Consumers | None = None,
                  extraction: _Extraction | None = None) -> None:
    """Poll the job until its run ended, keeping the heartbeat fresh meanwhile.

    A run must never wait for work that nobody can do. With `remote`, the stages run in other
    processes: a stage queue that nobody consumes is pointed out at once and every minute, and
    after GHETL_NO_WORKER_TIMEOUT (10 min) the run ends FAILED saying which worker to start.
    Whatever the cause (a message lost with a purged queue, a failure that could not be
    recorded), a run whose counts have not moved for GHETL_STALL_TIMEOUT (15 min) ends FAILED
    too; its unfinished items are the next run's work (requests to GitHub and waits for its
    rate limit count as progress). With `consumers`, they run in this process, and their
    failure ends the wait; likewise a failure of `extraction`, which runs meanwhile. Ctrl-C and
    SIGTERM are raised by `interrupted`, here between two polls (see interrupts.py).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    no_worker_after = config.env_float("GHETL_NO_WORKER_TIMEOUT", 600.0, minimum=0.1)
    stall_after = config.env_float("GHETL_STALL_TIMEOUT", 900.0, minimum=0.1)
    last_beat, last_check = time.monotonic(), float("-inf")
    watch = _Unattended(remote) if remote is not None else None
    progress: tuple[Any, float] = (None, time.monotonic())
    while True:
        interrupted()
        with engine.connect() as conn:
            job = jobs.job_by_id(conn, run.job_id)
            counts = jobs.item_counts(conn, run.run_id)
        now = time.monotonic()
        moved = (counts, extraction.activity() if extraction is not None else None)
        if job["run_id"] != run.run_id or job["status"]["overall"] != "RUNNING":
            return
        if consumers is not None:
            consumers.check()
        if extraction is not None:
            extraction.check()
        if deadline is not None and now > deadline:
            raise TimeoutError(f"the job did not finish within {timeout:.0f} s")
        if moved != progress[0]:
            progress = (moved, now)
        elif now - progress[1] > stall_after:
            raise Stalled(f"no progress for {_duration(stall_after)}: {_waiting(counts)}; "
                          "its unfinished items are taken up by the next run")
        if now - last_beat > HEARTBEAT_SECONDS:
            with engine.begin() as conn:
                jobs.heartbeat(conn, run)
            last_beat = now
        if watch is not None and now - last_check > min(CONSUMER_CHECK_SECONDS, no_worker_after / 2):
            watch.check(now, no_worker_after)
            last_check = now
        time.sleep(0.05)


def _waiting(counts: dict[str, dict[str, int]]) -> str:
    pending = sum(c["pending"] for c in counts.values())
    transformed = sum(c["transformed"] for c in counts.values())
    return f"{pending} items still waiting for transform, {transformed} for embedding"


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} minutes" if seconds >= 120 else f"{seconds:.0f} s"


class _Unattended:
    """Stage queues without consumers: warned about at once and every UNATTENDED_REPEAT_SECONDS
    while it lasts (one warning at the start scrolls out of sight), and the run's end when it
    lasts longer than the run may wait."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.idle_since: dict[str, float] = {}
        self.warned: dict[str, float] = {}

    def check(self, now: float, give_up_after: float) -> None:
        try:
            idle = {stage for stage in broker_mod.STAGE_QUEUES if self.broker.consumer_count(stage) == 0}
        except ConnectionError as exc:
            log.debug("cannot count the consumers now: %s", exc)
            return
        self.idle_since = {stage: self.idle_since.get(stage, now) for stage in idle}
        self.warned = {stage: when for stage, when in self.warned.items() if stage in idle}
        for stage in (s for s in broker_mod.STAGE_QUEUES if s in idle):
            if now - self.idle_since[stage] > give_up_after:
                raise Stalled(f"no {stage} worker for {_duration(give_up_after)}; start one with: ghetl worker all "
                              f"(the queue is {self.broker.queue(stage)})")
            if now - self.warned.get(stage, float("-inf")) >= UNATTENDED_REPEAT_SECONDS:
                log.warning("no workers are consuming %s; start one with: ghetl worker all", self.broker.queue(stage))
                self.warned[stage] = now


def _result(engine: sa.Engine, tenant: str, run: jobs.Run, client: GitHubClient, seconds: float) -> SyncResult:
    with engine.connect() as conn:
        row = jobs.get_run(conn, run.run_id)
        counts = jobs.item_counts(conn, run.run_id)
    assert row is not None
    per_stage = {}
    for step in steps.registry():
        c = counts.get(step, jobs.zero_counts())
        per_stage[step] = {
            "extracted": row["totals"].get(step, 0),
            "transformed": c["transformed"] + c["embedded"] + c["failed_embedding"],
            "embedded": c["embedded"],
            "failed": c["failed"],
        }
    stats = client.stats.as_dict()
    return SyncResult(
        tenant=tenant, job_id=run.job_id, run_id=run.run_id, overall=row["overall"], full=run.full,
        counts=per_stage, requests=stats["requests"], not_modified=stats["not_modified"],
        rate_limit_points=stats["rate_limit_points"], seconds=round(seconds, 3), error=row["error_message"],
        stats=row["stats"], warnings=row["stats"].get("warnings", []),
    )
