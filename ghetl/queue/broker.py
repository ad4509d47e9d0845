"""Queues between the stages: the message format, and the in-process broker of the embedded default.

A message carries one batch of items of one run, so ten thousand repositories travel as a
hundred messages while every item keeps its own `first_item` / `last_item` / `last_job_item`
flags, forwarded unchanged from stage to stage. A message in the single-item shape of the
spec (the fields at top level, no `items`) is accepted too.

Brokers only move bytes. What a delivery means (ack, retry later, dead-letter) is decided by
`ghetl.pipeline.workers.deliver`, so the in-process broker and RabbitMQ behave the same.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from .. import config
from ..records import QUEUE_STAGES
from ..status.events import Event, StatusBus

log = logging.getLogger(__name__)

STAGE_QUEUES = QUEUE_STAGES  # ("transform", "embedding")
FLAGS = ("first_item", "last_item", "last_job_item")
ENVELOPE = ("tenant_id", "integration_id", "job_id", "step")
ENVELOPE_TYPES = {"tenant_id": int, "integration_id": int, "job_id": int, "step": str, "run_id": str}


class PoisonMessage(ValueError):
    """A message that can never be processed: not JSON, or missing what every message needs."""


@dataclass
class Outcome:
    """What to do with a delivery: "ack", "retry" (after a delay), "dead" (dead-letter queue), or
    "requeue": back to its queue after `delay` seconds as the same attempt, for a failure that
    is not the message's (the database is down), so that an outage does not use up its attempts."""

    action: str
    reason: str = ""
    delay: float = 0.0
    letter: int | None = None  # for "dead": the id of its `dead_letters` row, when it could be written


def max_attempts() -> int:
    return int(config.env_float("GHETL_MAX_ATTEMPTS", 5, minimum=1))


def retry_delay(attempt: int) -> float:
    """Seconds before attempt `attempt + 1`: doubling from GHETL_RETRY_DELAY (default 1 s), capped at a minute."""
    return min(60.0, config.env_float("GHETL_RETRY_DELAY", 1.0, minimum=0) * 2.0 ** (attempt - 1))


def check_settings() -> None:
    """Read the settings that consumers read on every delivery, in the thread that starts them:
    a bad value is then one error at start, not a consumer thread that dies (and a sync that
    waits for it forever)."""
    max_attempts()
    retry_delay(1)


def encode(message: dict[str, Any]) -> bytes:
    return orjson.dumps(message, default=str)


def decode(body: bytes) -> dict[str, Any]:
    """Parse and normalise a message, or raise PoisonMessage saying what is wrong with it."""
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise PoisonMessage(f"message is not valid JSON: {exc}") from None
    if not isinstance(message, dict):
        raise PoisonMessage("message is not a JSON object")
    missing = [k for k in ENVELOPE if k not in message]
    if missing:
        raise PoisonMessage(f"message lacks {', '.join(missing)}")
    for key, kind in ENVELOPE_TYPES.items():
        value = message.get(key)
        if (value is not None or key in ENVELOPE) and (not isinstance(value, kind) or isinstance(value, bool)):
            raise PoisonMessage(f"message field '{key}' must be {kind.__name__}, got {type(value).__name__}")
    if "items" not in message:
        message["items"] = [{k: message.get(k) for k in ("raw_data_id", "external_id", *FLAGS)}]
    items = message["items"]
    if not isinstance(items, list) or not items or not all(isinstance(i, dict) for i in items):
        raise PoisonMessage("message 'items' must be a non-empty list of objects")
    for item in items:
        for flag in FLAGS:
            item[flag] = bool(item.get(flag, False))
        raw_id = item.get("raw_data_id")
        if raw_id is not None and not isinstance(raw_id, int):
            raise PoisonMessage(f"raw_data_id must be an integer or null, got {raw_id!r}")
        if raw_id is None and item.get("external_id") is None and not item["last_item"]:
            raise PoisonMessage(
                "an item needs raw_data_id or external_id, or must be a step's completion item (last_item)"
            )
    return message


def split_items(body: bytes) -> list[bytes]:
    """One message per item of a batch message (the envelope copied into each).

    Used when a batch keeps killing the worker that handles it: apart, the items that are fine
    go through and only the one to blame is retried to its end. A message that cannot be
    decoded stays whole.
    """
    try:
        message = decode(body)
    except PoisonMessage:
        return [body]
    if len(message["items"]) < 2:
        return [body]
    return [encode({**message, "items": [item]}) for item in message["items"]]


def completion_item(*, last_job_item: bool = True) -> dict[str, Any]:
    """The item of a step with nothing to do: it still passes every stage so every circle ends,
    and carries the step's embedding catch-up."""
    return {"raw_data_id": None, "external_id": None, "first_item": True, "last_item": True,
            "last_job_item": last_job_item}


Deliver = Callable[[str, bytes, int], Outcome]


class Broker(Protocol):
    """What the pipeline needs from a message broker."""

    url: str
    published: int  # work messages published by this process, for the worker's closing line

    def declare(self) -> None:
        """Make sure the broker can be reached and holds the queues; raise ConnectionError if not."""

    def publish(self, stage: str, messages: list[dict[str, Any]]) -> None:
        """Return only when the broker holds every message (durably, where it can)."""

    def consume(self, stages: list[str], deliver: Deliver, *, concurrency: int, stop: threading.Event) -> None:
        """Process deliveries of those stages until `stop` is set; block meanwhile."""

    def queue(self, stage: str) -> str:
        """The name a user sees for the stage's queue (in warnings that say what to start)."""

    def consumer_count(self, stage: str) -> int:
        """How many consumers the stage's queue has now; raise ConnectionError if unknown."""

    def forget_dead_letters(self, letters: set[int]) -> None:
        """Remove the broker's own copies of these dead letters (`dead_letters` ids), which were
        replayed or dropped: the table is the truth, the broker's copy must not contradict it."""

    def publish_status(self, events: list[Event]) -> None: ...

    def subscribe_status(
        self, callback: Callable[[Event], None], *, on_bound: Callable[[], None] | None = None
    ) -> Callable[[], None]:
        """Deliver every status event to `callback` until the returned function is called.

        `on_bound` is called each time the subscription is (re)established: a subscriber that
        keeps state can resynchronise, since events published while it was down never arrive.
        """

    def close(self) -> None: ...


def run_consumers(
    loop: Callable[[str, Deliver, threading.Event], None], stages: list[str], deliver: Deliver, *,
    concurrency: int, stop: threading.Event,
) -> None:
    """Run `loop(stage, deliver, stop)` in `concurrency` threads per stage; return when all have ended.

    A loop that raises sets `stop`, so the others end too, and its error is raised here: a
    process whose consumers died one by one would otherwise go on without them, unnoticed.
    """
    errors: list[BaseException] = []

    def guarded(stage: str) -> None:
        try:
            loop(stage, deliver, stop)
        except BaseException as exc:
            errors.append(exc)
            stop.set()

    threads = [
        threading.Thread(target=guarded, args=(stage,), name=f"ghetl-{stage}-{n}", daemon=True)
        for stage in stages
        for n in range(concurrency)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


@dataclass
class DeadLetter:
    stage: str
    body: bytes
    reason: str
    attempts: int
    letter: int | None = None


@dataclass
class MemoryBroker:
    """The embedded default: thread-safe queues and a status bus inside this process."""

    url: str = "memory://"
    status_bus: StatusBus = field(default_factory=StatusBus)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    published: int = 0

    def __post_init__(self) -> None:
        self._queues: dict[str, queue.Queue[tuple[bytes, int]]] = {s: queue.Queue() for s in STAGE_QUEUES}
        self._consumers: dict[str, int] = dict.fromkeys(STAGE_QUEUES, 0)
        self._lock = threading.Lock()

    def declare(self) -> None:
        """Nothing to check: the queues are this process's own."""

    def publish(self, stage: str, messages: list[dict[str, Any]]) -> None:
        for message in messages:
            self._queues[stage].put((encode(message), 1))
        with self._lock:
            self.published += len(messages)

    def publish_raw(self, stage: str, body: bytes) -> None:
        """Put bytes on a queue as they are (how tests and operators inject a bad message)."""
        self._queues[stage].put((body, 1))

    def pending(self, stage: str) -> int:
        return self._queues[stage].qsize()

    def consume(self, stages: list[str], deliver: Deliver, *, concurrency: int, stop: threading.Event) -> None:
        run_consumers(self._loop, stages, deliver, concurrency=concurrency, stop=stop)

    def queue(self, stage: str) -> str:
        return f"{stage} (in-process)"

    def consumer_count(self, stage: str) -> int:
        with self._lock:
            return self._consumers[stage]

    def _loop(self, stage: str, deliver: Deliver, stop: threading.Event) -> None:
        with self._lock:
            self._consumers[stage] += 1
        try:
            self._deliver_until(stage, deliver, stop)
        finally:
            with self._lock:
                self._consumers[stage] -= 1

    def _deliver_until(self, stage: str, deliver: Deliver, stop: threading.Event) -> None:
        q = self._queues[stage]
        while not stop.is_set():
            try:
                body, attempt = q.get(timeout=0.05)
            except queue.Empty:
                continue
            outcome = deliver(stage, body, attempt)
            if outcome.action == "retry":
                timer = threading.Timer(retry_delay(attempt), q.put, args=((body, attempt + 1),))
                timer.daemon = True
                timer.start()
            elif outcome.action == "requeue":
                stop.wait(outcome.delay)
                q.put((body, attempt))
            elif outcome.action == "dead":
                with self._lock:
                    self.dead_letters.append(DeadLetter(stage, body, outcome.reason, attempt, outcome.letter))

    def forget_dead_letters(self, letters: set[int]) -> None:
        with self._lock:
            self.dead_letters = [d for d in self.dead_letters if d.letter not in letters]

    def publish_status(self, events: list[Event]) -> None:
        self.status_bus.publish(events)

    def subscribe_status(
        self, callback: Callable[[Event], None], *, on_bound: Callable[[], None] | None = None
    ) -> Callable[[], None]:
        """The in-process bus never drops a subscription, so `on_bound` is never needed."""
        return self.status_bus.subscribe(callback)

    def close(self) -> None:
        """Nothing to release: the queues live as long as the process."""


_memory_broker: MemoryBroker | None = None


def connect(url: str | None = None) -> Broker:
    """The broker for a URL: `memory://` (one per process, shared) or `amqp://…` (RabbitMQ)."""
    global _memory_broker
    url = url or config.broker_url()
    if url.startswith("memory://"):
        if _memory_broker is None:
            _memory_broker = MemoryBroker()
        return _memory_broker
    if url.startswith(("amqp://", "amqps://")):
        from .rabbitmq import RabbitBroker

        return RabbitBroker(url)
    raise ValueError(f"GHETL_BROKER_URL must start with memory:// or amqp://, got '{url.split('://')[0]}://…'")
