"""Dead letters: the messages workers gave up on, kept in the database to be seen, replayed or dropped.

A worker that dead-letters a message (it can never be read, or it failed GHETL_MAX_ATTEMPTS
times) writes it to `dead_letters` with its stage, reason and attempts, on every back end: on
`memory://` the broker's list dies with its process, and on RabbitMQ the `{prefix}.dead` queue
is a copy that RabbitMQ's tools can show, but not per tenant. The table is the truth; replaying
or dropping a letter removes the broker's copy too.

Replaying sends the message back to its stage with a fresh attempt count. When the message
gave up, its items were marked failed and the run went on without them; replaying turns them
back to the status their stage takes (`pending` for transform, `transformed` for embedding),
in the run's counts as well, so the worker handles them as it would have. Only an item's newest
payload is turned back: when a later run fetched the item again, that run already handled it,
and the old payload must not overwrite its row. A message of a run that has ended is harmless
to replay for the same reason the workers are idempotent: every update matches the run and the
item's status, so what is no longer waiting is not touched, and the job's status stays as the
run left it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ..logs import first_line, redact
from ..queue import broker as broker_mod
from ..queue.broker import Broker, MemoryBroker, Outcome, PoisonMessage
from ..store.db import Unindexed, dead_letters, raw_extraction_data, tenants
from . import jobs

log = logging.getLogger(__name__)

REOPENED_STATUS = {"transform": "pending", "embedding": "transformed"}


def record(engine: Engine, stage: str, body: bytes, message: dict[str, Any] | None, reason: str,
           attempts: int) -> int | None:
    """Keep a dead-lettered message; its id, or None when the database would not take it (the
    broker's dead-letter queue then holds the only copy, and the worker goes on)."""
    message = message or {}
    row = {"tenant_id": message.get("tenant_id"), "job_id": message.get("job_id"), "run_id": message.get("run_id"),
           "step": message.get("step"), "stage": stage, "body": body, "reason": redact(reason), "attempts": attempts}
    try:
        with engine.begin() as conn:
            return int(conn.execute(dead_letters.insert().values(**row).returning(dead_letters.c.id)).scalar_one())
    except sa.exc.SQLAlchemyError as exc:
        log.error("could not keep a dead-lettered %s message in the database (%s); only the broker has it",
                  stage, first_line(exc))
        return None


def list_letters(conn: Connection, tenant_id: int | None = None, ids: list[int] | None = None) -> list[dict[str, Any]]:
    """The dead letters, oldest first, with their tenant's name and the raw payload ids they name.

    A letter that cannot be read as a message belongs to no tenant: shown only without `tenant_id`.
    """
    query = (sa.select(dead_letters, tenants.c.name.label("tenant"))
             .outerjoin(tenants, tenants.c.id == dead_letters.c.tenant_id).order_by(dead_letters.c.id))
    if tenant_id is not None:
        query = query.where(dead_letters.c.tenant_id == tenant_id)
    if ids:
        query = query.where(dead_letters.c.id.in_(ids))
    letters = []
    for row in conn.execute(query).mappings():
        letter = dict(row)
        message = _readable(letter["body"])
        letter["readable"] = message is not None
        letter["raw_data_ids"] = _raw_ids(message) if message else []
        letter["items"] = len(message["items"]) if message else 0
        letters.append(letter)
    return letters


def drop(engine: Engine, broker: Broker, letters: list[dict[str, Any]]) -> int:
    """Delete these letters, then the broker's copies; return how many were still there."""
    ids = [letter["id"] for letter in letters]
    if not ids:
        return 0
    with engine.begin() as conn:
        dropped = conn.execute(dead_letters.delete().where(dead_letters.c.id.in_(ids))).rowcount
    broker.forget_dead_letters(set(ids))
    return dropped


@dataclass
class Replayed:
    """What a replay did: letters sent back, items turned back to their stage, letters it could not send."""

    letters: list[dict[str, Any]] = field(default_factory=list)
    reopened: list[int] = field(default_factory=list)
    unreadable: list[dict[str, Any]] = field(default_factory=list)


def replay(engine: Engine, broker: Broker, letters: list[dict[str, Any]]) -> Replayed:
    """Send each readable letter back to its stage queue, one transaction each: its items turned
    back and its row deleted, committed only once the broker holds the message. A letter another
    replay took meanwhile is skipped."""
    done = Replayed()
    for letter in letters:
        message = _readable(letter["body"])
        if message is None or letter["stage"] not in REOPENED_STATUS:
            done.unreadable.append(letter)
            continue
        with engine.begin() as conn:
            if not conn.execute(dead_letters.delete().where(dead_letters.c.id == letter["id"])).rowcount:
                continue
            done.reopened += _reopen(conn, letter["stage"], message)
            broker.publish(letter["stage"], [message])
        done.letters.append(letter)
    broker.forget_dead_letters({letter["id"] for letter in done.letters})
    return done


def _reopen(conn: Connection, stage: str, message: dict[str, Any]) -> list[int]:
    """Turn the message's items that failed in `stage` back to the status that stage takes, if
    each is still its item's newest payload; return their ids."""
    ids = _raw_ids(message)
    if not ids or not message.get("run_id"):
        return []
    raw, later = raw_extraction_data, raw_extraction_data.alias("later")
    superseded = sa.exists().where(later.c.tenant_id == raw.c.tenant_id, later.c.integration_id == raw.c.integration_id,
                                   later.c.entity_type == raw.c.entity_type, later.c.external_id == raw.c.external_id,
                                   later.c.id > raw.c.id)
    reopened = list(conn.execute(
        raw.update()
        .where(raw.c.id.in_(ids), Unindexed(raw.c.run_id) == message["run_id"], raw.c.status == "failed",
               raw.c.failed_stage == stage, ~superseded)
        .values(status=REOPENED_STATUS[stage], failed_stage=None, error_message=None)
        .returning(raw.c.id)
    ).scalars())
    jobs.count_items(conn, message["run_id"], message["step"],
                     {f"failed_{stage}": -len(reopened), REOPENED_STATUS[stage]: len(reopened)})
    return reopened


def run_here(engine: Engine, broker: MemoryBroker, reopened: list[int], timeout: float) -> None:
    """On `memory://` nobody else consumes: handle the replayed messages in this process, until
    the queues are empty, no retry is waiting and none of the reopened items waits for a stage."""
    from .workers import Pipeline

    pipeline = Pipeline(engine, broker)
    retrying = _Retries(pipeline.deliver)
    stop = threading.Event()
    consumers = threading.Thread(target=broker.consume, args=(list(broker_mod.STAGE_QUEUES), retrying.deliver),
                                 kwargs={"concurrency": 1, "stop": stop}, daemon=True)
    consumers.start()
    deadline = time.monotonic() + timeout
    try:
        while not (retrying.none_waiting() and _all_queues_empty(broker) and not _waiting(engine, reopened)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the replayed messages were not handled within {timeout:.0f} s; "
                                   "see: ghetl jobs and ghetl dead-letters list")
            time.sleep(0.05)
    finally:
        stop.set()
        consumers.join()


class _Retries:
    """Counts deliveries sent to retry and not yet back, so that `run_here` waits for them."""

    def __init__(self, deliver: broker_mod.Deliver) -> None:
        self._deliver = deliver
        self._lock = threading.Lock()
        self._waiting = 0

    def deliver(self, stage: str, body: bytes, attempt: int) -> Outcome:
        outcome = self._deliver(stage, body, attempt)
        with self._lock:
            self._waiting += (outcome.action == "retry") - (attempt > 1)
        return outcome

    def none_waiting(self) -> bool:
        with self._lock:
            return self._waiting <= 0


def _all_queues_empty(broker: MemoryBroker) -> bool:
    return all(broker.pending(stage) == 0 for stage in broker_mod.STAGE_QUEUES)


def _waiting(engine: Engine, ids: list[int]) -> bool:
    if not ids:
        return False
    with engine.connect() as conn:
        return bool(conn.execute(sa.select(sa.func.count()).where(
            raw_extraction_data.c.id.in_(ids), raw_extraction_data.c.status.in_(("pending", "transformed"))
        )).scalar_one())


def _readable(body: bytes) -> dict[str, Any] | None:
    try:
        return broker_mod.decode(body)
    except PoisonMessage:
        return None


def _raw_ids(message: dict[str, Any]) -> list[int]:
    return [i["raw_data_id"] for i in message["items"] if i.get("raw_data_id") is not None]
