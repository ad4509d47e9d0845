"""ghetl.workbench.frames on both back ends: each DataFrame says what the database holds and what GitHub sent."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
import pytest

from ghetl.embeddings import get_embedder
from ghetl.workbench import frames

from .conftest import add_tenant


@dataclass
class TwoRuns:
    """A tenant synced in full, changed on GitHub in four ways, and synced in full again."""

    backend: Any
    sandbox: Any
    tenant: str
    first: Any
    second: Any
    touched: dict[str, Any]
    renamed: dict[str, Any]
    created: dict[str, Any]
    deleted: dict[str, Any]


@pytest.fixture
def two_runs(backend, make_sandbox, token) -> TwoRuns:
    sandbox = make_sandbox(orgs={"acme": 60}, seed=3)
    tenant = add_tenant(backend, sandbox)
    first = backend.sync(tenant)
    names = sorted(r["full_name"] for r in sandbox.repos("acme"))
    deleted = sandbox.repo(names[2])
    touched = sandbox.touch(names[0], description="Card settlement for marketplaces", stargazers_count=77)
    renamed = sandbox.rename(names[1], "renamed-in-between")
    created = sandbox.create("acme", "brand-new-service", description="Created between the runs")
    sandbox.delete(names[2])
    second = backend.sync(tenant, full=True)
    return TwoRuns(backend, sandbox, tenant, first, second, touched, renamed, created, deleted)


def test_repositories_and_raw_payloads_say_what_is_stored_and_what_github_sent(two_runs):
    t = two_runs
    repos = frames.repositories(t.tenant, engine=t.backend.engine)
    everything = frames.repositories(t.tenant, include_inactive=True, engine=t.backend.engine)

    assert set(repos["full_name"]) == {r["full_name"] for r in t.sandbox.repos("acme")}
    assert set(everything["external_id"]) - set(repos["external_id"]) == {str(t.deleted["id"])}
    assert str(repos["pushed_at"].dtype).startswith("datetime64") and str(repos["pushed_at"].dt.tz) == "UTC"
    row = repos.set_index("external_id").loc[str(t.touched["id"])]
    assert (row["description"], row["stargazers_count"]) == ("Card settlement for marketplaces", 77)
    assert "tenant_id" not in repos.columns and "content_hash" not in repos.columns

    raw = frames.raw_payloads(t.tenant, engine=t.backend.engine)

    assert list(raw.columns[:5]) == frames.RAW_META
    assert raw["external_id"].is_unique
    assert len(raw) == 61  # 60 seen in the first run (the deleted one keeps its last payload), one created
    assert {"owner.login", "permissions.admin"} <= set(raw.columns)
    assert (raw["owner.login"] == "acme").all()
    latest = raw.set_index("external_id").loc[str(t.touched["id"])]
    assert latest["description"] == "Card settlement for marketplaces"
    assert latest["run_id"] == t.second.run_id
    assert str(raw["pushed_at"].dt.tz) == "UTC"

    first = frames.raw_payloads(t.tenant, run=t.first.run_id, engine=t.backend.engine)
    second = frames.raw_payloads(t.tenant, run=t.second.run_id, engine=t.backend.engine)

    assert len(first) == t.first.counts["github_repositories"]["extracted"] == 60
    assert len(second) == t.second.counts["github_repositories"]["extracted"] == 60
    assert (first["run_id"] == t.first.run_id).all()
    assert str(t.created["id"]) in set(second["external_id"]) - set(first["external_id"])
    assert first.set_index("external_id").loc[str(t.touched["id"]), "description"] != "Card settlement for marketplaces"


def test_changes_between_runs_name_every_change_and_nothing_else(two_runs):
    t = two_runs
    changes = frames.changes_between_runs(t.tenant, engine=t.backend.engine)

    assert list(changes.columns) == frames.CHANGE_COLUMNS
    assert set(changes["external_id"]) == {str(t.touched["id"]), str(t.renamed["id"]), str(t.created["id"]),
                                           str(t.deleted["id"])}
    kinds = changes.groupby("external_id")["change"].agg(set).to_dict()
    assert kinds == {str(t.touched["id"]): {"changed"}, str(t.renamed["id"]): {"changed"},
                     str(t.created["id"]): {"added"}, str(t.deleted["id"]): {"removed"}}
    touched = changes[changes["external_id"] == str(t.touched["id"])].set_index("field")
    assert set(touched.index) == {"description", "stargazers_count", "repo_updated_at", "pushed_at"}
    assert touched.loc["description", "after"] == "Card settlement for marketplaces"
    assert touched.loc["stargazers_count", "after"] == 77
    renamed = changes[changes["external_id"] == str(t.renamed["id"])].set_index("field")
    assert renamed.loc["name", "after"] == "renamed-in-between"
    assert renamed.loc["full_name", "before"] != "acme/renamed-in-between"

    same = frames.changes_between_runs(t.tenant, t.second.run_id, t.second.run_id, engine=t.backend.engine)
    explicit = frames.changes_between_runs(t.tenant, t.first.run_id, t.second.run_id, engine=t.backend.engine)

    assert same.empty
    pd.testing.assert_frame_equal(explicit, changes)
    with pytest.raises(LookupError, match=r"no run 'nope'.*frames\.runs"):
        frames.changes_between_runs(t.tenant, "nope", engine=t.backend.engine)


def test_jobs_runs_vectors_and_the_sync_summary(two_runs):
    t = two_runs
    jobs = frames.jobs(t.tenant, engine=t.backend.engine)
    runs = frames.runs(t.tenant, engine=t.backend.engine)

    assert len(jobs) == 1
    job = jobs.iloc[0]
    assert (job["tenant"], job["overall"]) == (t.tenant, "FINISHED")
    assert [job[f"github_repositories.{s}"] for s in ("extraction", "transform", "embedding")] == ["finished"] * 3
    assert job["last_sync_date"] == runs.iloc[-1]["started_at"]
    assert list(runs["run_id"]) == [t.first.run_id, t.second.run_id]
    assert list(runs["items"]) == [60, 60]
    assert list(runs["requests"]) == [t.first.requests, t.second.requests]
    assert list(runs["deactivated"]) == [0, 1]
    assert (runs["seconds"] > 0).all()
    assert list(runs["overall"]) == ["FINISHED", "FINISHED"]

    models = frames.embedding_models(t.tenant, engine=t.backend.engine)
    summary = frames.sync_summary(t.second)["value"]
    assert models.to_dict("records") == [{"model": get_embedder().model, "vectors": 61}]
    assert summary["overall"] == "FINISHED"
    assert summary["kind"] == "full"
    assert summary["github_repositories: extracted"] == 60
    assert summary["GitHub requests"] == t.second.requests
    assert summary["rate-limit points"] == t.second.rate_limit_points
    assert summary["seconds"] == t.second.seconds
    assert "error" not in summary


def test_frames_of_tenants_with_few_runs_and_of_an_unknown_one(backend, make_sandbox, token):
    sandbox = make_sandbox(orgs={"acme": 3, "globex": 2})
    add_tenant(backend, sandbox, name="one")
    add_tenant(backend, sandbox, name="two", owner="globex")
    backend.sync("two")

    assert list(frames.jobs(engine=backend.engine)["tenant"]) == ["one", "two"]
    assert list(frames.jobs(engine=backend.engine)["overall"]) == ["READY", "FINISHED"]
    assert frames.runs("one", engine=backend.engine).empty
    assert frames.raw_payloads("one", engine=backend.engine).empty
    assert frames.repositories("one", engine=backend.engine).empty
    assert len(frames.raw_payloads("two", engine=backend.engine)) == 2
    with pytest.raises(LookupError, match=r"needs two runs .* has 1"):
        frames.changes_between_runs("two", engine=backend.engine)
    with pytest.raises(LookupError, match="unknown tenant 'three'"):
        frames.repositories("three", engine=backend.engine)
