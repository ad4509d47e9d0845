"""RabbitMQ for the scale-out deployment, behind the same `Broker` protocol as the in-process broker.

Names (each begins with GHETL_QUEUE_PREFIX, default "ghetl", so several deployments or tests
can share one server):

- `{prefix}.transform`, `{prefix}.embedding`: durable work queues of persistent messages; the
  header `x-ghetl-attempt` says which attempt a delivery is (1 when absent).
- `{prefix}.{stage}.retry.{n}`: where a message waits after its attempt n failed. Each message
  carries its own TTL, `retry_delay(n)` (doubling from GHETL_RETRY_DELAY), and the queue
  dead-letters expired messages back to the stage's work queue. One queue per attempt keeps
  every message of a queue on the same delay, so RabbitMQ's expire-at-the-head rule never holds
  a short delay behind a long one. They are declared when first needed and expire after an
  hour without use.
- `{prefix}.dead`: messages given up on (poison, or out of attempts), with the headers
  `x-ghetl-reason`, `x-ghetl-stage`, `x-ghetl-attempts` and `x-ghetl-dead-letter` (the id of
  the message's `dead_letters` row). That table is the truth, which `ghetl dead-letters`
  reads; this queue holds a copy for RabbitMQ's own tools, and a replayed or dropped letter's
  copy is removed from it (`forget_dead_letters`).
- `{prefix}.status`: fanout exchange of status events; each subscriber binds its own exclusive
  auto-delete queue.

Publishing goes through one SelectConnection per broker object, driven by its own I/O thread,
with its channel in confirm mode. `publish` hands a whole list of messages to that thread and
waits once for RabbitMQ's acks, which the broker coalesces (`multiple=True`) as it persists
them: a list costs one round trip, not one per message as with pika's BlockingConnection,
whose `basic_publish` on a confirming channel waits for each confirm in turn. Any thread may
publish; only the I/O thread touches that connection. Work messages are published mandatory,
so a message no queue would take raises instead of vanishing; a nack (e.g. a full queue with
`reject-publish` overflow) raises `PublishRejected`.

Consuming uses one BlockingConnection per consumer thread (pika connections are not
thread-safe), prefetch GHETL_PREFETCH (default 1, as a message is a batch of up to 100 items).
A delivery is acked only after `deliver` returned, that is after its database transaction
committed and the messages it produced were confirmed; a retry or a dead letter is confirmed
before the original is acked. Lost connections are re-opened with backoff; whatever was not
acked is redelivered by RabbitMQ, and a redelivery counts as a failed attempt: its items are
parked one message each for the next attempt, handled again idempotently, and dead-lettered
after GHETL_MAX_ATTEMPTS, so even a message that kills its worker cannot circle forever.
A "requeue" (the database is down, which is not the message's fault) holds the message for its
delay, then publishes it back to its work queue as the same attempt, and acks it: a nack would
bring it back marked redelivered, which would count as a failed attempt.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson
import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from .. import config
from ..logs import redact, safe_url
from ..status.events import Event
from . import broker as broker_mod
from .broker import DeadLetter, Deliver, Outcome

log = logging.getLogger(__name__)

ATTEMPT = "x-ghetl-attempt"
REASON = "x-ghetl-reason"
STAGE = "x-ghetl-stage"
ATTEMPTS = "x-ghetl-attempts"
LETTER = "x-ghetl-dead-letter"
PUBLISH_PATIENCE = 120.0
STATUS_PATIENCE = 5.0
RETRY_QUEUE_EXPIRES_MS = 3_600_000
CONNECTION_ERRORS = (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError, OSError)


class PublishRejected(ConnectionError):
    """RabbitMQ refused to take a message (nack, no such queue, or a closed exchange)."""


def queue_prefix() -> str:
    return os.environ.get("GHETL_QUEUE_PREFIX") or "ghetl"


def prefetch() -> int:
    """Unacked messages a consumer may hold (GHETL_PREFETCH, default 1).

    One is enough, as a message already carries up to 100 items; and with one, a message that
    comes back after its worker died is the one that was being handled, so the lost attempt is
    charged to it and not to a bystander that merely waited in the prefetch buffer.
    """
    return int(config.env_float("GHETL_PREFETCH", 1, minimum=1))


class Backoff:
    """Waits between reconnections: 0.2 s doubling to 10 s, jittered so that the workers of a
    restarted broker do not all knock at once; back to short once a connection works (which a
    tenacity retry, counting attempts for the life of the loop, would not do)."""

    def __init__(self) -> None:
        self.failures = 0

    def reset(self) -> None:
        self.failures = 0

    def next(self) -> float:
        self.failures += 1
        return min(10.0, 0.2 * 2.0 ** (self.failures - 1)) * random.uniform(0.5, 1.0)


class Outgoing(NamedTuple):
    exchange: str
    routing_key: str
    body: bytes
    headers: dict[str, Any]
    persistent: bool = True
    mandatory: bool = True
    expiration: str | None = None


@dataclass(eq=False)
class _Batch:
    """Messages handed to the I/O thread together, settled when the last of them is confirmed."""

    remaining: int
    done: threading.Event = field(default_factory=threading.Event)
    error: str | None = None
    retryable: bool = True


class _Publisher:
    """A confirming channel on a SelectConnection run by a thread of its own, reconnecting forever."""

    def __init__(self, params: pika.URLParameters) -> None:
        self._params = params
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._connection: pika.SelectConnection | None = None
        self._channel: Any = None
        self._inflight: set[_Batch] = set()
        self._unconfirmed: dict[int, _Batch] = {}
        self._tag = 0
        self._backoff = Backoff()
        self._reason = ""

    def publish(self, messages: list[Outgoing]) -> None:
        """Return once RabbitMQ confirmed every message; resend after a lost connection."""
        if not messages:
            return
        deadline = time.monotonic() + PUBLISH_PATIENCE
        while True:
            batch = self._submit(messages, deadline - time.monotonic())
            if batch is not None:
                batch.done.wait(max(0.0, deadline - time.monotonic()))
                if batch.done.is_set() and batch.error is None:
                    return
                if batch.error is not None and not batch.retryable:
                    raise PublishRejected(batch.error)
            if time.monotonic() >= deadline:
                raise ConnectionError(f"RabbitMQ did not confirm {len(messages)} messages within "
                                      f"{PUBLISH_PATIENCE:.0f} s: {self._reason or 'no connection'}")
            time.sleep(0.1)

    def send(self, messages: list[Outgoing]) -> bool:
        """Publish without waiting for the confirms (status events); False when there is no connection."""
        return self._submit(messages, STATUS_PATIENCE) is not None

    def _submit(self, messages: list[Outgoing], patience: float) -> _Batch | None:
        self._start()
        if not self._ready.wait(max(0.0, patience)):
            return None
        batch = _Batch(len(messages))
        with self._lock:
            connection = self._connection
            if connection is None or not self._ready.is_set():
                return None
            self._inflight.add(batch)
        try:
            connection.ioloop.add_callback_threadsafe(lambda: self._send(batch, messages))
        except Exception as exc:  # the I/O loop is already closed; the batch is resent
            self._settle(batch, f"connection closing: {exc}", retryable=True)
        return batch

    def _start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._closing.clear()
                self._thread = threading.Thread(target=self._run, name="ghetl-rabbitmq-publisher", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while not self._closing.is_set():
            connection = pika.SelectConnection(
                self._params,
                on_open_callback=self._on_open,
                on_open_error_callback=self._on_down,
                on_close_callback=self._on_down,
            )
            with self._lock:
                self._connection = connection
            connection.ioloop.start()
            with self._lock:
                self._ready.clear()
                self._connection = None
                self._channel = None
                lost = list(self._inflight)
            for batch in lost:
                self._settle(batch, f"lost the connection to RabbitMQ: {self._reason}", retryable=True)
            self._unconfirmed.clear()
            if not self._closing.is_set():
                delay = self._backoff.next()
                log.warning("RabbitMQ publisher connection down (%s); reconnecting in %.1f s", self._reason, delay)
                self._closing.wait(delay)

    def _on_open(self, connection: pika.SelectConnection) -> None:
        connection.channel(on_open_callback=self._on_channel_open)

    def _on_down(self, connection: pika.SelectConnection, reason: Any) -> None:
        self._reason = _describe(reason)
        connection.ioloop.stop()

    def _on_channel_open(self, channel: Any) -> None:
        self._channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        channel.confirm_delivery(ack_nack_callback=self._on_confirm, callback=self._on_confirming)

    def _on_confirming(self, _frame: Any) -> None:
        """The channel confirms from now on; RabbitMQ numbers its deliveries from 1 again."""
        self._tag = 0
        self._backoff.reset()
        self._ready.set()

    def _on_channel_closed(self, channel: Any, reason: Exception) -> None:
        """A channel the broker closed (e.g. an exchange deleted under us) fails its batches for good and is
        replaced."""
        self._ready.clear()
        refused = isinstance(reason, pika.exceptions.ChannelClosedByBroker)
        for batch in set(self._unconfirmed.values()):
            self._settle(batch, f"RabbitMQ closed the channel: {_describe(reason)}", retryable=not refused)
        self._unconfirmed.clear()
        self._channel = None
        connection = self._connection
        if connection is not None and connection.is_open and not self._closing.is_set():
            connection.channel(on_open_callback=self._on_channel_open)

    def _send(self, batch: _Batch, messages: list[Outgoing]) -> None:
        channel = self._channel
        if batch.done.is_set():
            return
        if channel is None or not channel.is_open:
            self._settle(batch, "channel not open", retryable=True)
            return
        for message in messages:
            self._tag += 1
            self._unconfirmed[self._tag] = batch
            properties = pika.BasicProperties(
                content_type="application/json",
                delivery_mode=pika.DeliveryMode.Persistent if message.persistent else pika.DeliveryMode.Transient,
                headers=message.headers,
                expiration=message.expiration,
                message_id=str(self._tag),
            )
            channel.basic_publish(message.exchange, message.routing_key, message.body, properties,
                                  mandatory=message.mandatory)

    def _on_return(self, _channel: Any, method: Any, properties: Any, _body: bytes) -> None:
        batch = self._unconfirmed.get(int(properties.message_id or 0))
        if batch is not None:
            self._settle(batch, f"RabbitMQ has no queue '{method.routing_key}' ({method.reply_text})", retryable=False)

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        if method.multiple:
            tags = list(itertools.takewhile(lambda t: t <= method.delivery_tag, self._unconfirmed))
        else:
            tags = [method.delivery_tag]
        acked = isinstance(method, pika.spec.Basic.Ack)
        for tag in tags:
            batch = self._unconfirmed.pop(tag, None)
            if batch is None:
                continue
            if not acked:
                self._settle(batch, "RabbitMQ refused the message (queue full or broker out of resources)",
                             retryable=False)
                continue
            batch.remaining -= 1
            if batch.remaining == 0:
                self._settle(batch)

    def _settle(self, batch: _Batch, error: str | None = None, *, retryable: bool = True) -> None:
        with self._lock:
            self._inflight.discard(batch)
        if batch.done.is_set():
            return
        batch.error = error
        batch.retryable = retryable
        batch.done.set()

    def close(self) -> None:
        """Close after what was handed over has been written (pika writes in order, then closes)."""
        self._closing.set()
        with self._lock:
            connection, thread = self._connection, self._thread
        if connection is not None:
            try:
                connection.ioloop.add_callback_threadsafe(lambda: _close_quietly(connection))
            except Exception:
                log.debug("publisher connection already closed")
        if thread is not None:
            thread.join(timeout=10)


def _close_quietly(connection: Any) -> None:
    if not (connection.is_closed or connection.is_closing):
        connection.close()


def _describe(reason: Any) -> str:
    if not isinstance(reason, BaseException):
        return str(reason)
    text = str(reason).strip()
    return f"{type(reason).__name__}: {text}" if text else type(reason).__name__


class RabbitBroker:
    """The scale-out broker; see the module docstring for names, confirms and acknowledgements."""

    def __init__(self, url: str, prefix: str | None = None) -> None:
        self.url = url
        self.prefix = prefix or queue_prefix()
        self._params = pika.URLParameters(url)
        self._publisher = _Publisher(self._params)
        self._declared = False
        self._lock = threading.Lock()
        self._subscriptions: list[tuple[threading.Event, threading.Thread]] = []
        self.published = 0

    def queue(self, stage: str) -> str:
        return f"{self.prefix}.{stage}"

    def retry_queue(self, stage: str, attempt: int) -> str:
        return f"{self.prefix}.{stage}.retry.{attempt}"

    @property
    def dead_queue(self) -> str:
        return f"{self.prefix}.dead"

    @property
    def status_exchange(self) -> str:
        return f"{self.prefix}.status"

    @contextmanager
    def _channel(self) -> Iterator[BlockingChannel]:
        """A short-lived connection for administrative calls."""
        try:
            connection = pika.BlockingConnection(self._params)
        except pika.exceptions.AMQPConnectionError as exc:
            raise ConnectionError(f"cannot reach RabbitMQ at {safe_url(self.url)} ({_describe(exc)}); "
                                  "check GHETL_BROKER_URL and that the server is running") from None
        try:
            yield connection.channel()
        finally:
            if connection.is_open:
                connection.close()

    def declare(self) -> None:
        """Create the work queues, the dead-letter queue and the status exchange (idempotent)."""
        with self._channel() as channel:
            self._declare_on(channel)
        self._declared = True

    def _declare_on(self, channel: BlockingChannel) -> None:
        channel.exchange_declare(self.status_exchange, "fanout", durable=True)
        channel.queue_declare(self.dead_queue, durable=True)
        for stage in broker_mod.STAGE_QUEUES:
            channel.queue_declare(self.queue(stage), durable=True)

    def _ensure_declared(self) -> None:
        with self._lock:
            if not self._declared:
                self.declare()

    def publish(self, stage: str, messages: list[dict[str, Any]]) -> None:
        if stage not in broker_mod.STAGE_QUEUES:
            raise ValueError(f"unknown stage '{stage}'; stages are {', '.join(broker_mod.STAGE_QUEUES)}")
        self._ensure_declared()
        self._publisher.publish(
            [Outgoing("", self.queue(stage), broker_mod.encode(m), {ATTEMPT: 1}) for m in messages]
        )
        with self._lock:
            self.published += len(messages)

    def publish_raw(self, stage: str, body: bytes) -> None:
        """Put bytes on a stage queue as they are (how tests and operators inject a bad message)."""
        self._ensure_declared()
        self._publisher.publish([Outgoing("", self.queue(stage), body, {ATTEMPT: 1})])

    def _queue_state(self, name: str) -> tuple[int, int]:
        try:
            with self._channel() as channel:
                ok = channel.queue_declare(name, passive=True).method
        except CONNECTION_ERRORS as exc:
            raise ConnectionError(f"cannot read queue {name} at {safe_url(self.url)}: {_describe(exc)}") from None
        return ok.message_count, ok.consumer_count

    def pending(self, stage: str) -> int:
        """Messages waiting in a stage's work queue (not counting those being processed)."""
        return self._queue_state(self.queue(stage))[0]

    def consumer_count(self, stage: str) -> int:
        """How many consumers are attached to a stage's queue; 0 means nobody will process it."""
        return self._queue_state(self.queue(stage))[1]

    @property
    def dead_letters(self) -> list[DeadLetter]:
        """The dead-letter queue's messages, read without removing them."""
        letters = []
        with self._channel() as channel:
            while True:
                method, properties, body = channel.basic_get(self.dead_queue, auto_ack=False)
                if method is None or properties is None or body is None:
                    break
                headers: Mapping[str, Any] = properties.headers or {}
                letters.append(DeadLetter(str(headers.get(STAGE, "")), body, str(headers.get(REASON, "")),
                                          int(headers.get(ATTEMPTS, 0)), headers.get(LETTER)))
        return letters

    def forget_dead_letters(self, letters: set[int]) -> None:
        """Ack the dead-letter queue's copies of these letters; the others go back when the
        channel closes unacked, in their order."""
        if not letters:
            return
        with self._channel() as channel:
            while True:
                method, properties, _body = channel.basic_get(self.dead_queue, auto_ack=False)
                if method is None or properties is None:
                    break
                headers: Mapping[str, Any] = properties.headers or {}
                if headers.get(LETTER) in letters:
                    assert method.delivery_tag is not None  # pika sets it on every message it hands over
                    channel.basic_ack(method.delivery_tag)

    def consume(self, stages: list[str], deliver: Deliver, *, concurrency: int, stop: threading.Event) -> None:
        """Run `concurrency` consumer threads per stage, each on its own connection, until `stop` is set."""
        self._ensure_declared()
        prefetch()  # checked in the caller's thread: a bad value is one error, not consumer threads that die
        broker_mod.run_consumers(self._consume_loop, stages, deliver, concurrency=concurrency, stop=stop)

    def _consume_loop(self, stage: str, deliver: Deliver, stop: threading.Event) -> None:
        backoff = Backoff()
        while not stop.is_set():
            try:
                self._consume_once(stage, deliver, stop, backoff)
            except CONNECTION_ERRORS as exc:
                delay = backoff.next()
                log.warning("%s consumer lost RabbitMQ (%s); reconnecting in %.1f s", stage, _describe(exc), delay)
                stop.wait(delay)

    def _consume_once(self, stage: str, deliver: Deliver, stop: threading.Event, backoff: Backoff) -> None:
        connection = pika.BlockingConnection(self._params)
        try:
            channel = connection.channel()
            self._declare_on(channel)
            channel.basic_qos(prefetch_count=prefetch())
            if backoff.failures:
                log.info("%s consumer reconnected to RabbitMQ", stage)
            backoff.reset()
            for method, properties, body in channel.consume(self.queue(stage), inactivity_timeout=0.25):
                if stop.is_set():
                    break
                if method is not None and body is not None:
                    self._handle(channel, stage, deliver, method, properties, body, stop)
            channel.cancel()
        finally:
            if connection.is_open:
                connection.close()

    def _handle(self, channel: BlockingChannel, stage: str, deliver: Deliver, method: Any, properties: Any, body: bytes,
                stop: threading.Event) -> None:
        attempt = _attempt(properties)
        if method.redelivered:
            counted = self._count_lost_attempt(channel, stage, method, body, attempt)
            if counted is None:
                return
            attempt = counted
        try:
            outcome = _keeping_connection_alive(channel.connection, deliver, stage, body, attempt)
        except Exception as exc:  # a bug in a handler must not kill the consumer nor loop forever
            log.exception("a %s message broke the worker", stage)
            reason = redact(f"{type(exc).__name__}: {exc}")
            outcome = Outcome("dead" if attempt >= broker_mod.max_attempts() else "retry", reason)
        try:
            if outcome.action == "retry":
                self._retry(channel, stage, [body], attempt)
            elif outcome.action == "dead":
                self._dead_letter(stage, body, outcome.reason, attempt, outcome.letter)
            elif outcome.action == "requeue":
                _pause(channel.connection, outcome.delay, stop)
                self._publisher.publish([Outgoing("", self.queue(stage), body, {ATTEMPT: attempt})])
        except PublishRejected as exc:
            log.error("could not move a %s message to its %s queue (%s); it goes back to its queue",
                      stage, outcome.action, exc)
            channel.basic_nack(method.delivery_tag, requeue=True)
            return
        channel.basic_ack(method.delivery_tag)

    def _count_lost_attempt(
        self, channel: BlockingChannel, stage: str, method: Any, body: bytes, attempt: int
    ) -> int | None:
        """A redelivered message was taken before and never settled: its worker died or lost
        RabbitMQ while handling it. That counts as a failed attempt, so a message that kills every
        worker that takes it ends in the dead-letter queue instead of circling forever.

        Returns the attempt to hand to `deliver` (one beyond the last means: record and give up),
        or None when the message was parked for a later attempt.
        """
        log.warning("a %s message came back unsettled (its worker stopped while handling it): attempt %d counted "
                    "as failed; its items are retried one by one", stage, attempt)
        if attempt >= broker_mod.max_attempts():
            return attempt + 1
        try:
            self._retry(channel, stage, broker_mod.split_items(body), attempt)
        except PublishRejected as exc:
            log.error("could not park a redelivered %s message (%s); handling it now", stage, exc)
            return attempt
        channel.basic_ack(method.delivery_tag)
        return None

    def _retry(self, channel: BlockingChannel, stage: str, bodies: list[bytes], attempt: int) -> None:
        """Park messages in the delay queue of their attempt; RabbitMQ moves them back when their TTL ends."""
        name = self.retry_queue(stage, attempt)
        channel.queue_declare(name, durable=True, arguments={
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": self.queue(stage),
            "x-expires": RETRY_QUEUE_EXPIRES_MS,
        })
        delay_ms = str(int(broker_mod.retry_delay(attempt) * 1000))
        self._publisher.publish(
            [Outgoing("", name, body, {ATTEMPT: attempt + 1}, expiration=delay_ms) for body in bodies]
        )

    def _dead_letter(self, stage: str, body: bytes, reason: str, attempt: int, letter: int | None) -> None:
        headers = {REASON: reason[:1000], STAGE: stage, ATTEMPTS: attempt, LETTER: letter}
        self._publisher.publish([Outgoing("", self.dead_queue, body, headers)])

    def publish_status(self, events: list[Event]) -> None:
        """Announce events on the fanout exchange; without a connection they are dropped (the database
        stays the truth)."""
        if not events:
            return
        self._ensure_declared()
        outgoing = [Outgoing(self.status_exchange, "", broker_mod.encode(e), {}, persistent=False, mandatory=False)
                    for e in events]
        if not self._publisher.send(outgoing):
            log.debug("no RabbitMQ connection: %d status events not announced", len(events))

    def subscribe_status(
        self, callback: Callable[[Event], None], *, on_bound: Callable[[], None] | None = None
    ) -> Callable[[], None]:
        """Deliver every status event to `callback` from a background thread, until unsubscribed.

        Returns once the subscription's queue is bound (or after 10 s of trying), so events
        published after this call are not missed. The queue is exclusive to its connection: when
        the connection drops, events published until it is bound again are lost, so `on_bound`
        is called after every binding for the subscriber to resynchronise.
        """
        self._ensure_declared()
        stop = threading.Event()
        bound = threading.Event()
        thread = threading.Thread(target=self._subscribe_loop, args=(callback, on_bound, stop, bound),
                                  name="ghetl-status", daemon=True)
        thread.start()
        if not bound.wait(10):
            log.warning("could not subscribe to status events at %s yet; progress will show once it can",
                        safe_url(self.url))
        self._subscriptions.append((stop, thread))

        def unsubscribe() -> None:
            stop.set()
            thread.join(timeout=5)

        return unsubscribe

    def _subscribe_loop(self, callback: Callable[[Event], None], on_bound: Callable[[], None] | None,
                        stop: threading.Event, bound: threading.Event) -> None:
        backoff = Backoff()
        while not stop.is_set():
            try:
                with self._channel() as channel:
                    name = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
                    channel.queue_bind(name, self.status_exchange)
                    bound.set()
                    backoff.reset()
                    if on_bound is not None:
                        on_bound()
                    for method, _properties, body in channel.consume(name, auto_ack=True, inactivity_timeout=0.1):
                        if stop.is_set():
                            break
                        if method is not None and body is not None:
                            _call(callback, body)
            except CONNECTION_ERRORS as exc:
                delay = backoff.next()
                log.warning("status subscription lost RabbitMQ (%s); reconnecting in %.1f s", _describe(exc), delay)
                stop.wait(delay)

    def close(self) -> None:
        for stop, thread in self._subscriptions:
            stop.set()
            thread.join(timeout=5)
        self._subscriptions.clear()
        self._publisher.close()


def _keeping_connection_alive(connection: pika.BlockingConnection, deliver: Deliver, stage: str, body: bytes,
                              attempt: int) -> Outcome:
    """Run `deliver` in a helper thread while this one answers RabbitMQ's heartbeats.

    pika sends heartbeats only while its connection is being serviced; a delivery that takes
    minutes (a model switch re-embedding a whole tenant) would otherwise get the connection
    closed under it and come back as if its worker had died.
    """
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["outcome"] = deliver(stage, body, attempt)
        except BaseException as exc:
            result["error"] = exc

    worker = threading.Thread(target=run, name=f"ghetl-{stage}-delivery", daemon=True)
    worker.start()
    while True:
        worker.join(0.5)
        if not worker.is_alive():
            break
        connection.process_data_events(time_limit=0)
    if "error" in result:
        raise result["error"]
    outcome: Outcome = result["outcome"]
    return outcome


def _pause(connection: pika.BlockingConnection, seconds: float, stop: threading.Event) -> None:
    """Wait while answering RabbitMQ's heartbeats; end early when the consumer is asked to stop."""
    deadline = time.monotonic() + seconds
    while not stop.is_set() and (left := deadline - time.monotonic()) > 0:
        connection.sleep(min(0.25, left))


def _attempt(properties: Any) -> int:
    try:
        return max(1, int((properties.headers or {}).get(ATTEMPT, 1)))
    except (TypeError, ValueError):
        return 1


def _call(callback: Callable[[Event], None], body: bytes) -> None:
    try:
        callback(orjson.loads(body))
    except Exception:
        log.exception("a status subscriber failed on an event; it stays subscribed")
