"""What the status-stream tests share: a real WebSocket client, a tenant with its key, free ports."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from websockets.sync.client import ClientConnection, connect

from ghetl import tenants

from .conftest import Backend

Message = dict[str, Any]
STAGES = ("extraction", "transform", "embedding")
STEP = "github_repositories"


def stream_key(backend: Backend, tenant: str) -> str:
    """A fresh status-stream key for the tenant (the one `tenant add` printed is not kept)."""
    with backend.engine.begin() as conn:
        return tenants.rotate_key(conn, tenant)


def tenant_id(backend: Backend, tenant: str) -> int:
    with backend.engine.connect() as conn:
        return tenants.get_tenant(conn, tenant)["id"]


def stream_url(base: str, tenant: str | int, *, job: int | None = None, key: str | None = None) -> str:
    query: dict[str, Any] = {"tenant": tenant}
    if job is not None:
        query["job"] = job
    if key is not None:
        query["key"] = key
    return f"{base}/?{urlencode(query)}"


class Client:
    """A status-stream client that keeps every message it reads, in order."""

    def __init__(
        self, base: str, tenant: str | int, key: str | None, *, job: int | None = None, **options: Any
    ) -> None:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._stack = ExitStack()
        self.ws: ClientConnection = self._stack.enter_context(
            connect(stream_url(base, tenant, job=job), additional_headers=headers, **options))
        self.messages: list[Message] = []

    def until(self, done: Callable[[list[Message]], bool], timeout: float = 60) -> list[Message]:
        """Read until `done(messages)` holds; fail with what was seen when it does not in time."""
        deadline = time.monotonic() + timeout
        while not done(self.messages):
            remaining = deadline - time.monotonic()
            try:
                self.messages.append(json.loads(self.ws.recv(timeout=max(remaining, 0.01))))
            except TimeoutError:
                kinds = [(m["type"], m.get("stage"), m.get("status") or m.get("overall")) for m in self.messages]
                raise AssertionError(
                    f"the stream did not deliver what was awaited in {timeout} s; got {kinds}"
                ) from None
        return self.messages

    def until_run_ends(self, run_id: str, timeout: float = 60) -> list[Message]:
        return self.until(lambda ms: any(ended(m, run_id) for m in ms), timeout)

    def barrier(self) -> list[Message]:
        """Ask for a snapshot and read up to it: everything queued for us before it has arrived."""
        count = sum(m["type"] == "snapshot" for m in self.messages)
        self.ws.send(json.dumps({"type": "snapshot"}))
        return self.until(lambda ms: sum(m["type"] == "snapshot" for m in ms) > count)

    def close(self) -> None:
        self._stack.close()


def ended(message: Message, run_id: str) -> bool:
    return message["type"] == "job" and message["run_id"] == run_id and message["overall"] in ("FINISHED", "FAILED")


def assert_ordered_run(messages: list[Message], run_id: str, total: int, step: str = "github_repositories") -> None:
    """Running before finished for every stage of `step`, every stage finished at the end, counts complete."""
    events = [m for m in messages if m["type"] != "snapshot" and m["run_id"] == run_id
              and (m["type"] == "job" or m.get("step") == step)]
    assert [m["overall"] for m in events if m["type"] == "job"] == ["RUNNING", "FINISHED"]
    assert events[0]["type"] == "job" and events[-1]["type"] == "job", "the run starts and ends with a job event"
    for stage in STAGES:
        statuses = [m["status"] for m in events if m["type"] == "stage" and m["stage"] == stage]
        assert statuses, f"no event for {stage}"
        assert statuses[0] == "running" and statuses[-1] == "finished", (stage, statuses)
        assert statuses.count("finished") == 1 and "failed" not in statuses, (stage, statuses)
        finished = next(m for m in events if m["type"] == "stage" and m["stage"] == stage and m["status"] == "finished")
        assert (finished["processed"], finished["total"]) == (total, total), (stage, finished)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_cli_server(env: dict[str, str], port: int, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    """`ghetl status-server` in its own process; returns once it accepts connections."""
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ghetl", "status-server", "--port", str(port), *extra],
            env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=err,
        )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"ghetl status-server did not start: {log.read_text(errors='replace')}") from None
            time.sleep(0.1)
