"""Runs that converge on GitHub's truth whatever happened to the runs before them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from ghetl import jobs
from ghetl.sync import Stalled

from .conftest import TOKEN, Backend, add_tenant
from .test_scaleout import scaleout  # noqa: F401  (the fixture)


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
