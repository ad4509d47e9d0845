"""Shared fixtures: both back ends, a fresh GitHub sandbox, a tenant wired to it.

Every test that takes `backend` runs twice: on the embedded default (a SQLite file in the
test's tmp dir and a fresh in-process broker) and on the scale-out servers (a PostgreSQL
database and RabbitMQ queues of its own, created for the test and dropped after it). When
CI=true an unreachable server fails the test instead of skipping it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from ghetl import tenants
from ghetl.queue.broker import Broker, MemoryBroker
from ghetl.sandbox import Sandbox
from ghetl.store import db, migrate

from .support import delete_queues, scratch_database, wait_until

PG_ADMIN_URL = os.environ.get("GHETL_TEST_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
AMQP_URL = os.environ.get("GHETL_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
TOKEN = "ghp_sandboxTestToken000000000000000000001"
FAST_RETRIES = {"GHETL_RETRY_DELAY": "0.05", "GHETL_MAX_ATTEMPTS": "3"}


def _unavailable(what: str, exc: Exception) -> None:
    message = f"{what} unreachable: {exc}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + " (CI=true: the scale-out tests must run)")
    pytest.skip(message)


@dataclass
class Backend:
    """One deployment for one test: its URLs, engine and broker."""

    name: str
    database_url: str
    broker_url: str
    engine: sa.Engine
    broker: Broker
    env: dict[str, str] = field(default_factory=dict)

    def sync(self, tenant: str, **kwargs: Any) -> Any:
        """Run a sync with this test's engine and broker, consumers in this process."""
        from ghetl.pipeline.sync import sync

        kwargs.setdefault("run_workers", True)
        kwargs.setdefault("timeout", 120)
        return sync(tenant, engine=self.engine, broker=self.broker, **kwargs)

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(sa.text(sql), params).scalar()

    def rows(self, sql: str, **params: Any) -> list[Any]:
        with self.engine.connect() as conn:
            return conn.execute(sa.text(sql), params).all()


def _embedded(tmp_path: Any) -> Iterator[Backend]:
    url = f"sqlite:///{tmp_path / 'ghetl.store.db'}"
    engine = db.engine(url)
    migrate.init(engine)
    yield Backend("embedded", url, "memory://", engine, MemoryBroker(), {"GHETL_DATABASE_URL": url})
    engine.dispose()
    db._engines.pop(url, None)


def _scaleout() -> Iterator[Backend]:
    with contextlib.ExitStack() as cleanup:
        try:
            url = cleanup.enter_context(scratch_database(PG_ADMIN_URL, "ghetl_test"))
        except sa.exc.OperationalError as exc:
            _unavailable("PostgreSQL", exc)
        prefix = f"t{uuid.uuid4().hex[:10]}"
        env = {"GHETL_DATABASE_URL": url, "GHETL_BROKER_URL": AMQP_URL, "GHETL_QUEUE_PREFIX": prefix}
        previous = os.environ.get("GHETL_QUEUE_PREFIX")
        os.environ["GHETL_QUEUE_PREFIX"] = prefix
        engine = db.engine(url)
        migrate.init(engine)
        from ghetl.queue.rabbitmq import RabbitBroker

        try:
            broker = RabbitBroker(AMQP_URL)
            broker.declare()
        except Exception as exc:  # pika raises several unrelated types for a refused connection
            engine.dispose()
            _unavailable("RabbitMQ", exc)
        try:
            yield Backend("scaleout", url, AMQP_URL, engine, broker, env)
        finally:
            delete_queues(broker)
            broker.close()
            engine.dispose()
            db._engines.pop(url, None)
            if previous is None:
                os.environ.pop("GHETL_QUEUE_PREFIX", None)
            else:
                os.environ["GHETL_QUEUE_PREFIX"] = previous


@pytest.fixture(params=["embedded", "scaleout"])
def backend(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Backend]:
    if request.param == "embedded":
        yield from _embedded(tmp_path)
    else:
        yield from _scaleout()


@pytest.fixture
def scaleout() -> Iterator[Backend]:
    """Only the PostgreSQL + RabbitMQ back end, for tests about it."""
    yield from _scaleout()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_without_schema(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    """The URL of a database that answers but was never given a schema (`ghetl init`)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'never-initialised.db'}"
        return
    with contextlib.ExitStack() as cleanup:
        try:
            url = cleanup.enter_context(scratch_database(PG_ADMIN_URL, "ghetl_test"))
        except sa.exc.OperationalError as exc:
            _unavailable("PostgreSQL", exc)
        yield url


@pytest.fixture
def embedded(tmp_path: Any) -> Iterator[Backend]:
    """Only the embedded default, for tests about things the back end cannot change."""
    yield from _embedded(tmp_path)


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    """A GitHub sandbox with one organisation of 500 generated repositories."""
    with Sandbox(orgs={"acme": 500}, users={"octocat": 12}, seed=11) as sb:
        yield sb


@pytest.fixture
def make_sandbox() -> Iterator[Any]:
    """A factory for sandboxes with other sizes or limits; all are stopped after the test."""
    started: list[Sandbox] = []

    def make(**kwargs: Any) -> Sandbox:
        sb = Sandbox(**kwargs).start()
        started.append(sb)
        return sb

    yield make
    for sb in started:
        sb.stop()


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    return TOKEN


def add_tenant(backend: Backend, sandbox: Sandbox, *, name: str = "acme-corp", owner: str = "acme",
               settings: Any = None, token_env: str = "GITHUB_TOKEN") -> str:
    """A tenant with one integration pointing at the sandbox; returns the tenant's name.

    Repositories only, unless `settings` asks for pull requests: they cost seconds per sync, and
    the tests of pull requests turn them on.
    """
    if settings is None or isinstance(settings, dict):
        settings = {"pull_requests": False, **(settings or {})}
    with backend.engine.begin() as conn:
        tenants.add_tenant(conn, name)
        tenants.add_integration(conn, name, owner, api_url=sandbox.url, token_env=token_env,
                                settings=settings)
    return name


@pytest.fixture
def tenant(backend: Backend, sandbox: Sandbox, token: str) -> str:
    return add_tenant(backend, sandbox)


@pytest.fixture
def cli(tmp_path):
    """Run `ghetl` as a separate process on a SQLite file of the test's and memory://.

    `integration add` without `--settings` adds a repositories-only integration, as `add_tenant`
    does, unless the test passes `pull_requests=True` to keep the default (pull requests on).
    """
    env = {**os.environ, "GHETL_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}", "GHETL_BROKER_URL": "memory://",
           "GITHUB_TOKEN": TOKEN}

    def run(*args, pull_requests=False, **extra_env):
        if args[:2] == ("integration", "add") and "--settings" not in args and not pull_requests:
            args = (*args, "--settings", '{"pull_requests": false}')
        return subprocess.run([sys.executable, "-m", "ghetl", *args], env={**env, **extra_env},
                              capture_output=True, text=True, timeout=120)

    return run


def one_line_error(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("ghetl: error:")]
    assert result.returncode != 0, result.stderr
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


class Workers:
    """`ghetl worker` processes of one test, with their logs; all stopped at the end."""

    def __init__(self, backend: Backend, logs: Path, **env: str) -> None:
        self.backend = backend
        self.logs = logs
        self.env = {**os.environ, **backend.env, "GITHUB_TOKEN": TOKEN, **env}
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self, stage: str, count: int = 1, *, concurrency: int = 1, wait: bool = True
    ) -> list[subprocess.Popen[bytes]]:
        stages = ("transform", "embedding") if stage == "all" else (stage,)
        before = {s: self.backend.broker.consumer_count(s) for s in stages}  # type: ignore[attr-defined]
        started = []
        for _ in range(count):
            with open(self.logs / f"worker-{len(self.procs)}.log", "wb") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "ghetl", "worker", stage, "--concurrency", str(concurrency)],
                    env=self.env, stdout=subprocess.DEVNULL, stderr=log,
                )
            self.procs.append(proc)
            started.append(proc)
        if wait:
            expected = {s: before[s] + count * concurrency for s in stages}
            assert wait_until(
                lambda: all(self.backend.broker.consumer_count(s) >= n for s, n in expected.items()),  # type: ignore[attr-defined]
                timeout=60, interval=0.1,
            ), f"workers did not attach to their queues: {self.log_text()}"
        return started

    def stop(self, timeout: float = 30) -> list[int]:
        """SIGTERM every live worker; return their exit codes."""
        live = [p for p in self.procs if p.poll() is None]
        for proc in live:
            proc.send_signal(signal.SIGTERM)
        return [proc.wait(timeout) for proc in live]

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.logs.glob("worker-*.log")))


@pytest.fixture
def workers(scaleout: Backend, tmp_path: Path) -> Iterator[Workers]:
    """`ghetl worker` processes on the scale-out back end, retrying fast; killed after the test."""
    pool = Workers(scaleout, tmp_path, **FAST_RETRIES)
    try:
        yield pool
    finally:
        pool.kill()
