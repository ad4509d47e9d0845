"""The scale-out deployment on real servers: RabbitMQ confirms, `ghetl worker` processes,
completion under parallelism, and `ghetl sync` waiting for remote workers.

Each test has its own PostgreSQL database and queue prefix (conftest's `_scaleout`); when
CI=true an unreachable server fails the test instead of skipping it.
"""

from __future__ import annotations

import fcntl
import itertools
import logging
import os
import pty
import shutil
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from ghetl.queue.rabbitmq import PublishRejected, RabbitBroker

from .conftest import TOKEN, Backend, Workers, _unavailable, add_tenant
from .support import delete_queues, wait_until


def rabbitmqctl(*args: str) -> None:
    """Operate the local RabbitMQ node (policies, stop/start), as the tests that need it must."""
    if shutil.which("rabbitmqctl") is None:
        _unavailable("rabbitmqctl",
                     FileNotFoundError("not on PATH; these tests need the RabbitMQ node on this machine"))
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


def sync_remote(backend: Backend, tenant: str, **kwargs: Any) -> Any:
    """A sync that publishes and waits for the worker processes (the amqp default)."""
    return backend.sync(tenant, run_workers=False, **kwargs)


def stored_once(backend: Backend, expected: int) -> None:
    """Every repository of the org is stored, and stored exactly once, with one vector each."""
    rows, distinct = backend.rows("SELECT count(*), count(DISTINCT external_id) FROM repositories")[0]
    assert (rows, distinct) == (expected, expected)
    vectors, distinct = backend.rows("SELECT count(*), count(DISTINCT external_id) FROM embeddings")[0]
    assert (vectors, distinct) == (expected, expected)


def test_a_publish_the_broker_refuses_raises(scaleout: Backend) -> None:
    """Publisher confirms are real: a nack from a full reject-publish queue reaches the caller."""
    broker = scaleout.broker
    queue = broker.queue("transform")  # type: ignore[attr-defined]
    policy = f"{queue}-full"
    rabbitmqctl("set_policy", "--apply-to", "queues", policy, f"^{queue}$",
                '{"max-length": 2, "overflow": "reject-publish"}')
    try:
        broker.publish("transform", [{"n": 1}, {"n": 2}])
        with pytest.raises(PublishRejected, match="refused"):
            broker.publish("transform", [{"n": 3}])
        assert broker.pending("transform") == 2  # type: ignore[attr-defined]
    finally:
        rabbitmqctl("clear_policy", policy)


def test_a_publish_no_queue_takes_raises(scaleout: Backend) -> None:
    """Messages are published mandatory: a missing queue is an error, not a silent loss."""
    broker = RabbitBroker(scaleout.broker_url, f"{scaleout.env['GHETL_QUEUE_PREFIX']}y")
    try:
        broker.declare()
        with broker._channel() as channel:
            channel.queue_delete(broker.queue("embedding"))
        with pytest.raises(PublishRejected, match="no queue"):
            broker.publish("embedding", [{"n": 1}])
        broker.publish("transform", [{"n": 1}])
        assert broker.pending("transform") == 1
    finally:
        delete_queues(broker)
        broker.close()


def test_many_messages_are_confirmed_and_kept(scaleout: Backend) -> None:
    """A large list goes out in one call, every message persistent and counted."""
    broker = scaleout.broker
    broker.publish("transform", [{"n": n} for n in range(2000)])
    assert broker.pending("transform") == 2000  # type: ignore[attr-defined]
    with broker._channel() as channel:  # type: ignore[attr-defined]
        method, properties, _body = channel.basic_get(broker.queue("transform"), auto_ack=True)  # type: ignore[attr-defined]
    assert method is not None and properties.delivery_mode == 2
    assert properties.headers["x-ghetl-attempt"] == 1


def _watch_db(backend: Backend, job_id: int, stop: threading.Event, snapshots: list[Any]) -> None:
    """Snapshot the job's circles and the run's item counts in one statement, until stopped."""
    query = sa.text(
        "SELECT j.status, j.last_sync_date, j.run_id,"
        " (SELECT count(*) FROM raw_extraction_data r WHERE r.run_id = j.run_id AND r.status = 'pending'),"
        " (SELECT count(*) FROM raw_extraction_data r WHERE r.run_id = j.run_id AND r.status = 'transformed')"
        " FROM etl_jobs j WHERE j.id = :job"
    )
    with backend.engine.connect() as conn:
        while not stop.is_set():
            snapshots.append(conn.execute(query, {"job": job_id}).one())
            conn.rollback()
            time.sleep(0.005)


def test_parallel_workers_finish_each_stage_only_when_every_item_passed(
    scaleout: Backend, workers: Workers, make_sandbox: Any, token: str
) -> None:
    """4 transform + 2 embedding processes: no early `finished`, FINISHED once, last_sync_date once."""
    sandbox = make_sandbox(orgs={"acme": 1000}, seed=5)
    tenant = add_tenant(scaleout, sandbox)
    workers.start("transform", 4)
    workers.start("embedding", 2)
    job_id = scaleout.scalar("SELECT id FROM etl_jobs")
    events: list[dict[str, Any]] = []
    unsubscribe = scaleout.broker.subscribe_status(events.append)
    snapshots: list[Any] = []
    stop = threading.Event()
    watcher = threading.Thread(target=_watch_db, args=(scaleout, job_id, stop, snapshots))
    watcher.start()
    try:
        result = sync_remote(scaleout, tenant, full=True)
        assert wait_until(lambda: any(e.get("overall") == "FINISHED" for e in events), timeout=10)
    finally:
        stop.set()
        watcher.join()
        unsubscribe()
    assert result.overall == "FINISHED"
    stored_once(scaleout, 1000)

    run = [e for e in events if e.get("run_id") == result.run_id]
    assert [e["overall"] for e in run if e["type"] == "job"].count("FINISHED") == 1
    for stage in ("transform", "embedding"):
        finished = [e for e in run if e["type"] == "stage" and e["stage"] == stage and e["status"] == "finished"
                    and e["step"] == "github_repositories"]
        assert len(finished) == 1, f"{stage} finished {len(finished)} times"
        assert finished[0]["processed"] == finished[0]["total"] == 1000
    assert max(e["processed"] or 0 for e in run if e["type"] == "stage") == 1000

    during = [s for s in snapshots if s.run_id == result.run_id]
    assert len(during) > 10
    for status, _last_sync, _run, pending, transformed in during:
        circles = status["steps"]["github_repositories"]
        if circles["transform"] == "finished":
            assert pending == 0, "transform said finished while items were pending"
        if circles["embedding"] == "finished":
            assert pending + transformed == 0, "embedding said finished while items were waiting for it"
        if status["overall"] == "FINISHED":
            assert circles["embedding"] == "finished"
    last_sync = [s.last_sync_date for s in snapshots]
    changes = sum(1 for a, b in itertools.pairwise(last_sync) if a != b)
    assert changes == 1 and last_sync[-1] is not None
    assert scaleout.scalar("SELECT count(*) FROM etl_job_runs WHERE overall = 'FINISHED'") == 1
    assert workers.stop() == [0] * 6


def run_in_terminal(argv: list[str], env: dict[str, str], timeout: float) -> tuple[int, str, str]:
    """Run a command with stderr on a pseudo-terminal (where progress bars are drawn); return code, stdout, stderr."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    out, _ = proc.communicate(timeout=timeout)
    reader.join(10)
    os.close(master)
    return proc.returncode, out.decode(), b"".join(chunks).decode(errors="replace")


def test_sync_cli_waits_for_workers_with_progress_and_exit_code(
    scaleout: Backend, workers: Workers, sandbox: Any, token: str
) -> None:
    """`ghetl sync` on amqp publishes, shows a bar per stage fed by the status exchange, exits 0 on FINISHED."""
    tenant = add_tenant(scaleout, sandbox)
    workers.start("all")
    code, out, err = run_in_terminal(
        [sys.executable, "-m", "ghetl", "sync", "--tenant", tenant, "--timeout", "120"], workers.env, 180
    )
    assert code == 0, err
    assert "FINISHED" in out
    lines = err.replace("\r", "\n").splitlines()
    for stage in ("extraction", "transform", "embedding"):
        assert any(line.startswith(f"repositories {stage}") and "500/500" in line for line in lines), err
    stored_once(scaleout, 500)


def test_sync_without_workers_says_how_to_start_one_and_fails(scaleout: Backend, sandbox: Any, token: str) -> None:
    tenant = add_tenant(scaleout, sandbox)
    env = {**os.environ, **scaleout.env, "GITHUB_TOKEN": TOKEN}
    done = subprocess.run(
        [sys.executable, "-m", "ghetl", "sync", "--tenant", tenant, "--timeout", "3", "--quiet"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode != 0
    prefix = scaleout.env["GHETL_QUEUE_PREFIX"]
    assert f"no workers are consuming {prefix}.transform; start one with: ghetl worker all" in done.stderr
    assert scaleout.scalar("SELECT status->>'overall' FROM etl_jobs") == "FAILED"


def test_sync_repeats_the_no_workers_warning_while_nobody_consumes(
    scaleout: Backend, sandbox: Any, token: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A sync without --timeout waits for workers forever: one warning at its start scrolls out of sight."""
    from ghetl.pipeline import sync as sync_module
    monkeypatch.setattr(sync_module, "CONSUMER_CHECK_SECONDS", 0.05)
    monkeypatch.setattr(sync_module, "UNATTENDED_REPEAT_SECONDS", 0.4)
    tenant = add_tenant(scaleout, sandbox)
    caplog.set_level(logging.WARNING, logger="ghetl.pipeline.sync")
    with pytest.raises(TimeoutError):
        scaleout.sync(tenant, run_workers=False, timeout=1.5)

    prefix = scaleout.env["GHETL_QUEUE_PREFIX"]
    warnings = [r.getMessage() for r in caplog.records if r.getMessage().startswith("no workers are consuming")]
    for stage in ("transform", "embedding"):
        assert 2 <= warnings.count(f"no workers are consuming {prefix}.{stage}; start one with: ghetl worker all") <= 5


def test_a_step_waiting_for_its_parent_ends_with_the_run_when_nobody_transforms(
    scaleout: Backend, sandbox: Any, token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pull requests wait for their repositories' transform: without workers it never comes, and
    the run must end as any run without workers does, not wait in the step's thread forever."""
    from ghetl.pipeline.sync import Stalled

    monkeypatch.setenv("GHETL_NO_WORKER_TIMEOUT", "1")
    tenant = add_tenant(scaleout, sandbox, settings={"pull_requests": True})
    started = time.monotonic()
    with pytest.raises(Stalled, match="no transform worker for 1 s; start one with: ghetl worker all"):
        scaleout.sync(tenant, run_workers=False, timeout=None)

    assert time.monotonic() - started < 30
    status = scaleout.scalar("SELECT status FROM etl_jobs")
    assert status["overall"] == "FAILED"
    assert status["steps"]["github_repositories"]["extraction"] == "finished"
    assert status["steps"]["github_pull_requests"]["transform"] != "finished"


def test_worker_refuses_the_in_process_broker(scaleout: Backend) -> None:
    env = {**os.environ, **scaleout.env, "GHETL_BROKER_URL": "memory://"}
    done = run_worker_all(env)
    assert done.returncode == 1
    assert "GHETL_BROKER_URL=amqp://" in done.stderr and "Traceback" not in done.stderr


def test_worker_with_an_unreachable_broker_says_so_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "GHETL_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}",
           "GHETL_BROKER_URL": "amqp://guest:s3cretpass@127.0.0.1:1/%2F"}
    done = run_worker_all(env)
    assert done.returncode == 1
    assert done.stderr.startswith("ghetl: error: cannot reach RabbitMQ at amqp://guest:***@127.0.0.1:1/")
    assert "s3cretpass" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def run_worker_all(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ghetl", "worker", "all"], env=env, capture_output=True, text=True,
                          timeout=60)


def test_worker_on_a_database_without_schema_exits_with_one_line(
    scaleout: Backend, database_without_schema: str
) -> None:
    """Started anyway, it would take every message and fail it."""
    env = {**os.environ, **scaleout.env, "GHETL_DATABASE_URL": database_without_schema}
    done = run_worker_all(env)
    assert done.returncode == 1
    assert done.stderr.startswith("ghetl: error: no ghetl schema at ") and done.stderr.endswith("run: ghetl init\n")
    assert len(done.stderr.splitlines()) == 1


def test_worker_on_an_unreachable_database_exits_with_one_line(scaleout: Backend) -> None:
    env = {**os.environ, **scaleout.env, "GHETL_DATABASE_URL": "postgresql+psycopg2://postgres:s3cretpass@127.0.0.1:1/x"}
    done = run_worker_all(env)
    assert done.returncode == 1
    assert done.stderr.startswith("ghetl: error: database unavailable") and "GHETL_DATABASE_URL" in done.stderr
    assert "s3cretpass" not in done.stderr and len(done.stderr.splitlines()) == 1
