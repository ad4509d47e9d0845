"""Faults on the scale-out deployment: a worker killed, RabbitMQ restarted, poison messages,
a handler that keeps failing. Nothing is lost, nothing is stored twice, every run ends.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import sqlalchemy as sa

from ghetl.embeddings import HashingEmbedder
from ghetl.pipeline.workers import Pipeline

from .conftest import PG_ADMIN_URL, TOKEN, Backend, Workers, add_tenant
from .support import wait_until
from .test_scaleout import rabbitmqctl, stored_once, sync_remote

FAILED_ITEMS = "SELECT external_id, failed_stage, error_message FROM raw_extraction_data WHERE status = 'failed'"


def assert_clean_finish(backend: Backend, result: Any, repos: int) -> None:
    """FINISHED, every repository stored once, each item counted once in each stage."""
    assert result.overall == "FINISHED", result.error
    stored_once(backend, repos)
    counts = result.counts["github_repositories"]
    seen = (counts["extracted"], counts["transformed"], counts["embedded"], counts["failed"])
    assert seen == (repos, repos, repos, 0)
    assert backend.scalar("SELECT count(*) FROM etl_job_runs WHERE overall = 'FINISHED'") == 1


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_a_transform_worker_stopped_mid_run_is_replaced_and_nothing_is_lost(
    scaleout: Backend, workers: Workers, make_sandbox: Any, token: str, sig: signal.Signals
) -> None:
    """Stopped while pages are still coming: kill -9 loses its unacked messages to redelivery;
    SIGTERM lets it finish what it holds and exit 0. Either way a new worker ends the run."""
    sandbox = make_sandbox(orgs={"acme": 500}, seed=21)
    tenant = add_tenant(scaleout, sandbox)
    first = workers.start("transform")[0]
    workers.start("embedding")
    codes: list[int] = []

    def stop_and_replace(_sb: Any) -> None:
        first.send_signal(sig)
        codes.append(first.wait(30))
        workers.start("transform", wait=False)

    sandbox.inject("mutate", path=r"page=4\b", action=stop_and_replace)
    result = sync_remote(scaleout, tenant, full=True)
    assert codes == [-9 if sig == signal.SIGKILL else 0]
    assert_clean_finish(scaleout, result, 500)
    if sig == signal.SIGTERM:
        assert "SIGTERM received" in workers.log_text()


def test_rabbitmq_restart_mid_run_loses_nothing(
    scaleout: Backend, workers: Workers, make_sandbox: Any, token: str
) -> None:
    """stop_app while pages are being published and handled; start_app a moment later."""
    sandbox = make_sandbox(orgs={"acme": 500}, seed=22)
    tenant = add_tenant(scaleout, sandbox)
    workers.start("all", 2)
    restarted = threading.Event()

    def start_again() -> None:
        time.sleep(1.0)
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup")
        restarted.set()

    restarter = threading.Thread(target=start_again)

    def stop_broker(_sb: Any) -> None:
        rabbitmqctl("stop_app")
        restarter.start()

    sandbox.inject("mutate", path=r"page=3\b", action=stop_broker)
    try:
        result = sync_remote(scaleout, tenant, full=True)
    finally:
        if restarter.ident:
            restarter.join(120)
        if not restarted.is_set():
            rabbitmqctl("start_app")  # never leave the shared broker stopped
    assert restarted.is_set()
    assert_clean_finish(scaleout, result, 500)
    assert "reconnect" in workers.log_text()
    assert workers.stop() == [0, 0]


def test_poison_messages_go_to_the_dead_letter_queue_and_the_run_finishes(
    scaleout: Backend, workers: Workers, sandbox: Any, token: str
) -> None:
    tenant = add_tenant(scaleout, sandbox)
    broker = scaleout.broker
    poison = {
        b"this is not json {": "not valid JSON",
        json.dumps({"tenant_id": 1, "job_id": 1}).encode(): "lacks integration_id, step",
        json.dumps({"tenant_id": 1, "integration_id": 1, "job_id": 1, "step": "github_repositories",
                    "items": [{"raw_data_id": "seven"}]}).encode(): "raw_data_id must be an integer",
    }
    for body in poison:
        broker.publish_raw("transform", body)  # type: ignore[attr-defined]
    workers.start("all")
    result = sync_remote(scaleout, tenant, full=True)
    assert_clean_finish(scaleout, result, 500)
    assert wait_until(lambda: len(broker.dead_letters) == len(poison), timeout=10)  # type: ignore[attr-defined]
    letters = {letter.body: letter for letter in broker.dead_letters}  # type: ignore[attr-defined]
    assert set(letters) == set(poison)
    for body, reason in poison.items():
        assert reason in letters[body].reason
        assert (letters[body].stage, letters[body].attempts) == ("transform", 1)
    assert workers.log_text().count("can never be processed") == len(poison)


class RefusesOne:
    """An embedder that gives one repository (its text's first line) a zero vector, every time it is asked."""

    def __init__(self, victim: str) -> None:
        self.inner = HashingEmbedder(16)
        self.model, self.dimension = "refuses-one-16", 16
        self.victim = victim
        self.victim_calls: list[float] = []

    def embed(self, texts: list[str]) -> np.ndarray:
        vectors = self.inner.embed(texts)
        for n, text in enumerate(texts):
            if text.split("\n")[0] == self.victim:
                self.victim_calls.append(time.monotonic())
                vectors[n] = 0.0
        return vectors


def test_an_item_that_keeps_failing_is_retried_then_dead_lettered_and_the_run_finishes(
    scaleout: Backend, sandbox: Any, token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GHETL_MAX_ATTEMPTS", "3")
    monkeypatch.setenv("GHETL_RETRY_DELAY", "0.2")
    tenant = add_tenant(scaleout, sandbox)
    page = httpx.get(f"{sandbox.url}/orgs/acme/repos", params={"per_page": 1, "page": 7},
                     headers={"Authorization": f"token {TOKEN}"}).json()
    victim_id, victim_name = str(page[0]["id"]), page[0]["full_name"]
    embedder = RefusesOne(victim_name.replace("/", " / "))
    stop = threading.Event()
    consumers = threading.Thread(
        target=scaleout.broker.consume,
        args=(["transform", "embedding"], Pipeline(scaleout.engine, scaleout.broker, embedder).deliver),
        kwargs={"concurrency": 1, "stop": stop},
    )
    consumers.start()
    try:
        result = sync_remote(scaleout, tenant, full=True)
        assert wait_until(lambda: len(scaleout.broker.dead_letters) == 1, timeout=10)  # type: ignore[attr-defined]
    finally:
        stop.set()
        consumers.join(30)

    assert result.overall == "FINISHED"
    failed = scaleout.rows(FAILED_ITEMS)
    assert [(f.external_id, f.failed_stage) for f in failed] == [(victim_id, "embedding")]
    assert victim_id in failed[0].error_message
    assert scaleout.scalar("SELECT count(*) FROM raw_extraction_data WHERE status = 'embedded'") == 499
    assert scaleout.scalar("SELECT count(*) FROM embeddings WHERE external_id = :v", v=victim_id) == 0
    letter = scaleout.broker.dead_letters[0]  # type: ignore[attr-defined]
    assert (letter.stage, letter.attempts) == ("embedding", 3)
    assert victim_id in letter.reason
    assert len(embedder.victim_calls) >= 3
    assert embedder.victim_calls[-1] - embedder.victim_calls[0] >= 0.2 + 0.4, "retries did not wait their delays"


CRASHING_WORKER = """
import os, sys
from ghetl.pipeline import workers

handle = workers.Pipeline.handle

def handle_or_die(self, stage, message):
    if any(str(i.get("external_id")) == os.environ["CRASH_ON"] for i in message["items"]):
        os._exit(3)
    return handle(self, stage, message)

workers.Pipeline.handle = handle_or_die
from ghetl.cli import main
sys.exit(main(["worker", "transform"]))
"""


def test_an_item_that_kills_its_worker_fails_alone_and_the_run_ends(
    scaleout: Backend, workers: Workers, make_sandbox: Any, token: str, tmp_path: Any
) -> None:
    """A redelivery counts as a failed attempt: the batch is split into one message per item,
    the innocent items go through, and the killer is dead-lettered after the last attempt."""
    import subprocess
    import sys

    sandbox = make_sandbox(orgs={"acme": 300}, seed=23)
    killer = str(sandbox.repos("acme")[42]["id"])
    tenant = add_tenant(scaleout, sandbox)
    workers.start("embedding")
    env = {**workers.env, "CRASH_ON": killer}
    stop = threading.Event()
    crashes: list[int] = []

    def keep_one_transform_worker() -> None:
        while not stop.is_set():
            proc = subprocess.Popen([sys.executable, "-c", CRASHING_WORKER], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while proc.poll() is None and not stop.is_set():
                time.sleep(0.05)
            if proc.poll() is None:
                proc.terminate()
                proc.wait(30)
            else:
                crashes.append(proc.returncode)

    supervisor = threading.Thread(target=keep_one_transform_worker)
    supervisor.start()
    try:
        result = sync_remote(scaleout, tenant, full=True, timeout=120)
    finally:
        stop.set()
        supervisor.join()

    assert result.overall == "FINISHED", result.error
    assert crashes and set(crashes) == {3}
    counts = result.counts["github_repositories"]
    assert (counts["extracted"], counts["transformed"], counts["embedded"], counts["failed"]) == (300, 299, 299, 1)
    failed = scaleout.rows(FAILED_ITEMS)
    assert [(f[0], f[1]) for f in failed] == [(killer, "transform")]
    assert "stopped before it finished" in failed[0][2]
    letters = scaleout.broker.dead_letters  # type: ignore[attr-defined]
    assert len(letters) == 1 and "stopped before it finished" in letters[0].reason
    assert json.loads(letters[0].body)["items"][0]["external_id"] == killer


def test_a_delivery_longer_than_the_heartbeat_keeps_its_connection(scaleout: Backend) -> None:
    """A slow batch (minutes of re-embedding) must not look like a dead worker to RabbitMQ."""
    from ghetl.queue.broker import Outcome
    from ghetl.queue.rabbitmq import RabbitBroker

    broker = RabbitBroker(scaleout.broker_url + "?heartbeat=1")
    broker.publish_raw("transform", b'{"slow": true}')
    calls: list[int] = []
    stop = threading.Event()

    def slow(stage: str, body: bytes, attempt: int) -> Outcome:
        calls.append(attempt)
        time.sleep(4)
        stop.set()
        return Outcome("ack")

    consumer = threading.Thread(target=broker.consume, args=(["transform"], slow),
                                kwargs={"concurrency": 1, "stop": stop})
    consumer.start()
    consumer.join(30)
    time.sleep(1.5)
    try:
        assert calls == [1]
        assert broker.pending("transform") == 0
        assert broker.dead_letters == []
    finally:
        broker.close()


@contextlib.contextmanager
def worker_role(database_url: str) -> Iterator[tuple[str, Callable[[bool], None]]]:
    """A login role of its own for the workers, whose access the test can cut and give back:
    yields the workers' database URL and `allow(flag)`; cutting also drops its connections."""
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    url = sa.engine.make_url(database_url)
    role = f"{url.database}_worker"

    def allow(flag: bool) -> None:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'ALTER ROLE "{role}" {"LOGIN" if flag else "NOLOGIN"}')
            if not flag:
                conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = :role"),
                             {"role": role})

    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE ROLE "{role}" LOGIN SUPERUSER')
    try:
        yield url.set(username=role).render_as_string(hide_password=False), allow
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = :role"),
                         {"role": role})
            conn.exec_driver_sql(f'DROP ROLE "{role}"')
        admin.dispose()


def test_a_database_outage_puts_messages_back_without_using_up_their_attempts(
    scaleout: Backend, workers: Workers, make_sandbox: Any, token: str
) -> None:
    """The workers' database refuses them (and drops their connections) for longer than all the
    retries of a message take (3 attempts, 0.05 s apart): no message is dead-lettered, the outage
    is one warning line, and the run finishes once the database is back."""
    sandbox = make_sandbox(orgs={"acme": 200}, seed=24)
    tenant = add_tenant(scaleout, sandbox)
    with worker_role(scaleout.database_url) as (url, allow):
        workers.env["GHETL_DATABASE_URL"] = url
        workers.start("all")
        allow(False)
        results: list[Any] = []
        syncing = threading.Thread(target=lambda: results.append(sync_remote(scaleout, tenant, full=True, timeout=120)))
        syncing.start()
        try:
            assert wait_until(lambda: "the database is unavailable" in workers.log_text(), timeout=60), (
                workers.log_text())
            time.sleep(1.5)
        finally:
            allow(True)
            syncing.join(150)
        assert workers.stop() == [0]

    assert_clean_finish(scaleout, results[0], 200)
    assert scaleout.broker.dead_letters == []  # type: ignore[attr-defined]
    log = workers.log_text()
    assert log.count("the database is unavailable") == 1 and "answers again" in log
    assert "Traceback" not in log and "will retry" not in log
    assert log.count("dead-lettered") == 1 and " 0 dead-lettered" in log  # only in the worker's closing tally
