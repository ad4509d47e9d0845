"""The generic worker: what one delivery of a transform or embedding message does.

For every message: decode it (a poison message goes straight to the dead-letter queue), turn
its stage's circle to running, do the stage's work in one database transaction, publish the
next stage's message only after that commit, then let `jobs.advance` count what is done.
Everything step-specific comes from the step registry, so this file never changes when a step
is added. A failing message is retried by the broker; on its last attempt its items are
recorded as failed and the run goes on without them. A database that cannot be reached is not
the message's fault: the message goes back to its queue without using up an attempt, and the
worker backs off until the database answers again.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import Counter
from typing import Any

import numpy as np
import sqlalchemy as sa

from .. import embeddings, steps
from ..logs import first_line, redact
from ..queue import broker as broker_mod
from ..queue.broker import Broker, Outcome, PoisonMessage
from ..records import ItemStatus, QueueStage, is_queue_stage
from ..store.db import Unindexed, etl_jobs, raw_extraction_data, upsert, utcnow
from ..store.db import embeddings as embeddings_table
from . import deadletters, jobs

log = logging.getLogger(__name__)

TRANSIENT = (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError)
UNREACHABLE_SQLSTATES = ("57P01", "57P02", "57P03")  # admin shutdown, crash shutdown, cannot connect now
UNREACHABLE_SQLITE = ("SQLITE_BUSY", "SQLITE_CANTOPEN")
OUTAGE_DELAY, OUTAGE_DELAY_MAX = 0.5, 10.0
EMBEDDING_KEY = ("tenant_id", "integration_id", "table_name", "external_id", "model")
CATCH_UP_BATCH = 500

# The statements every message runs are built once (see jobs.item_counts).
_RAW_BATCH = sa.select(
    raw_extraction_data.c.id, raw_extraction_data.c.external_id, raw_extraction_data.c.raw_data,
    raw_extraction_data.c.status, raw_extraction_data.c.parent_external_id, raw_extraction_data.c.created_at,
    raw_extraction_data.c.run_id,
).where(raw_extraction_data.c.id.in_(sa.bindparam("ids", expanding=True)))
_MOVE = (
    raw_extraction_data.update()
    .where(raw_extraction_data.c.id.in_(sa.bindparam("ids", expanding=True)),
           Unindexed(raw_extraction_data.c.run_id) == sa.bindparam("run"),  # by the ids: see Unindexed
           raw_extraction_data.c.status == sa.bindparam("from_status"))
    .values(status=sa.bindparam("to_status"))
)


class Pipeline:
    """Binds the stage handlers to one database, one broker and one embedder."""

    def __init__(self, engine: sa.Engine, broker: Broker, embedder: embeddings.Embedder | None = None) -> None:
        self.engine = engine
        self.broker = broker
        self._embedder = embedder
        self._started: set[tuple[str, str, str]] = set()
        self._lock = threading.Lock()
        self._outage_since: float | None = None
        self._outage_failures = 0

    @property
    def embedder(self) -> embeddings.Embedder:
        """Loaded on first use, so a transform-only worker never loads a model."""
        if self._embedder is None:
            self._embedder = embeddings.get_embedder()
        return self._embedder

    def deliver(self, stage: str, body: bytes, attempt: int) -> Outcome:
        """Handle one delivery and say whether to ack, retry, requeue or dead-letter it.

        An `attempt` beyond GHETL_MAX_ATTEMPTS is not tried: the broker passes one when every
        allowed attempt ended with its worker gone, and the message is then recorded as failed.
        """
        message = None
        try:
            message = broker_mod.decode(body)
            steps.get(message["step"])
        except (PoisonMessage, KeyError) as exc:
            log.error("dead-lettered a %s message that can never be processed: %s", stage, exc)
            return self._give_up(stage, body, message, redact(str(exc)), attempt)
        if attempt > broker_mod.max_attempts():
            reason = (f"gave up after {attempt - 1} attempts: the worker handling it stopped before it "
                      "finished (crashed, killed, or lost its connection) every time")
            log.error("dead-lettered a %s message: %s", stage, reason)
            self.record_failure(stage, message, reason)
            return self._give_up(stage, body, message, reason, attempt - 1)
        try:
            self.handle(stage, message)
        except Trespass as exc:
            log.error("dead-lettered a %s message: %s", stage, exc)
            return self._give_up(stage, body, message, str(exc), attempt)
        except Exception as exc:
            if database_unavailable(exc):
                return self._wait_for_database(exc)
            reason = redact(f"{type(exc).__name__}: {exc}")[:500]
            if attempt >= broker_mod.max_attempts():
                log.error("a %s message failed %d times, dead-lettered: %s", stage, attempt, reason)
                self.record_failure(stage, message, reason)
                return self._give_up(stage, body, message, reason, attempt)
            log.warning("a %s message failed (attempt %d), will retry: %s", stage, attempt, reason)
            return Outcome("retry", reason)
        self._database_back()
        return Outcome("ack")

    def _give_up(self, stage: str, body: bytes, message: dict[str, Any] | None, reason: str, attempts: int) -> Outcome:
        """Dead-letter a delivery: kept in `dead_letters` for `ghetl dead-letters`, then handed to
        the broker's own dead-letter queue."""
        letter = deadletters.record(self.engine, stage, body, message, reason, attempts)
        return Outcome("dead", reason, letter=letter)

    def _wait_for_database(self, exc: Exception) -> Outcome:
        """Put the message back, after a pause that doubles while the outage lasts; say so once per outage."""
        reason = first_line(exc)
        with self._lock:
            first = self._outage_since is None
            if first:
                self._outage_since = time.monotonic()
            self._outage_failures += 1
            delay = min(OUTAGE_DELAY_MAX, OUTAGE_DELAY * 2 ** (self._outage_failures - 1))
        if first:
            log.warning("the database is unavailable (%s); messages go back to their queue, without counting "
                        "an attempt, until it answers again", reason)
        return Outcome("requeue", f"database unavailable: {reason}", delay)

    def _database_back(self) -> None:
        if self._outage_since is None:
            return
        with self._lock:
            since, self._outage_since, self._outage_failures = self._outage_since, None, 0
        if since is not None:
            log.info("the database answers again after %.0f s; messages are handled again", time.monotonic() - since)

    def handle(self, stage: str, message: dict[str, Any]) -> None:
        """One message's work on one pooled connection, in a transaction per step of it: taking
        a connection from the pool costs a round trip (the liveness check), and a message
        took four."""
        if not is_queue_stage(stage):
            raise ValueError(f"unknown stage '{stage}'")
        step = steps.get(message["step"])
        with self.engine.connect() as conn:
            _check_scope(conn, message)
            if "run_id" not in message or not message["run_id"]:
                message["run_id"] = self._current_run(conn, message["job_id"])
            self._mark_running(conn, message, stage)
            if stage == "transform":
                forward = self._transform(conn, step, message)
                if forward:
                    self.broker.publish("embedding", [{**message, "table_name": step.table_name, "items": forward}])
            else:
                self._embed(conn, step, message)
            self._advance(conn, message["run_id"])

    def _current_run(self, conn: sa.Connection, job_id: int) -> str:
        with conn.begin():
            run_id: str | None = conn.execute(sa.select(etl_jobs.c.run_id).where(etl_jobs.c.id == job_id)).scalar()
        if not run_id:
            raise PoisonMessage(f"job {job_id} has no run to attach this message to")
        return run_id

    def _mark_running(self, conn: sa.Connection, message: dict[str, Any], stage: QueueStage) -> None:
        key = (message["run_id"], message["step"], stage)
        with self._lock:
            if key in self._started:
                return
            self._started.add(key)
        with conn.begin():
            events = jobs.stage_running(conn, message["run_id"], message["job_id"], message["step"], stage)
        self.broker.publish_status(events)

    def _advance(self, conn: sa.Connection, run_id: str) -> None:
        with conn.begin():
            events = jobs.advance(conn, run_id)
        self.broker.publish_status(events)

    def _transform(self, conn: sa.Connection, step: steps.Step, message: dict[str, Any]) -> list[dict[str, Any]]:
        """Upsert the batch's rows; return the items to forward to embedding (failed ones stay behind)."""
        ids = [i["raw_data_id"] for i in message["items"] if i["raw_data_id"] is not None]
        with conn.begin():
            raws = {r.id: r for r in conn.execute(_RAW_BATCH, {"ids": ids})}
            rows: dict[int, dict[str, Any]] = {}
            errors: dict[int, str] = {}
            for raw_id in ids:
                raw = raws.get(raw_id)
                if raw is None:
                    errors[raw_id] = "raw payload not found"
                    continue
                if raw.status == "failed" or raw.run_id != message["run_id"]:
                    continue  # failed already, or a later run took the item over: its message does the work
                ctx = steps.RowContext(tenant_id=message["tenant_id"], integration_id=message["integration_id"],
                                       parent_external_id=raw.parent_external_id, fetched_at=raw.created_at)
                try:
                    rows[raw_id] = step.to_row(raw.raw_data, ctx)
                except Exception as exc:
                    errors[raw_id] = f"cannot map payload: {type(exc).__name__}: {exc}"
            errors.update(_upsert_each_alone_on_failure(conn, step, rows))
            ok = [i for i in rows if i not in errors]
            _move(conn, message["run_id"], step.name, ok, "transformed", "pending")
            _fail(conn, message["run_id"], step.name, errors, "transform")
        for raw_id, error in errors.items():
            log.warning("%s payload %s failed in transform: %s", step.display_name, raw_id, error)
        forward = []
        for item in message["items"]:
            raw_id = item["raw_data_id"]
            if raw_id is None:
                forward.append(item)
            elif raw_id in rows and raw_id not in errors:
                forward.append({**item, "external_id": rows[raw_id]["external_id"]})
        return forward + _end_left_behind(message["items"], forward)

    def _embed(self, conn: sa.Connection, step: steps.Step, message: dict[str, Any]) -> None:
        """Embed the batch's rows whose text changed; store vectors with the model name and hash.

        A row the embedder gives a zero or non-finite vector is not stored: the others are, and
        the message is then retried, which re-encodes only the refused rows; after the last
        attempt they are marked failed. The step's last item also embeds every row of its table
        that has no vector of the current model yet, so switching GHETL_EMBEDDER re-embeds on the
        next sync.
        """
        scope = {
            "tenant_id": message["tenant_id"],
            "integration_id": message["integration_id"],
            "table_name": step.table_name,
        }
        items = [i for i in message["items"] if i.get("external_id") is not None]
        refused = self._embed_items(conn, step, scope, message["run_id"], items) if items else {}
        if any(i["last_item"] for i in message["items"]):
            self._embed_missing(conn, step, scope, message["run_id"], skip=set(refused))
            with conn.begin():
                jobs.catch_up_done(conn, message["run_id"], step.name)
        if refused:
            raise ValueError(f"embedder refused {len(refused)} of {len(items)} {step.table_name}: "
                             + "; ".join(f"{ext}: {why}" for ext, why in refused.items()))

    def _embed_items(
        self, conn: sa.Connection, step: steps.Step, scope: dict[str, Any], run_id: str, items: list[dict[str, Any]]
    ) -> dict[str, str]:
        """Embed and store one message's rows and set their items' status; return the refused rows."""
        external_ids = [str(i["external_id"]) for i in items]
        with conn.begin():
            rows = {r["external_id"]: dict(r) for r in conn.execute(
                _rows_to_embed(step), {**scope, "model": self.embedder.model, "ids": external_ids}).mappings()}
        stored = {ext: row.pop("stored_hash") for ext, row in rows.items()}
        new_rows, refused = self._vectors(step, scope, rows, stored)
        missing = {i["raw_data_id"]: "row to embed not found" for i in items
                   if str(i["external_id"]) not in rows and i["raw_data_id"] is not None}
        done = [i["raw_data_id"] for i in items if i["raw_data_id"] is not None
                and i["raw_data_id"] not in missing and str(i["external_id"]) not in refused]
        with conn.begin():
            upsert(conn, embeddings_table, new_rows, EMBEDDING_KEY)
            _move(conn, run_id, step.name, done, "embedded", "transformed")
            _fail(conn, run_id, step.name, missing, "embedding")
        return refused

    def _embed_missing(self, conn: sa.Connection, step: steps.Step, scope: dict[str, Any], run_id: str,
                       skip: set[str]) -> None:
        """Embed, in large batches, every row of the scope that has no vector of the current model.

        Rows of this run are left to their own messages, which other workers may still be
        handling: taking them here would embed them twice and keep this loop chasing them.
        """
        table = step.table
        model = self.embedder.model
        in_run = sa.select(raw_extraction_data.c.external_id).where(
            raw_extraction_data.c.run_id == run_id, raw_extraction_data.c.entity_type == step.name
        )
        count = 0
        while True:
            has_vector = sa.exists().where(
                *(embeddings_table.c[k] == v for k, v in scope.items()),
                embeddings_table.c.external_id == table.c.external_id,
                embeddings_table.c.model == model,
            )
            query = sa.select(*step.embedded_columns).where(
                table.c.tenant_id == scope["tenant_id"],
                table.c.integration_id == scope["integration_id"],
                ~has_vector,
                table.c.external_id.not_in(in_run),
            )
            if skip:
                query = query.where(table.c.external_id.not_in(sorted(skip)))
            with conn.begin():
                rows = {r["external_id"]: dict(r) for r in conn.execute(query.limit(CATCH_UP_BATCH)).mappings()}
            if not rows:
                break
            new_rows, refused = self._vectors(step, scope, rows, stored={})
            with conn.begin():
                upsert(conn, embeddings_table, new_rows, EMBEDDING_KEY)
            for ext, why in refused.items():
                log.warning("%s %s has no %s vector: %s", step.table_name, ext, model, why)
            skip |= set(refused)
            count += len(new_rows)
        if count:
            log.info("embedded %d %s that had no %s vector yet", count, step.table_name, model)

    def _vectors(self, step: steps.Step, scope: dict[str, Any], rows: dict[str, dict[str, Any]],
                 stored: dict[str, str | None]) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """Encode the rows whose (model, text) changed in one call; return the vector rows and the refused ones.

        `stored` maps external ids to the content hashes already stored for the current model.
        """
        embedder = self.embedder
        texts: dict[str, str] = {}
        hashes: dict[str, str] = {}
        for ext, row in rows.items():
            text = step.embed_text(row)
            hashes[ext] = embeddings.content_hash(embedder.model, text)
            if stored.get(ext) != hashes[ext]:
                texts[ext] = text
        if not texts:
            return [], {}
        vectors = np.asarray(embedder.embed(list(texts.values())), dtype=np.float32)
        if vectors.shape != (len(texts), embedder.dimension):
            raise ValueError(f"embedder returned shape {vectors.shape}, expected {(len(texts), embedder.dimension)}")
        usable = np.isfinite(vectors).all(axis=1) & (np.abs(vectors).sum(axis=1) > 0)
        now = utcnow()
        new_rows, refused = [], {}
        for n, ext in enumerate(texts):
            if not usable[n]:
                refused[ext] = "zero or non-finite vector"
                continue
            new_rows.append({**scope, "external_id": ext, "model": embedder.model, "dimension": embedder.dimension,
                             "vector": embeddings.to_bytes(vectors[n]), "content_hash": hashes[ext],
                             "created_at": now, "updated_at": now})
        return new_rows, refused

    def record_failure(self, stage: str, message: dict[str, Any], reason: str) -> None:
        """A message is being dead-lettered: its items fail, the run goes on without them."""
        ids = [i["raw_data_id"] for i in message["items"] if i.get("raw_data_id") is not None]
        if not message.get("run_id"):
            log.error("a dead-lettered %s message belongs to no run; nothing to record", stage)
            return
        try:
            with self.engine.connect() as conn:
                with conn.begin():
                    _fail(conn, message["run_id"], message["step"], {i: reason for i in ids}, stage)
                    if stage == "embedding" and any(i.get("last_item") for i in message["items"]):
                        jobs.catch_up_done(conn, message["run_id"], message["step"])
                if stage == "transform" and (end := _end_left_behind(message["items"], [])):
                    self.broker.publish("embedding", [{**message, "items": end}])
                self._advance(conn, message["run_id"])
        except Exception as exc:
            log.error("could not record the failure of a %s message (%s); its items stay pending",
                      stage, first_line(exc))
            log.debug("the failure to record it", exc_info=True)


class Trespass(PoisonMessage):
    """A message naming raw rows of another tenant or integration: refused whole, nothing written,
    none of those rows marked failed (they are someone else's)."""


_FOREIGN_ROWS = sa.select(sa.func.count()).select_from(raw_extraction_data).where(
    raw_extraction_data.c.id.in_(sa.bindparam("ids", expanding=True)),
    sa.or_(raw_extraction_data.c.tenant_id != sa.bindparam("tenant"),
           raw_extraction_data.c.integration_id != sa.bindparam("integration"),
           raw_extraction_data.c.entity_type != sa.bindparam("step")),
)


def _check_scope(conn: sa.Connection, message: dict[str, Any]) -> None:
    """Refuse a message whose raw rows belong to another tenant, integration or step than it says.

    Anyone who can publish on the broker's vhost could otherwise have one tenant's payloads
    written into another tenant's rows. Rows of another run of the same job are not refused:
    a late message of an earlier run whose items a later run took over is expected, and the
    stages' updates, which match the run, leave those items to their new run.
    """
    ids = [i["raw_data_id"] for i in message["items"] if i.get("raw_data_id") is not None]
    if not ids:
        return
    with conn.begin():
        foreign = conn.execute(_FOREIGN_ROWS, {"ids": ids, "tenant": message["tenant_id"],
                                               "integration": message["integration_id"],
                                               "step": message["step"]}).scalar_one()
    if foreign:
        raise Trespass(f"the message names {foreign} raw rows that are not tenant {message['tenant_id']}'s "
                       f"{message['step']} items of integration {message['integration_id']}; refused, nothing written")


def _end_left_behind(items: list[dict[str, Any]], forwarded: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The step's end, as a completion item, when it is among `items` but not among those going on.

    The item flagged `last_item` tells the embedding stage to do the step's catch-up, which the
    run counts on; when that item itself failed in transform, the flag must still get there.
    """
    last = [i for i in items if i.get("last_item")]
    if last and not any(i.get("last_item") for i in forwarded):
        return [{**broker_mod.completion_item(last_job_item=bool(last[0].get("last_job_item"))), "first_item": False}]
    return []


def database_unavailable(exc: BaseException) -> bool:
    """Whether a failure is the database's own (unreachable, connection dropped, shutting down,
    locked) rather than one of the statement: an error of the message, such as a refused row or
    a deadlock, still counts as a failed attempt.

    psycopg2 gives no SQLSTATE (pgcode None) for errors of the client library itself, such as a
    refused or broken connection; other drivers have no `pgcode` at all.
    """
    if not isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError)):
        return False
    if exc.connection_invalidated:
        return True
    sqlite_error = getattr(exc.orig, "sqlite_errorname", None)
    if sqlite_error is not None:
        return sqlite_error in UNREACHABLE_SQLITE
    code = getattr(exc.orig, "pgcode", "")
    return code is None or code.startswith("08") or code in UNREACHABLE_SQLSTATES


@functools.lru_cache(maxsize=16)
def _rows_to_embed(step: steps.Step) -> sa.Select[Any]:
    """A batch of the step's rows by id, with the content hash of the vector stored for them."""
    table = step.table
    vector = embeddings_table.alias("stored")
    scope = ("tenant_id", "integration_id", "table_name", "model")
    return (
        sa.select(*step.embedded_columns, vector.c.content_hash.label("stored_hash"))
        .outerjoin(vector, sa.and_(
            *(vector.c[k] == sa.bindparam(k) for k in scope),
            vector.c.external_id == table.c.external_id,
        ))
        .where(table.c.tenant_id == sa.bindparam("tenant_id"), table.c.integration_id == sa.bindparam("integration_id"),
               table.c.external_id.in_(sa.bindparam("ids", expanding=True)))
    )


def _upsert_each_alone_on_failure(
    conn: sa.Connection, step: steps.Step, rows: dict[int, dict[str, Any]]
) -> dict[int, str]:
    """Upsert the batch in one statement; if the database refuses it, find the bad rows one by one.

    Errors of the database itself (connection lost, timeout) are raised: the whole message is
    then retried rather than its items blamed.
    """
    if not rows:
        return {}
    try:
        with conn.begin_nested():
            step.upsert(conn, list(rows.values()))
        return {}
    except TRANSIENT:
        raise
    except sa.exc.DBAPIError:
        pass
    errors = {}
    for raw_id, row in rows.items():
        try:
            with conn.begin_nested():
                step.upsert(conn, [row])
        except TRANSIENT:
            raise
        except sa.exc.DBAPIError as exc:
            errors[raw_id] = f"database refused the row: {str(exc.orig).splitlines()[0]}"
    return errors


def _move(
    conn: sa.Connection, run_id: str, step: str, ids: list[int], to_status: ItemStatus, from_status: ItemStatus
) -> None:
    """Move the run's items from one status to the next, counting only those that really moved."""
    if not ids:
        return
    params = {"ids": ids, "run": run_id, "from_status": from_status, "to_status": to_status}
    moved = conn.execute(_MOVE, params).rowcount
    jobs.count_items(conn, run_id, step, {from_status: -moved, to_status: moved})


def _fail(conn: sa.Connection, run_id: str, step: str, errors: dict[int, str], stage: str) -> None:
    """Mark items failed in a stage, unless they already got past it (a late duplicate)."""
    changes: Counter[str] = Counter()
    for raw_id, error in errors.items():
        for status in ("pending",) if stage == "transform" else ("pending", "transformed"):
            moved = conn.execute(
                raw_extraction_data.update()
                .where(raw_extraction_data.c.id == raw_id, raw_extraction_data.c.run_id == run_id,
                       raw_extraction_data.c.status == status)
                .values(status="failed", failed_stage=stage, error_message=redact(error)[:2000],
                        attempts=raw_extraction_data.c.attempts + 1)
            ).rowcount
            if moved:
                changes[status] -= 1
                changes[f"failed_{stage}"] += 1
                break
    jobs.count_items(conn, run_id, step, changes)
