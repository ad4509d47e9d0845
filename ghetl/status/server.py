"""The live status stream: a WebSocket server that relays a tenant's status events to its clients.

Protocol
--------
Connect to ``ws://HOST:PORT/?tenant=NAME_OR_ID[&job=JOB_ID]`` and present the tenant's
status-stream key (``ghetl tenant add`` prints it, ``ghetl tenant key NAME`` issues a new one)
as the header ``Authorization: Bearer KEY``. Browsers cannot set that header; they offer the
subprotocols ``ghetl.status`` and ``ghetl.key.KEY`` instead (``new WebSocket(url, ["ghetl.status",
"ghetl.key." + key])``), and the server answers with ``ghetl.status`` alone, so the key is never
echoed back. The query parameter ``key=KEY`` works too, but lands in proxies' access logs.
A refused connection is closed right after the handshake with
one of these codes and a reason saying what to fix:

=====  ==============================================================
4400   the URL lacks ``tenant`` or ``job`` is not a number
4401   no key was presented
4403   the key is wrong for that tenant, or there is no such tenant
4404   the tenant has no job with that id
=====  ==============================================================

Keys are checked again every ``check_interval``: a connection whose key was replaced since
(``ghetl tenant key``) is closed with 4403 "key revoked".

The server then sends JSON text messages, each with a ``type``:

``snapshot``
    First, and again whenever the client must resynchronise. ``{"type": "snapshot",
    "reason": "connect"|"overflow"|"requested"|"reconnect" (the server's broker subscription was
    lost and events may have been missed), "tenant_id", "tenant", "job_id" (the filter or
    null), "jobs": [{"job_id", "integration_id", "job_name", "run_id", "overall", "status" (the
    status JSON of etl_jobs), "progress": {step: {stage: {"processed", "total", "failed"}}},
    "last_sync_date", "last_run_started_at", "last_run_finished_at", "error_message"}],
    "timestamp"}``. A snapshot replaces everything a client knew.
``stage``
    A circle changed, or a stage made progress: ``{"type": "stage", "tenant_id", "job_id",
    "run_id", "step", "stage" (extraction|transform|embedding), "status"
    (idle|running|finished|failed), "processed", "total", "failed", "timestamp"}``.
``job``
    The job's overall state changed: ``{"type": "job", "tenant_id", "job_id", "run_id",
    "overall" (RUNNING|FINISHED|FAILED), "error" (a message, never a token), "timestamp"}``.
    A ``RUNNING`` job event with a new ``run_id`` starts a run: every circle of that job is
    idle again.

A client may send ``{"type": "snapshot"}`` to ask for a fresh snapshot; anything else it sends
is ignored. Within a run the server never sends an event that moves a circle backwards (a
late ``running`` after ``finished``), so a client can apply events as they come.

Why it is built this way
------------------------
The broker calls the subscriber from worker threads (or its RabbitMQ consumer thread); that
callback only hands the event to the server's event loop and returns, so no client can ever
slow a worker. Each client has a bounded queue: a client too slow to keep up loses its backlog
and receives a fresh snapshot instead, which is all it needs to be right again. Keepalive
pings close connections whose peer stopped answering.

Where events come from: `Broker.subscribe_status`. On RabbitMQ that is a fanout exchange every
worker publishes to, so workers on any host are seen. On ``memory://`` the bus lives inside one
process, so a server in a notebook kernel sees the syncs run in that kernel and nothing else;
``ghetl status-server`` on ``memory://`` therefore also polls the database (``poll_interval``)
and turns changes of the jobs' status JSON into the same events, so a ``ghetl sync`` in another
terminal is followed too, at the poll's pace.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import functools
import hmac
import json
import logging
import signal
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import sqlalchemy as sa
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request
from websockets.typing import Subprotocol

from .. import tenants
from ..config import env_float
from ..logs import redact
from ..pipeline import jobs
from ..queue.broker import Broker
from ..store.db import tenants as tenants_table
from ..store.db import utcnow
from .events import PROTOCOL_LOG, STAGES, Event, job_event, stage_event

log = logging.getLogger(__name__)
SUBPROTOCOL = Subprotocol("ghetl.status")
KEY_SUBPROTOCOL = "ghetl.key."
REVOKED = "key revoked: a new key was issued (ghetl tenant key NAME); reconnect with it"

DEFAULT_PORT = 8765
HANDSHAKE_THREADS = 4
QUEUE_SIZE = 1000
CHECK_INTERVAL = 10.0
CIRCLE_RANK = {"idle": 0, "running": 1, "finished": 2, "failed": 2}
OVERALL_RANK = {"READY": 0, "RUNNING": 1, "FINISHED": 2, "FAILED": 2}


@dataclass(frozen=True)
class Resync:
    """Queued in place of a client's backlog: send a fresh snapshot, for this reason."""

    reason: str




class Refused(Exception):
    """A connection that will be closed after the handshake with this code and reason."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason.encode()[:123].decode(errors="ignore")


def _json_default(value: Any) -> str:
    return value.isoformat() if isinstance(value, (dt.datetime, dt.date)) else str(value)


def encode(message: dict[str, Any]) -> str:
    return json.dumps(message, default=_json_default, separators=(",", ":"))


class Outbound(dict[str, Any]):
    """An event as the server relays it: encoded once, however many of its tenant's clients send it."""

    @functools.cached_property
    def text(self) -> str:
        return encode(self)


def snapshot(engine: sa.Engine, tenant: dict[str, Any], job_id: int | None, reason: str) -> dict[str, Any]:
    """Everything a client needs to draw its tenant's jobs right now, read from `etl_jobs`."""
    with engine.connect() as conn:
        rows = [j for j in jobs.list_jobs(conn, tenant["id"]) if job_id is None or j["id"] == job_id]
        listed = [
            {
                "job_id": j["id"], "integration_id": j["integration_id"], "job_name": j["job_name"],
                "run_id": j["run_id"], "overall": j["status"]["overall"], "status": j["status"],
                "progress": jobs.job_progress(conn, j), "last_sync_date": j["last_sync_date"],
                "last_run_started_at": j["last_run_started_at"], "last_run_finished_at": j["last_run_finished_at"],
                "error_message": redact(j["error_message"]) if j["error_message"] else None,
            }
            for j in rows
        ]
    return {"type": "snapshot", "reason": reason, "tenant_id": tenant["id"], "tenant": tenant["name"],
            "job_id": job_id, "jobs": listed, "timestamp": utcnow()}


@dataclass
class _JobLine:
    run_id: str | None
    overall: str
    circles: dict[tuple[str, str], str] = field(default_factory=dict)
    past_runs: set[str] = field(default_factory=set)


_EVENT_FIELDS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "job": {"tenant_id": int, "job_id": int, "run_id": str, "overall": str},
    "stage": {"tenant_id": int, "job_id": int, "run_id": str, "step": str, "stage": str, "status": str},
}


def malformed(event: Event) -> str | None:
    """What is wrong with a stage or job event (a missing field, a wrong type, an unknown state),
    or None: one bad event on the bus must not reach, let alone stop, any client's stream."""
    for name, kind in _EVENT_FIELDS[event["type"]].items():
        value = event.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            wanted = kind.__name__ if isinstance(kind, type) else kind
            return f"field '{name}' must be {wanted}, got {type(value).__name__}"
    if event["type"] == "job" and event["overall"] not in OVERALL_RANK:
        return f"unknown overall state '{event['overall'][:40]}'"
    if event["type"] == "stage" and (event["stage"] not in STAGES or event["status"] not in CIRCLE_RANK):
        return f"unknown stage '{event['stage'][:40]}' or circle '{event['status'][:40]}'"
    return None


@dataclass(frozen=True)
class Limits:
    """What one status server accepts, so that no client or tenant can take it from the others.

    Past a limit the client is refused with a close code and a reason: 1013 (try again later)
    for connections, 4429 for rates. Each has an environment variable.
    """

    connections: int = 2000          # GHETL_STATUS_MAX_CONNECTIONS
    per_tenant: int = 200            # GHETL_STATUS_MAX_PER_TENANT
    handshakes_per_second: int = 50  # GHETL_STATUS_HANDSHAKES_PER_SECOND, per client address
    snapshots_per_minute: int = 30   # GHETL_STATUS_SNAPSHOTS_PER_MINUTE, per connection
    message_bytes: int = 64 * 1024   # GHETL_STATUS_MAX_MESSAGE_BYTES, from a client (closed 1009 past it)
    progress_interval: float = 0.25  # GHETL_STATUS_PROGRESS_INTERVAL, seconds between progress events
    #                                  per job, step and stage for one client; 0 sends every one

    @classmethod
    def from_env(cls) -> Limits:
        def number(name: str, default: int) -> int:
            return int(env_float(name, default, minimum=1))

        return cls(number("GHETL_STATUS_MAX_CONNECTIONS", cls.connections),
                   number("GHETL_STATUS_MAX_PER_TENANT", cls.per_tenant),
                   number("GHETL_STATUS_HANDSHAKES_PER_SECOND", cls.handshakes_per_second),
                   number("GHETL_STATUS_SNAPSHOTS_PER_MINUTE", cls.snapshots_per_minute),
                   number("GHETL_STATUS_MAX_MESSAGE_BYTES", cls.message_bytes),
                   env_float("GHETL_STATUS_PROGRESS_INTERVAL", cls.progress_interval, minimum=0))


class Window:
    """At most `limit` events per key in any `seconds` (a sliding window of their times)."""

    def __init__(self, limit: int, seconds: float) -> None:
        self.limit, self.seconds = limit, seconds
        self._times: dict[Any, deque[float]] = {}

    def allow(self, key: Any) -> bool:
        now = time.monotonic()
        times = self._times.setdefault(key, deque())
        while times and now - times[0] >= self.seconds:
            times.popleft()
        if len(self._times) > 10_000:  # forget idle keys, so that many addresses cannot grow it for ever
            self._times = {k: t for k, t in self._times.items() if t and now - t[-1] < self.seconds}
            times = self._times.setdefault(key, times)
        if len(times) >= self.limit:
            return False
        times.append(now)
        return True


class CircleGuard:
    """Drops events that would move a circle or the overall state backwards within a run.

    Events reach the server from many threads and processes, and a client's first events may
    predate its snapshot; without this a late `running` could repaint a finished circle blue.
    """

    def __init__(self) -> None:
        self._jobs: dict[int, _JobLine] = {}

    def reset(self, snap: dict[str, Any]) -> None:
        self._jobs = {
            j["job_id"]: _JobLine(
                j["run_id"], j["overall"],
                {(step, stage): info[stage] for step, info in j["status"]["steps"].items() for stage in STAGES},
            )
            for j in snap["jobs"]
        }

    def accept(self, event: Event) -> bool:
        line = self._jobs.setdefault(event["job_id"], _JobLine(None, "READY"))
        if event["run_id"] != line.run_id:
            if event["run_id"] in line.past_runs:
                return False
            if line.run_id:
                line.past_runs.add(line.run_id)
            line.run_id, line.overall, line.circles = event["run_id"], "RUNNING", {}
        if event["type"] == "job":
            if OVERALL_RANK.get(event["overall"], 0) < OVERALL_RANK[line.overall]:
                return False
            line.overall = event["overall"]
            return True
        key = (event["step"], event["stage"])
        if CIRCLE_RANK.get(event["status"], 0) < CIRCLE_RANK[line.circles.get(key, "idle")]:
            return False
        line.circles[key] = event["status"]
        return True


class Subscription:
    """One client's view: which events it wants and its bounded backlog.

    `offer` runs on the server's loop and never waits: when the backlog is full it is dropped
    and replaced by one resynchronisation marker, so a stalled client costs a bounded amount of
    memory and no time.

    Progress (a `running` stage event whose circle does not change) is coalesced per job, step
    and stage: at most one every `progress_interval` seconds goes out, the newest one held back
    is sent when the interval ends, and one carrying fewer items than one already queued is
    dropped. A 100 000-item run would otherwise queue 100 000 events per client. Anything else
    (a circle or job that changes state, the final counts) is queued at once and discards the
    progress held back for it, so the final state always arrives and nothing older follows it.
    """

    def __init__(self, tenant_id: int, job_id: int | None, size: int, key_hash: str,
                 progress_interval: float = 0.0) -> None:
        self.tenant_id = tenant_id
        self.job_id = job_id
        self.key_hash = key_hash
        self.queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=size)
        self.progress_interval = progress_interval
        self.delivered = 0
        self.dropped = 0
        self.resyncs = 0
        self.coalesced = 0
        self._held: dict[tuple[int, str, str], Event] = {}
        self._last: dict[tuple[int, str, str], tuple[str, str, int, float]] = {}
        self._timers: dict[tuple[int, str, str], asyncio.TimerHandle] = {}

    def wants(self, event: Event) -> bool:
        return event.get("tenant_id") == self.tenant_id and (self.job_id is None or event.get("job_id") == self.job_id)

    def offer(self, event: Event) -> None:
        if not self.wants(event):
            return
        if event["type"] == "job":
            for key in [k for k in self._held if k[0] == event["job_id"]]:
                self._release(key)  # the job's last counts go before its end
        elif self.progress_interval > 0:
            key = (event["job_id"], event["step"], event["stage"])
            if event["status"] == "running":
                self._progress(key, event)
                return
            self._drop_held(key)
        self._put(event)

    def _progress(self, key: tuple[int, str, str], event: Event) -> None:
        last = self._last.get(key)
        stale = last is not None and last[0] == event["run_id"] and (last[1] != "running" or _done(event) < last[2])
        if stale:
            self.coalesced += 1  # older than what the client already has
            return
        held = self._held.get(key)
        if held is not None:
            if held["run_id"] == event["run_id"] and _done(event) < _done(held):
                self.coalesced += 1
                return
            self.coalesced += 1
            self._held[key] = event  # the timer already set sends the newest
            return
        now = time.monotonic()
        wait = 0.0 if last is None else last[3] + self.progress_interval - now
        if wait <= 0:
            self._put(event)
            return
        self._held[key] = event
        self._timers[key] = asyncio.get_running_loop().call_later(wait, self._release, key)

    def _release(self, key: tuple[int, str, str]) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        event = self._held.pop(key, None)
        if event is not None:
            self._put(event)

    def _drop_held(self, key: tuple[int, str, str]) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        if self._held.pop(key, None) is not None:
            self.coalesced += 1

    def _put(self, event: Event) -> None:
        if event["type"] == "stage":
            key = (event["job_id"], event["step"], event["stage"])
            self._last[key] = (event["run_id"], event["status"], _done(event), time.monotonic())
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.resync("overflow")

    def close(self) -> None:
        """Cancel the timers of held progress: the client is gone."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._held.clear()

    def resync(self, reason: str) -> None:
        """Replace whatever is queued by one marker that makes the sender send a fresh snapshot."""
        while not self.queue.empty():
            if not isinstance(self.queue.get_nowait(), Resync):
                self.dropped += 1
        self.resyncs += 1
        self.queue.put_nowait(Resync(reason))


def _done(event: Event) -> int:
    """How many items a stage event counts as handled, for ordering progress of one run."""
    return (event.get("processed") or 0) + (event.get("failed") or 0)


def _parse_request(request: Request) -> tuple[str, int | None, str | None]:
    """The tenant, optional job id and key a client asked with, or Refused saying what is missing."""
    query = {k: v[-1] for k, v in parse_qs(urlsplit(request.path).query).items()}
    tenant = query.get("tenant", "").strip()
    if not tenant:
        raise Refused(4400, "missing tenant: connect to ws://HOST:PORT/?tenant=NAME_OR_ID")
    job = query.get("job")
    if job is not None and not tenants.is_id(job):
        raise Refused(4400, f"job must be a job id (a number), got '{job[:40]}'")
    auth = request.headers.get("Authorization", "")
    offered = [p.strip() for h in request.headers.get_all("Sec-WebSocket-Protocol") for p in h.split(",")]
    in_protocol = next((p[len(KEY_SUBPROTOCOL):] for p in offered if p.startswith(KEY_SUBPROTOCOL)), None)
    key = auth[7:].strip() if auth.lower().startswith("bearer ") else in_protocol or query.get("key")
    return tenant, int(job) if job is not None else None, key or None


def _select_subprotocol(connection: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol | None:
    """`ghetl.status` when the client offers it (a browser passing its key as a subprotocol),
    else none: a client that sends its key in a header or the query offers no subprotocol."""
    return SUBPROTOCOL if SUBPROTOCOL in offered else None


class StatusServer:
    """The WebSocket status stream, in a background thread (`start`/`stop`) or the foreground (`run`).

    `port=0` picks a free port; `.url` is the address clients connect to once started.
    """

    def __init__(
        self,
        engine: sa.Engine,
        broker: Broker,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        *,
        queue_size: int = QUEUE_SIZE,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        poll_interval: float | None = None,
        check_interval: float = CHECK_INTERVAL,
        limits: Limits | None = None,
    ) -> None:
        self.engine = engine
        self.limits = limits or Limits.from_env()
        self._handshake_rate = Window(self.limits.handshakes_per_second, 1.0)
        self.broker = broker
        self.host = host
        self.port = port
        self.queue_size = queue_size
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.poll_interval = poll_interval
        self.check_interval = check_interval
        self._clients: dict[Subscription, ServerConnection] = {}
        # The same subscriptions by tenant: an event is offered to its tenant's clients only.
        self._by_tenant: dict[int, set[Subscription]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._listening = threading.Event()
        self._failure: BaseException | None = None
        # Handshakes check the key in the database on threads of their own (made per serve): a
        # flood of them queues there, while the stale-run and revocation checks keep the default pool.
        self._handshakes: ThreadPoolExecutor | None = None

    @property
    def url(self) -> str:
        if not self._listening.is_set():
            raise RuntimeError("the status server is not listening yet; call start() first")
        return f"ws://{self.host}:{self.port}"

    def subscriptions(self) -> list[Subscription]:
        """The connected clients' subscriptions (for tests and operators: queue depth, drops)."""
        return list(self._clients)

    def start(self, timeout: float = 10.0) -> StatusServer:
        """Serve in a daemon thread; return once the socket listens, or raise why it cannot."""
        self._thread = threading.Thread(target=self._serve_in_thread, name="ghetl-status-server", daemon=True)
        self._thread.start()
        if not self._listening.wait(timeout):
            raise TimeoutError(f"the status server did not start listening within {timeout:.0f} s")
        if self._failure is not None:
            raise self._failure
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Close every connection (code 1001), stop listening, and wait for the thread to end."""
        if self._loop is not None and self._stopping is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def run(self) -> None:
        """Serve in the foreground until SIGINT or SIGTERM (the CLI)."""
        asyncio.run(self._serve(handle_signals=True))

    def _serve_in_thread(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # handed to start(), which raises it in the caller's thread
            self._failure = exc
        finally:
            self._listening.set()

    def __enter__(self) -> StatusServer:
        return self.start()

    def __exit__(self, *_exc: Any) -> None:
        self.stop()

    async def _serve(self, handle_signals: bool = False) -> None:
        self._loop = asyncio.get_running_loop()
        self._handshakes = ThreadPoolExecutor(max_workers=HANDSHAKE_THREADS, thread_name_prefix="ghetl-handshake")
        self._stopping = asyncio.Event()
        if handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._loop.add_signal_handler(sig, self._stopping.set)
        try:
            server = await serve(
                self._handle, self.host, self.port,
                ping_interval=self.ping_interval, ping_timeout=self.ping_timeout, max_size=self.limits.message_bytes,
                logger=PROTOCOL_LOG, select_subprotocol=_select_subprotocol,
            )
        except OSError as exc:
            fix = "choose another --port" if exc.errno == errno.EADDRINUSE else "check --host"
            raise OSError(f"cannot listen on {self.host}:{self.port} ({exc.strerror or exc}); {fix}") from None
        unsubscribe = self.broker.subscribe_status(self._from_broker, on_bound=self._resubscribed)
        poller = asyncio.create_task(self._poll()) if self.poll_interval else None
        checker = asyncio.create_task(self._check())
        self.port = server.sockets[0].getsockname()[1]
        self._listening.set()
        log.info("status stream listening on %s", self.url)
        try:
            await self._stopping.wait()
        finally:
            unsubscribe()
            if poller is not None:
                poller.cancel()
            checker.cancel()
            server.close()
            await server.wait_closed()
            self._handshakes.shutdown(wait=False, cancel_futures=True)
            self._handshakes = None
            log.info("status stream stopped")

    def _from_broker(self, event: Event) -> None:
        """Called on a worker's or the broker's thread: hand over and return at once."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._dispatch, event)

    def _resubscribed(self) -> None:
        """Called on the broker's thread each time its subscription is bound: after a loss, what
        was published meanwhile never reached us, so every client starts again from a snapshot."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._resync_all, "reconnect")

    def _resync_all(self, reason: str) -> None:
        for subscription in self._clients:
            subscription.resync(reason)

    def _dispatch(self, event: Event) -> None:
        if not isinstance(event, dict) or event.get("type") not in ("stage", "job") or "run_id" not in event:
            log.debug("ignored a status event that is not a stage or job event: %.200r", event)
            return
        problem = malformed(event)
        if problem:
            log.warning("dropped a malformed status event (%s): %.200r", problem, event)
            return
        outbound = Outbound(event)
        if outbound.get("error"):
            outbound["error"] = redact(str(outbound["error"]))
        for subscription in self._by_tenant.get(outbound["tenant_id"], ()):
            subscription.offer(outbound)

    async def _handle(self, ws: ServerConnection) -> None:
        try:
            self._admit_address(ws)
            request = ws.request
            assert request is not None  # websockets calls the handler after the opening handshake
            loop = asyncio.get_running_loop()
            tenant, job_id, key = await loop.run_in_executor(self._handshakes, self._authorise, request)
            self._admit_tenant(tenant)
        except Refused as refused:
            log.info("refused a status client: %s", refused.reason)
            await ws.close(refused.code, refused.reason)
            return
        subscription = Subscription(tenant["id"], job_id, self.queue_size, tenants.hash_key(key),
                                    self.limits.progress_interval)
        self._clients[subscription] = ws
        self._by_tenant.setdefault(subscription.tenant_id, set()).add(subscription)
        sender = asyncio.create_task(self._send(ws, subscription, tenant))
        log.debug("status client connected for tenant %s (%d connected)", tenant["name"], len(self._clients))
        snapshots = Window(self.limits.snapshots_per_minute, 60.0)
        try:
            async for message in ws:
                if not _asks_snapshot(message):
                    continue
                if not snapshots.allow(None):
                    log.info("closed a status client of tenant %s: more than %d snapshot requests a minute",
                             tenant["name"], self.limits.snapshots_per_minute)
                    await ws.close(4429, f"more than {self.limits.snapshots_per_minute} snapshot requests a minute")
                    break
                subscription.resync("requested")
        except ConnectionClosed:
            pass
        finally:
            self._clients.pop(subscription, None)
            theirs = self._by_tenant.get(subscription.tenant_id, set())
            theirs.discard(subscription)
            if not theirs:
                self._by_tenant.pop(subscription.tenant_id, None)
            subscription.close()
            sender.cancel()
            log.debug("status client of tenant %s left", tenant["name"])

    def _admit_address(self, ws: ServerConnection) -> None:
        """Refuse an address that opens connections faster than the limit allows."""
        address = ws.remote_address[0] if ws.remote_address else "?"
        if not self._handshake_rate.allow(address):
            raise Refused(4429, f"more than {self.limits.handshakes_per_second} connections a second from this "
                                "address; wait a moment")

    def _admit_tenant(self, tenant: dict[str, Any]) -> None:
        """Refuse a connection beyond the server's or the tenant's share, before it is subscribed."""
        if len(self._clients) >= self.limits.connections:
            raise Refused(1013, f"the status server holds its {self.limits.connections} connections; try again later")
        theirs = len(self._by_tenant.get(tenant["id"], ()))
        if theirs >= self.limits.per_tenant:
            raise Refused(1013, f"tenant '{tenant['name'][:40]}' has {theirs} status connections, the most allowed; "
                                "close one first")

    def _authorise(self, request: Request) -> tuple[dict[str, Any], int | None, str]:
        name, job_id, key = _parse_request(request)
        if key is None:
            raise Refused(4401, "missing key: send 'Authorization: Bearer KEY', the subprotocol ghetl.key.KEY "
                                "or ?key=KEY (ghetl tenant key NAME)")
        with self.engine.connect() as conn:
            try:
                tenant = tenants.get_tenant(conn, name)
            except tenants.NotFound:
                tenant = None
            if tenant is None or not tenants.check_key(conn, tenant["id"], key):
                raise Refused(4403, f"wrong key for tenant '{name[:40]}' or no such tenant; "
                                    "issue a key: ghetl tenant key NAME")
            if job_id is not None and not any(j["id"] == job_id for j in jobs.list_jobs(conn, tenant["id"])):
                raise Refused(4404, f"tenant '{tenant['name'][:40]}' has no job {job_id}; "
                                    "see: ghetl jobs --tenant NAME")
        return tenant, job_id, key

    async def _send(self, ws: ServerConnection, subscription: Subscription, tenant: dict[str, Any]) -> None:
        """Send the first snapshot, then the queued events; a resync marker sends a new snapshot."""
        guard = CircleGuard()
        item: Event | Resync = Resync("connect")
        try:
            while True:
                if isinstance(item, Resync):
                    snap = await asyncio.to_thread(snapshot, self.engine, tenant, subscription.job_id, item.reason)
                    guard.reset(snap)
                    await ws.send(encode(snap))
                elif guard.accept(item):
                    await ws.send(item.text if isinstance(item, Outbound) else encode(item))
                    subscription.delivered += 1
                item = await subscription.queue.get()
        except ConnectionClosed:
            pass
        except sa.exc.SQLAlchemyError as exc:
            log.error("status snapshot for tenant %s failed: %s", tenant["name"], str(exc).splitlines()[0])
            await ws.close(1011, "the status database is unavailable; reconnect later")
        except Exception as exc:  # a client left open and silent would be worse than one told to reconnect
            log.error("status stream of a client of tenant %s failed: %s: %s", tenant["name"], type(exc).__name__, exc)
            await ws.close(1011, "the status stream failed; reconnect")

    async def _check(self) -> None:
        """Every `check_interval`: end the runs nobody works on any more, and cut off clients whose
        key was replaced (`ghetl tenant key`); the handshake alone would let a leaked key stream on."""
        while True:
            try:
                await asyncio.to_thread(self._end_stale_runs)
                revoked = await asyncio.to_thread(self._revoked, list(self._clients))
            except (sa.exc.SQLAlchemyError, ConnectionError) as exc:
                log.warning("status check failed, will retry: %s", str(exc).splitlines()[0])
            else:
                closing = [ws.close(4403, REVOKED) for s in revoked if (ws := self._clients.get(s)) is not None]
                if closing:
                    log.info("closed %d status clients whose key was replaced", len(closing))
                    await asyncio.gather(*closing)
            await asyncio.sleep(self.check_interval)

    def _end_stale_runs(self) -> None:
        with self.engine.begin() as conn:
            events = jobs.end_stale_runs(conn)
        if events:
            log.warning("ended %d runs whose sync process stopped responding", sum(e["type"] == "job" for e in events))
            self.broker.publish_status(events)

    def _revoked(self, subscriptions: list[Subscription]) -> list[Subscription]:
        """The subscriptions whose key is no longer their tenant's (or whose tenant is gone)."""
        if not subscriptions:
            return []
        ids = {s.tenant_id for s in subscriptions}
        with self.engine.connect() as conn:
            stored = dict(conn.execute(
                sa.select(tenants_table.c.id, tenants_table.c.stream_key_hash).where(tenants_table.c.id.in_(ids))
            ).all())
        return [s for s in subscriptions if not hmac.compare_digest(stored.get(s.tenant_id) or "", s.key_hash)]

    async def _poll(self) -> None:
        """Turn changes of `etl_jobs` made by other processes into events (memory:// fallback)."""
        seen: dict[int, dict[str, Any]] | None = None
        while True:
            try:
                current = await asyncio.to_thread(_job_states, self.engine, seen or {})
            except sa.exc.SQLAlchemyError as exc:
                log.warning("status poll failed, will retry: %s", str(exc).splitlines()[0])
            else:
                if seen is not None:
                    for event in changes(seen, current):
                        self._dispatch(event)
                seen = current
            await asyncio.sleep(self.poll_interval or 1.0)


def _asks_snapshot(message: str | bytes) -> bool:
    try:
        return json.loads(message).get("type") == "snapshot"
    except (ValueError, AttributeError):
        return False


def _job_states(engine: sa.Engine, before: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Every job's status, run and error, with progress for the running ones and for those whose
    run ended since the last poll (`before`): their `finished` events carry the final counts."""
    def counted(job: dict[str, Any]) -> bool:
        old = before.get(job["id"])
        return job["status"]["overall"] == "RUNNING" or (old is not None and (
            old["status"]["overall"] == "RUNNING" or old["run_id"] != job["run_id"]))

    with engine.connect() as conn:
        return {j["id"]: {**j, "progress": jobs.job_progress(conn, j) if counted(j) else {}}
                for j in jobs.list_jobs(conn)}


def changes(before: dict[int, dict[str, Any]], after: dict[int, dict[str, Any]]) -> Iterator[Event]:
    """The events that explain how the jobs went from `before` to `after` (two polls apart)."""
    for job_id, job in after.items():
        old = before.get(job_id)
        if job["run_id"] is None or old is None:
            continue
        new_run = old["run_id"] != job["run_id"]
        if new_run:
            yield job_event(job["tenant_id"], job_id, job["run_id"], "RUNNING")
        for step, circles in job["status"]["steps"].items():
            old_circles = {} if new_run else old["status"]["steps"].get(step, {})
            for stage in STAGES:
                was, now = old_circles.get(stage, "idle"), circles[stage]
                counts = job["progress"].get(step, {}).get(stage, {})
                if now != was and now in ("finished", "failed") and was == "idle":
                    yield stage_event(job["tenant_id"], job_id, job["run_id"], step, stage, "running")
                old_counts = {} if new_run else old["progress"].get(step, {}).get(stage, {})
                if now != was or (now == "running" and counts != old_counts):
                    yield stage_event(job["tenant_id"], job_id, job["run_id"], step, stage, now, **counts)
        overall = job["status"]["overall"]
        if overall in ("FINISHED", "FAILED") and (new_run or old["status"]["overall"] != overall):
            yield job_event(job["tenant_id"], job_id, job["run_id"], overall, error=job["error_message"])
