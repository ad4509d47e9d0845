"""Runs that converge on GitHub's truth whatever happened to the runs before them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from typing import Any

import pytest

from ghetl import steps, tenants
from ghetl.pipeline import jobs
from ghetl.pipeline.sync import Stalled
from ghetl.pipeline.workers import Pipeline
from ghetl.queue.broker import MemoryBroker

from .conftest import TOKEN, Backend, add_tenant
from .test_scaleout import rabbitmqctl


def exactly_the_sandbox(backend: Backend, sandbox: Any, owner: str = "acme") -> None:
    """The active repositories in the database are the sandbox's own: ids, names, descriptions."""
    stored = {r.external_id: (r.full_name, r.description) for r in backend.rows(
        "SELECT external_id, full_name, description FROM repositories WHERE active")}
    assert stored == {str(r["id"]): (r["full_name"], r.get("description")) for r in sandbox.repos(owner)}


def ghetl(backend: Backend, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **backend.env, "GITHUB_TOKEN": TOKEN}
    return subprocess.run([sys.executable, "-m", "ghetl", *args], env=env, capture_output=True, text=True, timeout=120)


def test_a_killed_sync_is_taken_over_at_once(backend: Backend, make_sandbox: Any, token: str) -> None:
    """kill -9 in the middle of the listing: the owner is gone, so the next sync need not wait
    five minutes for the heartbeat to run out, and `ghetl jobs` says so meanwhile."""
    sandbox = make_sandbox(orgs={"acme": 250}, seed=8)
    tenant = add_tenant(backend, sandbox)
    running: list[subprocess.Popen[str]] = []
    sandbox.inject("mutate", path=r"/(orgs|organizations)/", action=lambda _sb: running[0].kill())
    env = {**os.environ, **backend.env, "GITHUB_TOKEN": TOKEN}
    running.append(subprocess.Popen([sys.executable, "-m", "ghetl", "sync", "--tenant", tenant, "--quiet"], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    running[0].communicate(timeout=60)
    assert running[0].returncode == -9

    listed = ghetl(backend, "jobs")
    assert f"orphaned: its sync process (pid {running[0].pid} on" in listed.stdout
    [job] = json.loads(ghetl(backend, "jobs", "--json").stdout)
    assert job["status"]["overall"] == "RUNNING" and "is gone" in job["orphaned"]

    result = backend.sync(tenant)

    assert result.overall == "FINISHED", result.error
    exactly_the_sandbox(backend, sandbox)
    with backend.engine.connect() as conn:
        old = [r for r in conn.execute(jobs.etl_job_runs.select()).mappings() if r["run_id"] != result.run_id]
    assert [(r["overall"], r["pid"]) for r in old] == [("FAILED", running[0].pid)]
    assert "is gone" in old[0]["error_message"]


def test_a_live_sync_is_not_taken_over(backend: Backend, sandbox: Any, token: str) -> None:
    """This process owns the run and is alive: a second start is refused, as before."""
    tenant = add_tenant(backend, sandbox)
    with backend.engine.begin() as conn:
        job = jobs.get_job(conn, 1, 1)
        jobs.start(conn, job, full=False)
    with backend.engine.begin() as conn, pytest.raises(jobs.AlreadyRunning, match="already running"):
        jobs.start(conn, jobs.get_job(conn, 1, 1), full=False)
    with backend.engine.connect() as conn:
        assert jobs.orphaned(conn, jobs.get_job(conn, 1, 1)) is None
    assert tenant


def test_a_run_without_workers_ends_failed_saying_what_to_start(
    scaleout: Backend, sandbox: Any, token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GHETL_NO_WORKER_TIMEOUT", "1")
    tenant = add_tenant(scaleout, sandbox)

    with pytest.raises(Stalled, match=r"no transform worker for 1 s; start one with: ghetl worker all"):
        scaleout.sync(tenant, run_workers=False)

    with scaleout.engine.connect() as conn:
        [job] = jobs.list_jobs(conn)
    assert job["status"]["overall"] == "FAILED" and "no transform worker for 1 s" in job["error_message"]


def test_a_malformed_message_is_dead_lettered_alone(backend: Backend, sandbox: Any, token: str) -> None:
    """A `step` that is a list used to raise TypeError in every consumer of memory://."""
    tenant = add_tenant(backend, sandbox)
    bad = {"tenant_id": 1, "integration_id": 1, "job_id": 1, "step": ["github_repositories"],
           "items": [{"raw_data_id": 1}]}
    backend.broker.publish_raw("transform", json.dumps(bad).encode())  # type: ignore[attr-defined]

    result = backend.sync(tenant)

    assert result.overall == "FINISHED", result.error
    exactly_the_sandbox(backend, sandbox)
    letters = backend.broker.dead_letters  # type: ignore[attr-defined]
    assert [letter.reason for letter in letters] == ["message field 'step' must be str, got list"]


def lose_queued_messages(backend: Backend) -> None:
    """What a queue purge or a broker rebuilt without its disk does: the queued messages are gone."""
    if backend.name == "embedded":
        backend.broker = MemoryBroker()
        return
    rabbitmqctl("purge_queue", backend.broker.queue("transform"))
    rabbitmqctl("purge_queue", backend.broker.queue("embedding"))


def test_changes_of_a_failed_run_whose_messages_were_lost_reach_the_table(
    backend: Backend, sandbox: Any, token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue cases 2 and 7: run 2 stores 20 changes raw, and with no worker it ends FAILED once
    nothing has moved for GHETL_STALL_TIMEOUT (no --timeout given); its messages are then lost.
    Run 3 gets a 304 for the changed page and must still bring the 20 changes in."""
    tenant = add_tenant(backend, sandbox)
    assert backend.sync(tenant).overall == "FINISHED"
    changed = sandbox.repos("acme")[:20]
    for n, repo in enumerate(changed):
        sandbox.touch(repo["id"], description=f"changed while nobody worked {n}")

    monkeypatch.setenv("GHETL_STALL_TIMEOUT", "2")
    with pytest.raises(Stalled, match="no progress for 2 s: 20 items still waiting for transform"):
        backend.sync(tenant, run_workers=False, timeout=None)
    lose_queued_messages(backend)
    third = backend.sync(tenant)

    assert third.overall == "FINISHED", third.error
    assert third.counts["github_repositories"]["extracted"] == 20
    exactly_the_sandbox(backend, sandbox)
    assert backend.scalar("SELECT count(*) FROM raw_extraction_data WHERE status IN ('pending', 'transformed')") == 0


def test_a_late_message_of_an_earlier_run_does_not_undo_a_newer_row(backend: Backend, sandbox: Any, token: str) -> None:
    """Issue case 5: run 1's message for a repository, delivered again after run 2 stored a newer
    version of it, changes nothing."""
    tenant = add_tenant(backend, sandbox)
    first = backend.sync(tenant)
    repo = sandbox.repos("acme")[3]
    [(old_raw,)] = backend.rows("SELECT id FROM raw_extraction_data WHERE external_id = :x", x=str(repo["id"]))
    sandbox.touch(repo["id"], description="the newer truth")
    assert backend.sync(tenant).overall == "FINISHED"

    late = {"tenant_id": 1, "integration_id": 1, "job_id": 1, "run_id": first.run_id, "step": "github_repositories",
            "items": [{"raw_data_id": old_raw, "external_id": str(repo["id"]), "first_item": False,
                       "last_item": False, "last_job_item": False}]}
    Pipeline(backend.engine, backend.broker).handle("transform", late)

    assert backend.scalar("SELECT description FROM repositories WHERE external_id = :x",
                          x=str(repo["id"])) == "the newer truth"
    exactly_the_sandbox(backend, sandbox)


def picky(monkeypatch: pytest.MonkeyPatch, bad_id: int) -> None:
    """Make the transform refuse one repository's payload, as a payload no worker can store."""
    step = steps.registry()["github_repositories"]

    def to_row(payload: dict[str, Any], ctx: Any) -> dict[str, Any]:
        if payload["id"] == bad_id:
            raise ValueError("payload rejected for the test")
        return step.to_row(payload, ctx)

    monkeypatch.setitem(steps.registry(), "github_repositories", replace(step, to_row=to_row))


def test_an_item_failed_two_runs_ago_is_fetched_again_then_given_up(
    embedded: Backend, sandbox: Any, token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue case 3: an item that failed in run 1 is retried by run 3 although run 2 failed at
    the listing; one that keeps failing is given up after three runs, and says so."""
    backend = embedded
    tenant = add_tenant(backend, sandbox)
    bad = sandbox.repos("acme")[7]
    path = f"/repositories/{bad['id']}"
    with monkeypatch.context() as patched:
        picky(patched, bad["id"])
        assert backend.sync(tenant).counts["github_repositories"]["failed"] == 1
        sandbox.inject("status", path=r"/orgs/acme/repos", status=422, times=1)
        assert backend.sync(tenant).overall == "FAILED"
        for run in range(2):
            sandbox.reset_stats()
            result = backend.sync(tenant)
            assert [r.path for r in sandbox.requests if r.path == path] == [path], f"run {run + 3}"
            assert result.counts["github_repositories"]["failed"] == 1

        sandbox.reset_stats()
        given_up = backend.sync(tenant)
        assert path not in [r.path for r in sandbox.requests]
        assert given_up.overall == "FINISHED" and given_up.stats["given_up"]["github_repositories"]["count"] == 1
        listed = ghetl(backend, "jobs")
        assert "given up: 1 github_repositories items no run tries again" in listed.stdout
        assert "payload rejected for the test" in listed.stdout
        [job] = json.loads(ghetl(backend, "jobs", "--json").stdout)
        assert job["status"]["given_up"]["github_repositories"]["count"] == 1

    sandbox.touch(bad["id"], description="fixed upstream")
    assert backend.sync(tenant).overall == "FINISHED"
    exactly_the_sandbox(backend, sandbox)


def test_repositories_that_stop_matching_the_settings_leave_the_active_set(
    backend: Backend, sandbox: Any, token: str
) -> None:
    """Issue case 4: archived since the last run (incremental), and dropped by changed settings
    (the next run is full by itself)."""
    tenant = add_tenant(backend, sandbox, settings={"include_archived": False})
    assert backend.sync(tenant).overall == "FINISHED"
    archived = next(r for r in sandbox.repos("acme") if not r["archived"])
    sandbox.touch(archived["id"], archived=True)

    second = backend.sync(tenant)

    assert not second.full and second.stats["deactivated"] == 1
    assert backend.scalar("SELECT active FROM repositories WHERE external_id = :x", x=str(archived["id"])) in (0, False)
    kept = {str(r["id"]) for r in sandbox.repos("acme") if not r["archived"]}
    assert active_ids(backend) == kept

    with backend.engine.begin() as conn:
        tenants.update_settings(conn, 1, {"include_archived": False, "include_forks": False, "pull_requests": False})
    third = backend.sync(tenant)

    assert third.full
    assert active_ids(backend) == {str(r["id"]) for r in sandbox.repos("acme") if not r["archived"] and not r["fork"]}
    assert third.stats["deactivated"] == len(kept) - len(active_ids(backend)) > 0


def active_ids(backend: Backend) -> set[str]:
    return {r.external_id for r in backend.rows("SELECT external_id FROM repositories WHERE active")}


def test_a_run_with_gaps_finishes_with_warnings_and_keeps_its_cutoff(
    embedded: Backend, sandbox: Any, token: str
) -> None:
    """Issue case 6: search results GitHub left incomplete are a warning of a FINISHED run,
    in `--json`, and last_sync_date does not move past them."""
    backend = embedded
    tenant = add_tenant(backend, sandbox, settings={"repository_filter": "in:name"})
    assert backend.sync(tenant).overall == "FINISHED"
    before = backend.scalar("SELECT last_sync_date FROM etl_jobs")
    sandbox.inject("incomplete", path="search", times=50)

    cli = ghetl(backend, "sync", "--tenant", tenant, "--json")

    result = json.loads(cli.stdout)
    assert result["overall"] == "FINISHED", cli.stderr
    assert [w.split(":")[0] for w in result["warnings"]] == ["GitHub's search results stayed incomplete on 1 pages"]
    assert backend.scalar("SELECT last_sync_date FROM etl_jobs") == before
    [job] = json.loads(ghetl(backend, "jobs", "--json").stdout)
    assert job["status"]["warnings"] == result["warnings"]


def test_a_message_naming_another_tenants_raw_rows_is_dead_lettered_and_writes_nothing(
    backend: Backend, sandbox: Any, token: str
) -> None:
    """Anyone able to publish on the vhost must not get tenant A's payloads into tenant B's rows."""
    add_tenant(backend, sandbox)
    other = add_tenant(backend, sandbox, name="other-corp", owner="octocat")
    assert backend.sync("acme-corp").overall == "FINISHED"
    victim_rows = backend.scalar("SELECT count(*) FROM repositories WHERE tenant_id = 2")
    [(raw_id, run_id)] = backend.rows("SELECT id, run_id FROM raw_extraction_data WHERE tenant_id = 1 LIMIT 1")
    with backend.engine.connect() as conn:
        job = jobs.get_job(conn, 2, 2)
    forged = {"tenant_id": 2, "integration_id": 2, "job_id": job["id"], "run_id": run_id, "step": "github_repositories",
              "items": [{"raw_data_id": raw_id, "external_id": "1", "first_item": False, "last_item": False,
                         "last_job_item": False}]}

    outcome = Pipeline(backend.engine, backend.broker).deliver("transform", json.dumps(forged).encode(), 1)

    assert outcome.action == "dead" and "not tenant 2's github_repositories items" in outcome.reason
    assert backend.scalar("SELECT count(*) FROM repositories WHERE tenant_id = 2") == victim_rows == 0
    assert backend.scalar("SELECT status FROM raw_extraction_data WHERE id = :i", i=raw_id) == "embedded"
    assert backend.scalar("SELECT count(*) FROM dead_letters") == 1
    assert other
