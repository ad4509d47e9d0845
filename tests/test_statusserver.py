"""The WebSocket status stream with real clients: snapshot then ordered events, on both back ends;
worker processes seen through RabbitMQ; tenant isolation; stalled clients cost nothing."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from ghetl.pipeline import jobs
from ghetl.status.events import job_event, stage_event
from ghetl.status.server import CircleGuard, Limits, StatusServer, Subscription, _job_states, changes

from .conftest import TOKEN, Backend, Workers, _scaleout, add_tenant
from .status_helpers import (
    STAGES,
    STEP,
    Client,
    assert_ordered_run,
    ended,
    free_port,
    start_cli_server,
    stream_key,
    stream_url,
    tenant_id,
)
from .support import wait_until


@pytest.fixture
def server(backend: Backend) -> Iterator[StatusServer]:
    with StatusServer(backend.engine, backend.broker, port=0) as running:
        yield running


def test_snapshot_then_every_change_of_a_sync_in_order(backend, sandbox, tenant, server):
    key = stream_key(backend, tenant)
    client = Client(server.url, tenant, key)
    snapshot = client.until(lambda ms: len(ms) >= 1)[0]
    assert snapshot["type"] == "snapshot" and snapshot["reason"] == "connect"
    assert snapshot["tenant"] == tenant and snapshot["tenant_id"] == tenant_id(backend, tenant)
    [job] = snapshot["jobs"]
    assert job["overall"] == "READY" and job["run_id"] is None and job["last_sync_date"] is None
    assert {s: job["status"]["steps"][STEP][s] for s in STAGES} == dict.fromkeys(STAGES, "idle")

    result = backend.sync(tenant)
    messages = client.until_run_ends(result.run_id)

    assert result.overall == "FINISHED"
    assert_ordered_run(messages, result.run_id, total=500)
    assert all(m["tenant_id"] == snapshot["tenant_id"] and m["job_id"] == job["job_id"] for m in messages[1:])

    fresh = client.barrier()[-1]
    assert fresh["reason"] == "requested"
    [job] = fresh["jobs"]
    assert job["overall"] == "FINISHED" and job["run_id"] == result.run_id and job["last_sync_date"] is not None
    assert {s: job["progress"][STEP][s]["processed"] for s in STAGES} == dict.fromkeys(STAGES, 500)
    client.close()


def test_a_job_filter_and_a_query_key_work_too(backend, sandbox, tenant, server):
    key = stream_key(backend, tenant)
    job_id = backend.scalar("select id from etl_jobs")
    with connect(stream_url(server.url, tenant, job=job_id, key=key)) as ws:
        snapshot = json.loads(ws.recv(timeout=10))
    assert [j["job_id"] for j in snapshot["jobs"]] == [job_id] and snapshot["job_id"] == job_id


def test_a_browser_passes_its_key_as_a_subprotocol_and_it_is_never_echoed(backend, sandbox, tenant, server):
    key = stream_key(backend, tenant)
    with connect(stream_url(server.url, tenant), subprotocols=["ghetl.status", f"ghetl.key.{key}"]) as ws:
        snapshot = json.loads(ws.recv(timeout=10))
        assert ws.subprotocol == "ghetl.status" and key not in str(ws.response.headers)
    assert snapshot["type"] == "snapshot" and snapshot["tenant"] == tenant
    code, reason = _close_of(stream_url(server.url, tenant), subprotocols=["ghetl.status", f"ghetl.key.{key}x"])
    assert code == 4403 and "wrong key" in reason


def _close_of(url: str, headers: dict[str, str] | None = None,
              subprotocols: list[str] | None = None) -> tuple[int, str]:
    with (connect(url, additional_headers=headers or {}, subprotocols=subprotocols) as ws,
          pytest.raises(ConnectionClosed) as closed):
        ws.recv(timeout=10)
    return closed.value.rcvd.code, closed.value.rcvd.reason


def test_a_client_without_the_right_key_is_refused_with_the_reason(embedded, sandbox, token):
    a = add_tenant(embedded, sandbox, name="tenant-a")
    b = add_tenant(embedded, sandbox, name="tenant-b", owner="octocat")
    old_key = stream_key(embedded, a)
    key_a, key_b = stream_key(embedded, a), stream_key(embedded, b)
    job_b = embedded.scalar("select id from etl_jobs where tenant_id = :t", t=tenant_id(embedded, b))
    with StatusServer(embedded.engine, embedded.broker, port=0) as server:
        base = server.url
        code, reason = _close_of(stream_url(base, a))
        assert code == 4401 and "Authorization: Bearer" in reason and "?key=" in reason
        code, reason = _close_of(stream_url(base, a), {"Authorization": "Bearer not-the-key"})
        assert code == 4403 and "wrong key for tenant 'tenant-a'" in reason
        assert _close_of(stream_url(base, a, key=old_key)) == (code, reason), "a rotated key stops working"
        assert _close_of(stream_url(base, a, key=key_b))[0] == 4403, "a key opens only its own tenant"
        assert _close_of(stream_url(base, "no-such-tenant", key=key_a))[0] == 4403
        assert _close_of(f"{base}/?key={key_a}")[0] == 4400
        assert _close_of(stream_url(base, "²", key=key_a))[0] == 4403, "a digit that is no number is a name"
        code, reason = _close_of(stream_url(base, a, key=key_a) + "&job=%C2%B2")
        assert code == 4400 and "job must be a job id" in reason
        code, reason = _close_of(stream_url(base, a, job=job_b, key=key_a))
        assert code == 4404 and f"no job {job_b}" in reason, "another tenant's job is not reachable either"
        assert not server.subscriptions(), "a refused client is never subscribed"
        with connect(stream_url(base, tenant_id(embedded, a), key=key_a)) as ws:
            assert json.loads(ws.recv(timeout=10))["tenant"] == a, "a tenant may be named by its id"


def test_two_tenants_syncing_at_once_each_see_only_their_own(backend, sandbox, token, server):
    names = [add_tenant(backend, sandbox, name="tenant-a"),
             add_tenant(backend, sandbox, name="tenant-b", owner="octocat")]
    clients = {name: Client(server.url, name, stream_key(backend, name)) for name in names}
    for client in clients.values():
        client.until(lambda ms: len(ms) >= 1)
    results = {}
    threads = [threading.Thread(target=lambda n=n: results.__setitem__(n, backend.sync(n))) for n in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)

    for name, total in zip(names, (500, 12), strict=True):
        result, client = results[name], clients[name]
        assert result.overall == "FINISHED"
        client.until_run_ends(result.run_id)
        messages = client.barrier()
        own = tenant_id(backend, name)
        assert {m["tenant_id"] for m in messages} == {own}
        assert {j["job_id"] for m in messages if m["type"] == "snapshot" for j in m["jobs"]} == {result.job_id}
        assert {m["run_id"] for m in messages if m["type"] != "snapshot"} == {result.run_id}
        assert_ordered_run(messages, result.run_id, total=total)
        client.close()


@contextmanager
def healthy_and_stalled(backend: Backend, tenant: str, queue_size: int,
                        flood: int) -> Iterator[tuple[Client, Subscription, ClientConnection]]:
    """A server with one client that reads everything and one that reads nothing (tiny receive
    buffer, one-message queue, recv() never called), already clogged by `flood` bulky events."""
    key = stream_key(backend, tenant)
    with StatusServer(backend.engine, backend.broker, port=0, queue_size=queue_size,
                      limits=Limits(progress_interval=0)) as server:
        healthy = Client(server.url, tenant, key)
        healthy.until(lambda ms: len(ms) == 1)
        [other] = server.subscriptions()
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", server.port))
            with connect(stream_url(server.url, tenant, key=key), sock=sock, max_queue=1, ping_interval=None,
                         close_timeout=0.5) as stalled:
                assert wait_until(lambda: len(server.subscriptions()) == 2, 10)
                [subscription] = [s for s in server.subscriptions() if s is not other]
                _flood(backend, healthy, tenant_id(backend, tenant), backend.scalar("select id from etl_jobs"), flood)
                yield healthy, subscription, stalled
        healthy.close()


def _flood(backend: Backend, reader: Client, tenant: int, job: int, count: int, batch: int = 4) -> None:
    """Publish `count` bulky progress events, letting the healthy reader keep up batch by batch
    (a batch lands in every queue at once, so it must be smaller than the server's queues)."""
    for start in range(0, count, batch):
        events = [{**stage_event(tenant, job, "flood", STEP, "transform", "running", processed=n),
                   "padding": secrets.token_hex(4000)}  # random, so that compression cannot shrink it
                  for n in range(start, min(start + batch, count))]
        backend.broker.publish_status(events)
        last = events[-1]["processed"]
        reader.until(lambda ms, last=last: any(m.get("processed") == last for m in ms))


def test_a_stalled_client_loses_its_backlog_for_a_snapshot(embedded, sandbox, token):
    tenant = add_tenant(embedded, sandbox)
    with healthy_and_stalled(embedded, tenant, queue_size=16, flood=2000) as (healthy, stalled_sub, stalled):
        processed = [m["processed"] for m in healthy.messages[1:]]
        assert processed == list(range(2000)), "the healthy client got all, in order"
        assert stalled_sub.dropped > 0 and stalled_sub.resyncs >= 1
        assert stalled_sub.queue.qsize() <= 16, "the stalled client's backlog stays bounded"
        assert stalled_sub.delivered < 2000

        received: list[dict] = []
        while not (received and received[-1]["type"] == "snapshot" and received[-1]["reason"] == "overflow"):
            received.append(json.loads(stalled.recv(timeout=10)))
        assert received[0]["type"] == "snapshot" and received[0]["reason"] == "connect"
        progress = [m["processed"] for m in received if m["type"] == "stage"]
        assert progress == sorted(progress) and len(progress) < 2000, "what it got before the gap came in order"


def test_a_stalled_client_does_not_hold_up_a_sync(backend, sandbox, tenant):
    """With one client stuck (its sender blocked on a full socket), a sync runs and others see it all."""
    with healthy_and_stalled(backend, tenant, queue_size=64, flood=1000) as (healthy, stalled_sub, _stalled):
        assert stalled_sub.dropped > 0, "the stalled client's sender is stuck on its full socket"
        before = (stalled_sub.delivered, stalled_sub.resyncs, stalled_sub.queue.qsize())

        result = backend.sync(tenant)
        messages = healthy.until_run_ends(result.run_id)

        assert result.overall == "FINISHED"
        assert_ordered_run(messages, result.run_id, total=500)
        after = (stalled_sub.delivered, stalled_sub.resyncs, stalled_sub.queue.qsize())
        assert after[0] == before[0], "nothing reached the stalled client during the sync"
        assert after[1] > before[1] or after[2] > before[2], "the sync's events were queued for it, and waited there"
        assert after[2] <= 64


@pytest.fixture
def scaleout() -> Iterator[Backend]:
    yield from _scaleout()


def test_events_from_worker_processes_reach_a_separate_status_server(scaleout, sandbox, token, tmp_path):
    """RabbitMQ end to end: `ghetl worker` processes -> fanout exchange -> `ghetl status-server` process."""

    name = add_tenant(scaleout, sandbox)
    key = stream_key(scaleout, name)
    workers = Workers(scaleout, tmp_path)
    port = free_port()
    server = start_cli_server(scaleout.env, port, tmp_path / "status-server.log")
    try:
        workers.start("all")
        client = Client(f"ws://127.0.0.1:{port}", name, key)
        client.until(lambda ms: len(ms) == 1)
        result = scaleout.sync(name, run_workers=False)
        messages = client.until_run_ends(result.run_id)
        assert result.overall == "FINISHED"
        assert_ordered_run(messages, result.run_id, total=500)
        client.close()
    finally:
        workers.kill()
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0, (tmp_path / "status-server.log").read_text()


def test_the_cli_server_on_memory_follows_a_sync_of_another_process(embedded, sandbox, token, tmp_path):
    """On memory:// the server cannot hear another process's bus; it reads the changes from the database."""
    tenant = add_tenant(embedded, sandbox)
    key = stream_key(embedded, tenant)
    port = free_port()
    env = {**embedded.env, "GHETL_BROKER_URL": "memory://"}
    server = start_cli_server(env, port, tmp_path / "status-server.log", "--poll", "0.1")
    try:
        client = Client(f"ws://127.0.0.1:{port}", tenant, key)
        client.until(lambda ms: len(ms) == 1)
        result = embedded.sync(tenant)  # this process's broker is not the server's: only the database connects them
        messages = client.until_run_ends(result.run_id)
        assert result.overall == "FINISHED"
        events = [m for m in messages[1:] if m["run_id"] == result.run_id]
        assert events[0]["overall"] == "RUNNING" and ended(events[-1], result.run_id)
        for stage in STAGES:
            statuses = [m["status"] for m in events if m.get("stage") == stage]
            assert statuses[0] == "running" and statuses[-1] == "finished", (stage, statuses)
        client.close()
    finally:
        server.send_signal(signal.SIGINT)
        assert server.wait(30) == 0
    assert "listening on ws://127.0.0.1" in (tmp_path / "status-server.log").read_text()


def test_the_cli_server_says_when_its_port_is_taken(embedded):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "ghetl", "status-server", "--port", str(port)],
                                env={**os.environ, **embedded.env}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("ghetl: error:")]
    assert len(errors) == 1 and f"cannot listen on 127.0.0.1:{port}" in errors[0] and "--port" in errors[0]


def test_the_cli_server_says_when_its_host_is_not_this_machines(embedded):
    result = subprocess.run([sys.executable, "-m", "ghetl", "status-server", "--host", "192.0.2.1", "--port", "0"],
                            env={**os.environ, **embedded.env}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("ghetl: error:")]
    assert len(errors) == 1 and "cannot listen on 192.0.2.1" in errors[0] and errors[0].endswith("check --host")
    assert "Traceback" not in result.stderr


def test_the_cli_server_on_a_database_without_schema_exits_with_one_line(database_without_schema):
    """Started anyway, it would listen and log a failed poll every second for as long as it ran."""
    env = {**os.environ, "GHETL_DATABASE_URL": database_without_schema, "GHETL_BROKER_URL": "memory://"}
    result = subprocess.run([sys.executable, "-m", "ghetl", "status-server", "--port", "0"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith("ghetl: error: no ghetl schema at ") and "run: ghetl init" in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_errors_reach_clients_as_messages_without_tokens(embedded, sandbox, token):
    tenant = add_tenant(embedded, sandbox)
    key = stream_key(embedded, tenant)
    own, job = tenant_id(embedded, tenant), embedded.scalar("select id from etl_jobs")
    with StatusServer(embedded.engine, embedded.broker, port=0) as server:
        client = Client(server.url, tenant, key)
        client.until(lambda ms: len(ms) == 1)
        embedded.broker.publish_status([job_event(own, job, "r1", "RUNNING"),
                                        job_event(own, job, "r1", "FAILED", error=f"GitHub refused {TOKEN}")])
        failed = client.until(lambda ms: len(ms) == 3)[-1]
    assert failed["overall"] == "FAILED" and TOKEN not in failed["error"] and "GitHub refused" in failed["error"]


def test_the_server_ends_a_run_whose_sync_process_died_and_tells_its_clients(backend, sandbox, tenant, monkeypatch):
    monkeypatch.setattr(jobs, "STALE_AFTER", dt.timedelta(seconds=1))
    with backend.engine.begin() as conn:
        run, _ = jobs.start(conn, jobs.list_jobs(conn)[0], full=True)
        jobs.stage_running(conn, run.run_id, run.job_id, STEP, "extraction")
    with StatusServer(backend.engine, backend.broker, port=0, check_interval=0.2) as server:
        client = Client(server.url, tenant, stream_key(backend, tenant))
        messages = client.until_run_ends(run.run_id, timeout=20)
    assert messages[0]["type"] == "snapshot" and messages[0]["jobs"][0]["overall"] == "RUNNING"
    assert {m["stage"]: m["status"] for m in messages if m["type"] == "stage"} == dict.fromkeys(STAGES, "failed")
    assert messages[-1]["overall"] == "FAILED" and "its sync process stopped responding" in messages[-1]["error"]
    client.close()


def test_a_replaced_key_cuts_off_the_connections_that_use_it(backend, sandbox, tenant):
    old_key = stream_key(backend, tenant)
    with StatusServer(backend.engine, backend.broker, port=0, check_interval=0.2) as server:
        client = Client(server.url, tenant, old_key)
        client.until(lambda ms: len(ms) == 1)
        time.sleep(0.5)
        client.barrier()  # several checks have passed and the connection is still open
        new_key = stream_key(backend, tenant)
        with pytest.raises(ConnectionClosed) as closed:
            client.until(lambda ms: False, timeout=10)
        assert closed.value.rcvd.code == 4403 and "ghetl tenant key" in closed.value.rcvd.reason
        assert wait_until(lambda: not server.subscriptions(), 5)
        fresh = Client(server.url, tenant, new_key)
        assert fresh.until(lambda ms: len(ms) == 1)[0]["type"] == "snapshot", "the new key works"
        time.sleep(0.5)
        assert len(server.subscriptions()) == 1, "and stays connected"
        fresh.close()
    client.close()


def test_after_the_subscription_comes_back_every_client_gets_a_snapshot(scaleout, sandbox, token, monkeypatch):
    """A dropped RabbitMQ connection loses what was published until the queue is bound again."""
    from ghetl.queue import rabbitmq

    tenant = add_tenant(scaleout, sandbox)
    own, job = tenant_id(scaleout, tenant), scaleout.scalar("select id from etl_jobs")
    deliver = rabbitmq._call

    def drop_on_marker(callback, body):
        if b'"drop-connection"' in body:
            raise ConnectionResetError("connection reset by peer")  # as pika raises it mid-consume
        deliver(callback, body)

    monkeypatch.setattr(rabbitmq, "_call", drop_on_marker)
    with StatusServer(scaleout.engine, scaleout.broker, port=0) as server:
        client = Client(server.url, tenant, stream_key(scaleout, tenant))
        client.until(lambda ms: len(ms) == 1)
        scaleout.broker.publish_status([job_event(own, job, "drop-connection", "RUNNING")])
        resync = client.until(lambda ms: len(ms) == 2, timeout=20)[-1]
        assert resync["type"] == "snapshot" and resync["reason"] == "reconnect"
        scaleout.broker.publish_status([job_event(own, job, "r2", "RUNNING")])
        assert client.until(lambda ms: len(ms) == 3)[-1]["run_id"] == "r2", "events flow again after the snapshot"
        client.close()


def _snapshot_of(run_id: str, overall: str, **circles: str) -> dict:
    steps = {STEP: {"order": 1, "display_name": "Repos", **dict.fromkeys(STAGES, "idle"), **circles}}
    status = {"overall": overall, "steps": steps}
    return {"jobs": [{"job_id": 1, "run_id": run_id, "overall": overall, "status": status}]}


def test_the_guard_drops_what_would_move_a_circle_backwards():
    guard = CircleGuard()
    guard.reset(_snapshot_of("r1", "RUNNING", extraction="finished", transform="running"))
    stage = lambda run, name, status: stage_event(1, 1, run, STEP, name, status)  # noqa: E731
    assert not guard.accept(stage("r1", "extraction", "running")), "a late running after finished"
    assert guard.accept(stage("r1", "transform", "running")), "progress of a running stage"
    assert guard.accept(stage("r1", "transform", "finished"))
    assert guard.accept(job_event(1, 1, "r1", "FINISHED"))
    assert not guard.accept(job_event(1, 1, "r1", "RUNNING"))
    assert guard.accept(job_event(1, 1, "r2", "RUNNING")), "a new run starts from idle"
    assert guard.accept(stage("r2", "extraction", "running"))
    assert not guard.accept(stage("r1", "embedding", "finished")), "an event of a run that has ended"
    assert guard.accept(stage_event(1, 2, "r9", STEP, "extraction", "running")), "a job the snapshot did not have"


def _polled(run_id: str, overall: str, progress: dict | None = None, **circles: str) -> dict:
    job = _snapshot_of(run_id, overall, **circles)["jobs"][0]
    return {1: {"tenant_id": 5, "run_id": run_id, "status": job["status"], "error_message": None,
                "progress": progress or {}}}


def test_polled_finished_events_carry_the_final_counts(embedded, sandbox, token):
    tenant = add_tenant(embedded, sandbox)
    before = _job_states(embedded.engine, {})

    embedded.sync(tenant)
    after = _job_states(embedded.engine, before)

    finished = [e for e in changes(before, after) if e.get("type") == "stage" and e["status"] == "finished"
                and e["step"] == "github_repositories"]
    assert sorted((e["stage"], e.get("processed"), e.get("total")) for e in finished) == [
        ("embedding", 500, 500), ("extraction", 500, 500), ("transform", 500, 500)]
    job_id = next(iter(after))
    assert _job_states(embedded.engine, after)[job_id]["progress"] == {}  # nothing new: not read again


def test_polled_changes_become_the_events_a_live_bus_would_have_sent():
    before = _polled("r1", "FINISHED", **dict.fromkeys(STAGES, "finished"))
    middle = _polled("r2", "RUNNING", {STEP: {"extraction": {"processed": 40, "total": None, "failed": 0}}},
                     extraction="running")
    after = _polled("r2", "FINISHED", **dict.fromkeys(STAGES, "finished"))

    started = list(changes(before, middle))
    assert [(e["type"], e.get("stage"), e.get("status") or e.get("overall")) for e in started] == [
        ("job", None, "RUNNING"), ("stage", "extraction", "running")]
    assert started[1]["processed"] == 40 and {e["tenant_id"] for e in started} == {5}

    ended_ = [(e.get("stage"), e.get("status") or e.get("overall")) for e in changes(middle, after)]
    assert ended_ == [("extraction", "finished"), ("transform", "running"), ("transform", "finished"),
                      ("embedding", "running"), ("embedding", "finished"), (None, "FINISHED")]
    assert list(changes(after, after)) == []


def test_stream_keys_never_reach_the_logs(embedded, sandbox, token, caplog):
    """Debug logging shows request lines and headers, of the server and of the notebook board."""
    from ghetl.workbench.widgets import StatusBoard

    caplog.set_level(logging.DEBUG, logger="websockets.ghetl")
    tenant = add_tenant(embedded, sandbox)
    key = stream_key(embedded, tenant)
    with StatusServer(embedded.engine, embedded.broker, port=0) as server:
        board = StatusBoard(tenant, url=server.url, key=key)
        assert wait_until(lambda: board.model.jobs, 10)
        board.close()
        with connect(stream_url(server.url, tenant, key=key)) as ws:
            ws.recv(timeout=10)
        assert _close_of(stream_url(server.url, tenant, key=key + "x"))[0] == 4403
        assert _close_of(stream_url(server.url, tenant), subprotocols=["ghetl.status", f"ghetl.key.{key}x"])[0] == 4403
    assert "GET /?tenant=" in caplog.text and "Authorization: Bearer ***" in caplog.text
    assert "ghetl.status, ghetl.key.***" in caplog.text
    assert key not in caplog.text


def test_a_malformed_event_on_the_bus_is_dropped_and_every_stream_goes_on(backend, sandbox, tenant, server, caplog):
    """An event without job_id (or with a wrong type) used to raise in the guard and silently end
    that client's sender while its connection stayed open."""
    client = Client(server.url, tenant, stream_key(backend, tenant))
    client.until(lambda ms: len(ms) >= 1)
    good = job_event(1, 1, "r-after", "RUNNING")
    backend.broker.publish_status([
        {"type": "stage", "tenant_id": 1, "run_id": "r-bad", "step": "github_repositories", "stage": "transform",
         "status": "running"},
        {**job_event(1, 1, "r-bad", "RUNNING"), "job_id": ["1"]},
        {**stage_event(1, 1, "r-bad", STEP, "transform", "running"), "stage": "teleport"},
        good,
    ])

    messages = client.until(lambda ms: any(m.get("run_id") == "r-after" for m in ms))

    assert not any(m.get("run_id") == "r-bad" for m in messages)
    dropped = [r.getMessage() for r in caplog.records if "dropped a malformed status event" in r.getMessage()]
    assert [d.split(")")[0] for d in dropped] == [
        "dropped a malformed status event (field 'job_id' must be int, got NoneType",
        "dropped a malformed status event (field 'job_id' must be int, got list",
        "dropped a malformed status event (unknown stage 'teleport' or circle 'running'",
    ]


def test_each_limit_refuses_with_its_close_code_while_a_good_client_keeps_streaming(embedded, sandbox, token):
    a = add_tenant(embedded, sandbox, name="tenant-a")
    b = add_tenant(embedded, sandbox, name="tenant-b", owner="octocat")
    key_a, key_b = stream_key(embedded, a), stream_key(embedded, b)
    limits = Limits(connections=3, per_tenant=2, handshakes_per_second=50, snapshots_per_minute=2)
    with StatusServer(embedded.engine, embedded.broker, port=0, limits=limits) as server:
        good = Client(server.url, a, key_a)
        good.until(lambda ms: len(ms) >= 1)
        second = Client(server.url, a, key_a)
        second.until(lambda ms: len(ms) >= 1)
        code, reason = _close_of(stream_url(server.url, a), {"Authorization": f"Bearer {key_a}"})
        assert code == 1013 and "tenant 'tenant-a' has 2 status connections" in reason
        third = Client(server.url, b, key_b)
        third.until(lambda ms: len(ms) >= 1)
        code, reason = _close_of(stream_url(server.url, b), {"Authorization": f"Bearer {key_b}"})
        assert code == 1013 and "holds its 3 connections" in reason

        for _ in range(2):
            third.barrier()
        third.ws.send(json.dumps({"type": "snapshot"}))
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                third.ws.recv(timeout=10)
        assert closed.value.rcvd.code == 4429 and "snapshot requests a minute" in closed.value.rcvd.reason

        embedded.broker.publish_status([job_event(1, 1, "r-limits", "RUNNING")])
        assert good.until(lambda ms: any(m.get("run_id") == "r-limits" for m in ms))

    flood = Limits(handshakes_per_second=3)
    with StatusServer(embedded.engine, embedded.broker, port=0, limits=flood) as server:
        codes = []
        for _ in range(5):
            with connect(stream_url(server.url, a), additional_headers={"Authorization": f"Bearer {key_a}"}) as ws:
                try:
                    ws.recv(timeout=10)
                    codes.append("streamed")
                except ConnectionClosed as exc:
                    codes.append(exc.rcvd.code)
        assert codes == ["streamed"] * 3 + [4429, 4429]


def test_progress_is_coalesced_per_stage_and_the_final_state_always_arrives(embedded, sandbox, token):
    tenant = add_tenant(embedded, sandbox)
    tid, job = tenant_id(embedded, tenant), embedded.scalar("select id from etl_jobs")
    with StatusServer(embedded.engine, embedded.broker, port=0, limits=Limits(progress_interval=0.2)) as server:
        client = Client(server.url, tenant, stream_key(embedded, tenant))
        client.until(lambda ms: len(ms) == 1)
        started = time.monotonic()
        embedded.broker.publish_status([job_event(tid, job, "run-1", "RUNNING")])
        for n in range(1, 3001):
            embedded.broker.publish_status([stage_event(tid, job, "run-1", STEP, "transform", "running",
                                                        processed=n, total=3000)])
        embedded.broker.publish_status([stage_event(tid, job, "run-1", STEP, "transform", "finished",
                                                    processed=3000, total=3000),
                                        stage_event(tid, job, "run-1", STEP, "transform", "running",
                                                    processed=2999, total=3000),
                                        job_event(tid, job, "run-1", "FINISHED")])
        messages = client.until(lambda ms: ms[-1].get("overall") == "FINISHED")
        elapsed = time.monotonic() - started
        time.sleep(0.5)  # a held-back progress event would arrive now, after the end
        stages = [m for m in client.messages if m["type"] == "stage"]
        assert client.messages == messages, "nothing arrives after the job's end"
        assert len(stages) <= 2 + elapsed / 0.2 + 1, f"{len(stages)} progress events in {elapsed:.2f} s"
        assert stages[0]["processed"] == 1, "the first progress goes out at once"
        assert stages[-1]["status"] == "finished" and stages[-1]["processed"] == 3000, "the final counts arrive"
        counts = [m["processed"] for m in stages]
        assert counts == sorted(counts), "never an older count after a newer one"
        client.close()


def test_the_last_progress_held_back_is_sent_when_its_interval_ends(embedded, sandbox, token):
    tenant = add_tenant(embedded, sandbox)
    tid, job = tenant_id(embedded, tenant), embedded.scalar("select id from etl_jobs")
    with StatusServer(embedded.engine, embedded.broker, port=0, limits=Limits(progress_interval=0.3)) as server:
        client = Client(server.url, tenant, stream_key(embedded, tenant))
        client.until(lambda ms: len(ms) == 1)
        embedded.broker.publish_status([stage_event(tid, job, "run-1", STEP, "embedding", "running", processed=n)
                                        for n in (1, 2, 5, 4, 3)])
        messages = client.until(lambda ms: ms[-1].get("processed") == 5)
        assert [m["processed"] for m in messages[1:]] == [1, 5], "the newest held-back count, and only it"
        time.sleep(0.5)
        assert len(client.messages) == 3, "older counts held back are never sent"
        client.close()


def test_a_subscription_without_an_interval_passes_every_progress_event():
    async def offer_all() -> list[dict]:
        subscription = Subscription(1, None, 100, "hash", progress_interval=0)
        for n in (1, 2, 3):
            subscription.offer(stage_event(1, 7, "r", STEP, "transform", "running", processed=n))
        return [subscription.queue.get_nowait() for _ in range(subscription.queue.qsize())]

    assert [e["processed"] for e in asyncio.run(offer_all())] == [1, 2, 3]
