"""Helpers of the tests and benchmarks, kept out of the library: scratch PostgreSQL databases,
waiting for a condition, tearing down a test's RabbitMQ queues."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import sqlalchemy as sa

from ghetl.queue import broker as broker_mod


@contextlib.contextmanager
def scratch_database(admin_url: str, prefix: str) -> Iterator[str]:
    """A new, empty PostgreSQL database for one test or benchmark; yields its URL, drops it after.

    Created through `admin_url` (any database of a role that may CREATE DATABASE). The drop uses
    FORCE, so a worker killed mid-run that still holds a connection does not keep it alive. An
    unreachable server raises sqlalchemy's OperationalError on entry, before anything exists.
    """
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        try:
            yield sa.engine.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.dispose()


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll `predicate` until it is true or `timeout` seconds pass ."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def delete_queues(broker: Any) -> None:
    """Remove every queue and the status exchange of a RabbitBroker's prefix."""
    with broker._channel() as channel:
        for stage in broker_mod.STAGE_QUEUES:
            channel.queue_delete(broker.queue(stage))
            for attempt in range(1, broker_mod.max_attempts() + 1):
                channel.queue_delete(broker.retry_queue(stage, attempt))
        channel.queue_delete(broker.dead_queue)
        channel.exchange_delete(broker.status_exchange)
    broker._declared = False
