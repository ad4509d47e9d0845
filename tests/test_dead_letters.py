"""Dead letters (`ghetl dead-letters`): what workers gave up on is kept in the database on both
back ends, listed with its reason and attempts, replayed to its stage until its items are
done, or dropped; the broker's own copy follows the table."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from ghetl import embeddings, tenants
from ghetl.pipeline import deadletters, jobs, workers
from ghetl.pipeline.sync import sync
from ghetl.pipeline.workers import Pipeline
from ghetl.queue.broker import MemoryBroker
from ghetl.store import db

from .conftest import TOKEN, Backend, add_tenant, one_line_error
from .support import wait_until
from .test_faults import RefusesOne


@pytest.fixture
def give_up_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A failing message is dead-lettered on its first attempt."""
    monkeypatch.setenv("GHETL_MAX_ATTEMPTS", "1")


def refused_upsert(_conn: Any, _step: Any, rows: Any) -> dict[int, str]:
    """A transform whose rows the database never takes (not a statement error: the whole message fails);
    a message with no rows (a step with nothing to do) writes nothing, so nothing refuses it."""
    if not rows:
        return {}
    raise RuntimeError("disk quota exceeded")


def letters(backend: Backend, tenant_id: int | None = None) -> list[dict[str, Any]]:
    with backend.engine.connect() as conn:
        return deadletters.list_letters(conn, tenant_id)


@contextmanager
def consumers_of(backend: Backend) -> Iterator[None]:
    """On RabbitMQ, workers consume the replayed messages (on memory://, `run_here` does)."""
    stop = threading.Event()
    thread = threading.Thread(target=backend.broker.consume,
                              args=(["transform", "embedding"], Pipeline(backend.engine, backend.broker).deliver),
                              kwargs={"concurrency": 1, "stop": stop})
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(30)


def test_an_embedding_dead_letter_is_kept_listed_and_replayed_until_its_item_is_embedded(
    backend: Backend, make_sandbox: Any, token: str, monkeypatch: pytest.MonkeyPatch, give_up_at_once: None
) -> None:
    sb = make_sandbox(orgs={"acme": 30}, seed=8)
    tenant = add_tenant(backend, sb)
    victim = httpx.get(f"{sb.url}/orgs/acme/repos", params={"per_page": 1, "page": 4},
                       headers={"Authorization": f"token {TOKEN}"}).json()[0]
    victim_id = str(victim["id"])
    refusing = RefusesOne(victim["full_name"].replace("/", " / "))
    with monkeypatch.context() as patched:
        patched.setattr(embeddings, "get_embedder", lambda: refusing)
        result = backend.sync(tenant)
    assert result.overall == "FINISHED" and result.counts["github_repositories"]["failed"] == 1
    raw_id = backend.scalar("SELECT id FROM raw_extraction_data WHERE external_id = :v", v=victim_id)

    [letter] = letters(backend)

    assert (letter["tenant"], letter["stage"], letter["step"], letter["run_id"], letter["attempts"]) == (
        tenant, "embedding", "github_repositories", result.run_id, 1)
    assert victim_id in letter["reason"] and letter["readable"]
    assert raw_id in letter["raw_data_ids"]
    assert [d.letter for d in backend.broker.dead_letters] == [letter["id"]]  # type: ignore[attr-defined]

    replayed = subprocess.run([sys.executable, "-m", "ghetl", "dead-letters", "replay", "--tenant", tenant, "--json"],
                              env={**os.environ, "GHETL_BROKER_URL": "memory://", **backend.env},
                              capture_output=True, text=True, timeout=120)
    if backend.name == "scaleout":  # the command only published: workers do the rest
        assert f"no workers are consuming {backend.broker.queue('embedding')}" in replayed.stderr
        with consumers_of(backend):
            assert wait_until(lambda: backend.scalar(
                "SELECT status FROM raw_extraction_data WHERE id = :r", r=raw_id) == "embedded", timeout=30)

    assert replayed.returncode == 0, replayed.stderr
    summary = json.loads(replayed.stdout)
    assert ([x["id"] for x in summary["replayed"]], summary["reopened_items"], summary["unreadable"]) == (
        [letter["id"]], [raw_id], [])
    assert backend.scalar("SELECT status FROM raw_extraction_data WHERE id = :r", r=raw_id) == "embedded"
    assert backend.scalar("SELECT count(*) FROM embeddings WHERE external_id = :v", v=victim_id) == 1
    assert backend.scalar("SELECT count(*) FROM raw_extraction_data WHERE status = 'embedded'") == 30
    with backend.engine.connect() as conn:
        counts = jobs.item_counts(conn, result.run_id)["github_repositories"]
        assert jobs.job_by_id(conn, result.job_id)["status"]["overall"] == "FINISHED"
    assert (counts["embedded"], counts["failed"], counts["transformed"]) == (30, 0, 0)
    assert letters(backend) == []
    if backend.name == "scaleout":  # RabbitMQ's copy follows the table (memory:// copies live in their process)
        assert backend.broker.dead_letters == []  # type: ignore[attr-defined]


def test_an_unreadable_dead_letter_belongs_to_no_tenant_is_not_replayed_and_can_be_dropped(
    backend: Backend, sandbox: Any, token: str
) -> None:
    tenant = add_tenant(backend, sandbox)
    backend.broker.publish_raw("transform", b"this is not json {")  # type: ignore[attr-defined]
    assert backend.sync(tenant).overall == "FINISHED"
    with backend.engine.connect() as conn:
        tenant_id = tenants.get_tenant(conn, tenant)["id"]

    [letter] = letters(backend)

    seen = (letter["tenant_id"], letter["stage"], letter["attempts"], letter["readable"])
    assert seen == (None, "transform", 1, False)
    assert letter["reason"].startswith("message is not valid JSON")
    assert letters(backend, tenant_id) == []
    done = deadletters.replay(backend.engine, backend.broker, [letter])
    assert (done.letters, done.reopened, [u["id"] for u in done.unreadable]) == ([], [], [letter["id"]])
    assert [x["id"] for x in letters(backend)] == [letter["id"]]
    assert deadletters.drop(backend.engine, backend.broker, [letter]) == 1
    assert letters(backend) == []
    assert wait_until(lambda: backend.broker.dead_letters == [], timeout=10)  # type: ignore[attr-defined]


def test_replaying_a_letter_whose_item_a_later_run_fetched_again_leaves_that_run_alone(
    embedded: Backend, make_sandbox: Any, token: str, monkeypatch: pytest.MonkeyPatch, give_up_at_once: None
) -> None:
    sb = make_sandbox(orgs={"acme": 5}, seed=9)
    tenant = add_tenant(embedded, sb)
    with monkeypatch.context() as patched:
        patched.setattr(workers, "_upsert_each_alone_on_failure", refused_upsert)
        first = embedded.sync(tenant)
    second = embedded.sync(tenant)  # retries the items the previous run failed
    [letter] = letters(embedded)

    done = deadletters.replay(embedded.engine, embedded.broker, [letter])
    deadletters.run_here(embedded.engine, embedded.broker, done.reopened, timeout=60)

    assert first.counts["github_repositories"]["failed"] == 5 and second.overall == "FINISHED"
    assert second.counts["github_repositories"]["embedded"] == 5
    assert done.reopened == [] and len(done.letters) == 1
    assert embedded.scalar("SELECT count(*) FROM raw_extraction_data WHERE run_id = :r AND status = 'failed'",
                           r=first.run_id) == 5
    assert embedded.scalar("SELECT count(*) FROM repositories") == 5
    assert letters(embedded) == []


def test_dead_letters_commands_list_replay_and_drop(cli, make_sandbox, tmp_path, monkeypatch, give_up_at_once):
    """A transform message that failed is replayed by the command itself on memory://: its
    items are transformed and embedded; drop needs to be told which letters."""
    sb = make_sandbox(orgs={"acme": 5}, seed=10)
    cli("init")
    cli("tenant", "add", "acme-corp")
    cli("integration", "add", "--tenant", "acme-corp", "--owner", "acme", "--api-url", sb.url)
    engine = db.engine(f"sqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    with monkeypatch.context() as patched:
        patched.setattr(workers, "_upsert_each_alone_on_failure", refused_upsert)
        result = sync("acme-corp", engine=engine, broker=MemoryBroker(), timeout=60)
    engine.dispose()
    assert result.counts["github_repositories"]["failed"] == 5

    listed = cli("dead-letters", "list").stdout.splitlines()
    as_json = json.loads(cli("dead-letters", "list", "--tenant", "acme-corp", "--json").stdout)
    replayed = cli("dead-letters", "replay", "--tenant", "acme-corp")

    [line] = listed
    fields = line.split("\t")
    assert fields[:5] == ["1", "tenant acme-corp", "transform", f"run {result.run_id}", "5 items (raw 1, 2, 3, 4, 5)"]
    assert fields[5] == "1 attempt" and fields[7] == "RuntimeError: disk quota exceeded"
    assert [(x["id"], x["stage"], x["raw_data_ids"], x["attempts"]) for x in as_json] == [
        (1, "transform", [1, 2, 3, 4, 5], 1)]
    assert "body" not in as_json[0]
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout == "replayed 1 dead letter, 5 failed items sent back to their stage (handled here)\n"
    assert cli("dead-letters", "list").stdout == ""
    with sqlite3.connect(tmp_path / "cli.db") as conn:
        assert conn.execute("SELECT status, count(*) FROM raw_extraction_data GROUP BY status").fetchall() == [
            ("embedded", 5)]
        assert conn.execute("SELECT count(*) FROM repositories").fetchall() == [(5,)]
    assert one_line_error(cli("dead-letters", "drop")) == (
        "ghetl: error: say which dead letters to drop: --id ID, --tenant T, or --all")
    assert one_line_error(cli("dead-letters", "replay", "--id", "7")) == (
        "ghetl: error: no dead letter 7; see: ghetl dead-letters list")
    assert cli("dead-letters", "drop", "--all").stdout == "dropped 0 dead letters\n"
