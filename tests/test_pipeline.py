"""The core pipeline end to end, on both back ends: what lands, what the job says, what it costs."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time

import pytest
import sqlalchemy as sa

from ghetl import logs, tenants
from ghetl.pipeline import jobs
from ghetl.pipeline.workers import Pipeline, database_unavailable
from ghetl.queue.broker import MemoryBroker, Outcome, encode, max_attempts
from ghetl.steps.repositories import deactivate
from ghetl.store.db import etl_jobs, raw_extraction_data, repositories

from .conftest import add_tenant

ALL_FINISHED = {"extraction": "finished", "transform": "finished", "embedding": "finished"}


def job_row(backend):
    with backend.engine.connect() as conn:
        return dict(conn.execute(sa.select(etl_jobs)).mappings().one())


def circles(job):
    info = job["status"]["steps"]["github_repositories"]
    return {stage: info[stage] for stage in ("extraction", "transform", "embedding")}


def stored_ids(backend, active=True):
    with backend.engine.connect() as conn:
        return set(
            conn.execute(sa.select(repositories.c.external_id).where(repositories.c.active.is_(active))).scalars()
        )


def test_full_sync_stores_exactly_the_org(backend, sandbox, tenant):
    events = []
    result = backend.sync(tenant, on_event=events.append)

    expected = {str(r["id"]) for r in sandbox.repos("acme")}
    assert len(expected) == 500
    assert result.overall == "FINISHED"
    assert stored_ids(backend) == expected
    assert backend.scalar("select count(*) from repositories") == 500
    assert backend.scalar("select count(*) from raw_extraction_data where status <> 'embedded'") == 0
    assert backend.scalar("select count(*) from raw_extraction_data") == 500
    assert backend.scalar("select count(distinct external_id) from embeddings where table_name = 'repositories'") == 500
    assert result.counts["github_repositories"] == {"extracted": 500, "transformed": 500, "embedded": 500, "failed": 0}
    assert result.requests == 6  # one owner lookup, then 500 repositories in pages of 100

    job = job_row(backend)
    assert job["status"]["overall"] == "FINISHED"
    assert circles(job) == ALL_FINISHED
    assert job["last_sync_date"] == job["last_run_started_at"]
    assert job["last_run_finished_at"] > job["last_run_started_at"]
    assert job["last_sync_date"].tzinfo is not None

    events = [e for e in events if e["type"] == "job" or e.get("step") == "github_repositories"]
    for stage in ("extraction", "transform", "embedding"):
        seq = [e["status"] for e in events if e.get("stage") == stage]
        assert seq[0] == "running" and seq[-1] == "finished" and seq.count("finished") == 1, (stage, seq)
    finished = [e for e in events if e["type"] == "stage" and e["status"] == "finished"]
    assert all(e["processed"] == 500 and e["total"] == 500 for e in finished)
    assert [e["overall"] for e in events if e["type"] == "job"] == ["RUNNING", "FINISHED"]


def test_rows_carry_payload_fields_as_github_sent_them(backend, sandbox, tenant):
    backend.sync(tenant)
    repo = next(r for r in sandbox.repos("acme") if r.get("description") and r.get("topics") and r.get("license"))
    with backend.engine.connect() as conn:
        query = sa.select(repositories).where(repositories.c.external_id == str(repo["id"]))
        row = conn.execute(query).mappings().one()
    assert row["full_name"] == repo["full_name"]
    assert row["description"] == repo["description"]
    assert row["topics"] == repo["topics"]
    assert row["license"] == repo["license"]["spdx_id"]
    assert row["visibility"] == repo["visibility"]
    assert row["stargazers_count"] == repo["stargazers_count"]
    assert row["owner"] == "acme"
    assert row["repo_updated_at"] == dt.datetime.fromisoformat(repo["updated_at"].replace("Z", "+00:00"))
    assert row["repo_created_at"].tzinfo is not None


def test_incremental_sync_processes_only_touched_repositories(backend, sandbox, tenant):
    backend.sync(tenant)
    touched = [r["full_name"] for r in sandbox.repos("acme")[100:103]]
    for name in touched:
        sandbox.touch(name, description=f"now about invoice reconciliation ({name})")
    sandbox.reset_stats()

    result = backend.sync(tenant)

    assert result.overall == "FINISHED" and not result.full
    assert result.counts["github_repositories"]["extracted"] == 3
    with backend.engine.connect() as conn:
        run_rows = conn.execute(
            sa.select(raw_extraction_data.c.raw_data).where(raw_extraction_data.c.run_id == result.run_id)
        ).scalars().all()
        descriptions = dict(conn.execute(sa.select(repositories.c.full_name, repositories.c.description)).all())
    assert sorted(r["full_name"] for r in run_rows) == sorted(touched)
    assert all(descriptions[n] == f"now about invoice reconciliation ({n})" for n in touched)
    assert result.requests == 1  # the first page holds the touched ones and then older ones: paging stops


def test_nothing_changed_still_ends_every_stage(backend, sandbox, tenant):
    backend.sync(tenant)
    before = job_row(backend)
    events = []

    result = backend.sync(tenant, on_event=events.append)

    after = job_row(backend)
    assert result.overall == "FINISHED"
    assert result.counts["github_repositories"]["extracted"] == 0
    assert circles(after) == ALL_FINISHED
    assert after["last_sync_date"] > before["last_sync_date"]
    assert after["last_sync_date"] == after["last_run_started_at"]
    for stage in ("extraction", "transform", "embedding"):
        statuses = [e["status"] for e in events
                    if e.get("stage") == stage and e.get("step") == "github_repositories"]
        assert statuses[0] == "running" and statuses[-1] == "finished", (stage, statuses)
    assert backend.scalar("select count(*) from raw_extraction_data") == 500


def test_rename_updates_the_same_row_and_delete_marks_inactive(backend, sandbox, tenant):
    backend.sync(tenant)
    repos = sandbox.repos("acme")
    renamed, deleted = repos[10], repos[20]
    sandbox.rename(renamed["full_name"], "brand-new-name")
    sandbox.delete(deleted["full_name"])

    result = backend.sync(tenant, full=True)

    assert result.overall == "FINISHED"
    with backend.engine.connect() as conn:
        rows = {r.external_id: r for r in conn.execute(sa.select(repositories))}
    assert len(rows) == 500
    assert rows[str(renamed["id"])].full_name == "acme/brand-new-name"
    assert rows[str(renamed["id"])].active
    assert not rows[str(deleted["id"])].active
    assert result.stats.get("deactivated") == 1


def test_an_inactive_repository_seen_again_is_active_again(backend, sandbox, tenant):
    backend.sync(tenant)
    repo = sandbox.repos("acme")[7]
    external_id = str(repo["id"])
    tenant_id, integration_id = backend.scalar("select id from tenants"), backend.scalar("select id from integrations")
    deactivate(backend.engine, tenant_id, integration_id, external_id)
    assert not backend.scalar(f"select active from repositories where external_id = '{external_id}'")

    result = backend.sync(tenant, full=True)

    assert result.overall == "FINISHED"
    assert backend.scalar(f"select active from repositories where external_id = '{external_id}'")
    assert backend.scalar("select count(*) from repositories where not active") == 0


def test_a_run_without_a_token_marks_nothing_deleted_and_keeps_the_cutoff(backend, sandbox, tenant, monkeypatch):
    """Without a token GitHub lists public repositories only and answers 404 for private ones."""
    backend.sync(tenant)
    private = backend.scalar("select count(*) from repositories where is_private")
    before = job_row(backend)["last_sync_date"]
    assert private > 0

    monkeypatch.delenv("GITHUB_TOKEN")
    result = backend.sync(tenant, full=True)

    assert result.overall == "FINISHED"
    assert backend.scalar("select count(*) from repositories where not active") == 0
    assert job_row(backend)["last_sync_date"] == before
    assert not [r.path for r in sandbox.requests[-result.requests:] if r.path.startswith("/repositories/")]  # by id


def test_incremental_sync_picks_up_a_rename_by_id(backend, sandbox, tenant):
    backend.sync(tenant)
    repo = sandbox.repos("acme")[5]
    sandbox.rename(repo["full_name"], "renamed-service")

    backend.sync(tenant)

    with backend.engine.connect() as conn:
        names = conn.execute(
            sa.select(repositories.c.full_name).where(repositories.c.external_id == str(repo["id"]))
        ).scalars().all()
    assert names == ["acme/renamed-service"]


def test_redelivered_transform_message_changes_nothing(backend, sandbox, tenant):
    result = backend.sync(tenant)
    with backend.engine.connect() as conn:
        raw = conn.execute(
            sa.select(raw_extraction_data).where(raw_extraction_data.c.run_id == result.run_id).limit(3)
        ).mappings().all()
        before = conn.execute(sa.select(repositories.c.external_id, repositories.c.updated_at)).all()
    message = {
        "tenant_id": raw[0]["tenant_id"], "integration_id": raw[0]["integration_id"], "job_id": result.job_id,
        "run_id": result.run_id, "step": "github_repositories", "provider": "github", "last_sync_date": None,
        "items": [{"raw_data_id": r["id"], "external_id": r["external_id"], "first_item": False,
                   "last_item": False, "last_job_item": False} for r in raw],
    }
    pipeline = Pipeline(backend.engine, backend.broker)

    outcome = pipeline.deliver("transform", encode(message), 1)

    assert outcome.action == "ack"
    with backend.engine.connect() as conn:
        after = conn.execute(sa.select(repositories.c.external_id, repositories.c.updated_at)).all()
    assert sorted(after) == sorted(before)
    assert backend.scalar("select count(*) from raw_extraction_data where status = 'embedded'") == 500
    assert job_row(backend)["status"]["overall"] == "FINISHED"


def test_two_starts_at_once_one_runs_one_is_refused(backend, sandbox, tenant):
    with backend.engine.connect() as conn:
        job = jobs.list_jobs(conn)[0]
    barrier = threading.Barrier(2)
    outcomes = []

    def claim():
        barrier.wait()
        try:
            with backend.engine.begin() as conn:
                jobs.start(conn, job, full=False)
            outcomes.append("started")
        except jobs.AlreadyRunning as exc:
            outcomes.append(str(exc))

    threads = [threading.Thread(target=claim) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert outcomes.count("started") == 1
    refused = [o for o in outcomes if o != "started"]
    assert len(refused) == 1 and "already running" in refused[0]
    assert job_row(backend)["status"]["overall"] == "RUNNING"


def test_a_stale_run_no_longer_blocks_the_job(backend, sandbox, tenant):
    with backend.engine.begin() as conn:
        job = jobs.list_jobs(conn)[0]
        jobs.start(conn, job, full=False)
        conn.execute(etl_jobs.update().values(heartbeat_at=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)))

    result = backend.sync(tenant)

    assert result.overall == "FINISHED"
    assert backend.scalar(
        "select count(*) from etl_job_runs where overall = 'FAILED' and error_message like 'superseded%'") == 1


def test_a_run_nobody_works_on_ends_failed_once_and_an_advancing_one_does_not(backend, sandbox, tenant, monkeypatch):
    monkeypatch.setattr(jobs, "STALE_AFTER", dt.timedelta(seconds=1))
    with backend.engine.begin() as conn:
        run, _ = jobs.start(conn, jobs.list_jobs(conn)[0], full=False)
        jobs.stage_running(conn, run.run_id, run.job_id, "github_repositories", "extraction")
    time.sleep(1.2)
    with backend.engine.begin() as conn:
        jobs.advance(conn, run.run_id)  # a worker's batch renews the lease even with the sync process gone
    with backend.engine.begin() as conn:
        assert jobs.end_stale_runs(conn) == [], "a run its workers advance is alive"
    time.sleep(1.2)
    barrier, ended = threading.Barrier(2), []

    def end() -> None:
        barrier.wait()
        with backend.engine.begin() as conn:
            ended.extend(jobs.end_stale_runs(conn))

    threads = [threading.Thread(target=end) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    [job_end] = [e for e in ended if e["type"] == "job"]
    assert job_end["overall"] == "FAILED" and job_end["run_id"] == run.run_id
    assert job_end["error"].startswith("its sync process stopped responding: no heartbeat for")
    assert sorted(e["stage"] for e in ended if e["type"] == "stage" and e["step"] == "github_repositories") == [
        "embedding", "extraction", "transform"]
    assert {e["status"] for e in ended if e["type"] == "stage"} == {"failed"}
    row = job_row(backend)
    assert row["status"]["overall"] == "FAILED" and row["heartbeat_at"] is None
    assert backend.scalar("select overall from etl_job_runs where run_id = :r", r=run.run_id) == "FAILED"
    assert backend.sync(tenant).overall == "FINISHED", "the job can run again"


def test_settings_narrow_the_repositories(backend, sandbox, token):
    tenant = add_tenant(backend, sandbox, settings={"include_forks": False, "include_archived": False})

    backend.sync(tenant)

    expected = {str(r["id"]) for r in sandbox.repos("acme") if not r["fork"] and not r["archived"]}
    assert 0 < len(expected) < 500
    assert stored_ids(backend) == expected


def test_name_patterns_select_by_name(backend, sandbox, token):
    firsts = [r["name"].split("-")[0] for r in sandbox.repos("acme") if "-" in r["name"]]
    prefix = max(set(firsts), key=firsts.count)
    tenant = add_tenant(backend, sandbox, settings={"name_patterns": [f"{prefix}-*"]})

    backend.sync(tenant)

    expected = {str(r["id"]) for r in sandbox.repos("acme") if r["name"].startswith(f"{prefix}-")}
    assert expected and stored_ids(backend) == expected


def test_a_user_account_is_listed_like_an_org(backend, sandbox, token):
    tenant = add_tenant(backend, sandbox, name="solo", owner="octocat")

    result = backend.sync(tenant)

    assert result.overall == "FINISHED"
    # the sandbox's token belongs to octocat, so /user/repos brings its private repositories too
    assert stored_ids(backend) == {str(r["id"]) for r in sandbox.repos("octocat")}
    assert any(r["private"] for r in sandbox.repos("octocat"))
    with backend.engine.connect() as conn:
        assert conn.execute(sa.text("select owner_type from integrations")).scalar() == "User"


def test_rejected_token_fails_the_job_and_writes_no_repository(backend, make_sandbox, token):
    sb = make_sandbox(orgs={"acme": 30}, tokens={"some-other-token"})
    tenant = add_tenant(backend, sb)

    result = backend.sync(tenant)

    assert result.overall == "FAILED"
    assert "token rejected" in result.error
    job = job_row(backend)
    assert job["status"]["overall"] == "FAILED" and job["error_message"] == result.error
    assert circles(job)["extraction"] == "failed"
    assert job["last_sync_date"] is None
    assert backend.scalar("select count(*) from repositories") == 0
    assert token not in json.dumps(job, default=str)


def test_bad_settings_are_refused_before_anything_is_written(backend):
    with backend.engine.begin() as conn:
        tenants.add_tenant(conn, "t1")
    for settings, key in (({"repository_filer": "x"}, "repository_filer"), ({"include_forks": "no"}, "include_forks"),
                          ({"repository_filter": "org:other api"}, "repository_filter"), ("{not json", "JSON"),
                          ({"repository_filter": "api\u0000"}, "repository_filter"),
                          ({"name_patterns": ["api-*\n"]}, "name_patterns")):
        with pytest.raises(ValueError, match=key), backend.engine.begin() as conn:
            tenants.add_integration(conn, "t1", "acme", api_url="https://x", settings=settings)
    assert backend.scalar("select count(*) from integrations") == 0
    assert backend.scalar("select count(*) from etl_jobs") == 0


def test_a_token_given_as_the_token_variable_or_in_the_url_is_refused_before_anything_is_written(backend):
    with backend.engine.begin() as conn:
        tenants.add_tenant(conn, "t1")
    with pytest.raises(ValueError, match="--token-env takes the NAME") as named, backend.engine.begin() as conn:
        tenants.add_integration(conn, "t1", "acme", api_url="https://x", token_env="ghs_" + "a" * 36)
    with pytest.raises(ValueError, match="not in the URL") as in_url, backend.engine.begin() as conn:
        tenants.add_integration(conn, "t1", "acme", api_url="https://token:s3cr3tvalue@ghe.example.com/api/v3")
    assert "a" * 36 not in str(named.value) and "s3cr3tvalue" not in str(in_url.value)
    assert backend.scalar("select count(*) from integrations") == 0
    assert backend.scalar("select count(*) from etl_jobs") == 0


def test_an_error_quoting_the_token_is_stored_and_streamed_masked(backend, make_sandbox, monkeypatch):
    secret = "0123456789abcdef0123456789abcdef0000c0de"
    monkeypatch.setenv("GHETL_TOKEN_GHE", secret)
    sb = make_sandbox(orgs={"acme": 5})
    sb.inject("status", path="/orgs/acme/repos", times=50, status=422, body={"message": f"token {secret} refused"})
    tenant = add_tenant(backend, sb, token_env="GHETL_TOKEN_GHE")
    events = []

    result = backend.sync(tenant, on_event=events.append)

    assert result.overall == "FAILED" and "token [token] refused" in result.error
    job = job_row(backend)
    assert job["error_message"] == result.error
    assert [e["error"] for e in events if e.get("type") == "job" and e["overall"] == "FAILED"] == [result.error]
    assert secret not in backend.scalar("select error_message from etl_job_runs")


def test_a_run_failed_with_a_secret_in_its_reason_stores_it_masked(backend, sandbox, tenant):
    logs.register_secret("any-shape-of-secret")
    with backend.engine.begin() as conn:
        job = jobs.list_jobs(conn)[0]
        run, _ = jobs.start(conn, job, full=False)
        events = jobs.fail(conn, run, "crashed: header 'Bearer any-shape-of-secret' refused")

    assert job_row(backend)["error_message"] == "crashed: header 'Bearer [token]' refused"
    assert events[-1]["error"] == "crashed: header 'Bearer [token]' refused"


def test_integration_add_creates_the_job_with_idle_circles(backend):
    with backend.engine.begin() as conn:
        tenants.add_tenant(conn, "t1")
        tenants.add_integration(conn, "t1", "acme", api_url="https://x")
    job = job_row(backend)
    assert job["job_name"] == "GitHub"
    assert job["status"] == {
        "overall": "READY",
        "steps": {"github_repositories": {"order": 1, "display_name": "GitHub Repositories",
                                          "extraction": "idle", "transform": "idle", "embedding": "idle"},
                  "github_pull_requests": {"order": 2, "display_name": "Pull Requests",
                                           "extraction": "idle", "transform": "idle", "embedding": "idle"}},
    }


def test_the_overall_check_constraint_refuses_unknown_states(backend):
    with backend.engine.begin() as conn:
        tenants.add_tenant(conn, "t1")
        tenants.add_integration(conn, "t1", "acme", api_url="https://x")
    with pytest.raises(sa.exc.IntegrityError), backend.engine.begin() as conn:
        conn.execute(etl_jobs.update().values(status={"overall": "DONE", "steps": {}}))


@pytest.mark.parametrize("which", ["one", "the-last"])
def test_a_bad_item_fails_alone_and_the_next_run_retries_it(backend, sandbox, tenant, monkeypatch, which):
    """Also when it is the run's last item, which carries the run's end to the embedding stage."""
    from dataclasses import replace

    from ghetl import steps

    repos = sandbox.repos("acme")
    bad = repos[7] if which == "one" else min(repos, key=lambda r: (r["updated_at"], r["id"]))  # listed last
    step = steps.registry()["github_repositories"]

    def picky_to_row(payload, ctx):
        if payload["id"] == bad["id"]:
            raise ValueError("payload rejected for the test")
        return step.to_row(payload, ctx)

    monkeypatch.setitem(steps.registry(), "github_repositories", replace(step, to_row=picky_to_row))
    first = backend.sync(tenant)

    assert first.overall == "FINISHED"
    assert first.counts["github_repositories"] == {"extracted": 500, "transformed": 499, "embedded": 499, "failed": 1}
    assert stored_ids(backend) == {str(r["id"]) for r in sandbox.repos("acme")} - {str(bad["id"])}
    failed = backend.rows(
        "select external_id, failed_stage, error_message from raw_extraction_data where status = 'failed'")
    assert [(f[0], f[1]) for f in failed] == [(str(bad["id"]), "transform")]
    assert "payload rejected for the test" in failed[0][2]

    monkeypatch.setitem(steps.registry(), "github_repositories", step)
    second = backend.sync(tenant)

    assert second.overall == "FINISHED"
    assert second.counts["github_repositories"]["extracted"] == 1
    assert str(bad["id"]) in stored_ids(backend)


def test_a_repository_the_database_cannot_store_fails_alone(backend, sandbox, tenant):
    """A description with a NUL character: PostgreSQL text cannot hold it, SQLite can.

    On PostgreSQL its row is refused and only that item fails, with the database's reason; the
    batch around it is stored. Either way the run finishes with every other repository.
    """
    odd = sandbox.touch(sandbox.repos("acme")[3]["id"], description="nul \x00 inside")
    others = {str(r["id"]) for r in sandbox.repos("acme")} - {str(odd["id"])}

    result = backend.sync(tenant)

    assert result.overall == "FINISHED"
    assert others <= stored_ids(backend)
    failed = backend.rows("select external_id, failed_stage, error_message from raw_extraction_data "
                          "where status = 'failed'")
    if backend.engine.dialect.name == "postgresql":
        assert [(f[0], f[1]) for f in failed] == [(str(odd["id"]), "transform")]
        assert "database refused the row" in failed[0][2]
        assert result.counts["github_repositories"]["failed"] == 1
    else:
        assert failed == [] and str(odd["id"]) in stored_ids(backend)


def test_consumers_that_die_end_the_sync_failed_instead_of_a_wait(embedded, sandbox, token, monkeypatch):
    """On memory:// the stages are threads of the sync: once they are gone nothing would end the run."""
    tenant = add_tenant(embedded, sandbox)

    def broken(self, stage, body, attempt):
        raise RuntimeError("a consumer bug")

    monkeypatch.setattr(Pipeline, "deliver", broken)

    with pytest.raises(RuntimeError, match="a consumer bug"):
        embedded.sync(tenant, timeout=30)

    job = job_row(embedded)
    assert job["status"]["overall"] == "FAILED" and "a consumer bug" in job["error_message"]


UNKNOWN_RUN_MESSAGE = encode({"tenant_id": 1, "integration_id": 1, "job_id": 1, "run_id": "r1",
                              "step": "github_repositories", "items": [{"raw_data_id": 1, "external_id": "1"}]})


def test_an_unreachable_database_puts_the_message_back_without_using_an_attempt(backend, tmp_path, caplog):
    """Not even the last attempt is used up: a database outage is not the message's fault."""
    url = (f"sqlite:///{tmp_path / 'gone' / 'x.db'}" if backend.name == "embedded"
           else "postgresql+psycopg2://postgres@127.0.0.1:1/x")
    unreachable = sa.create_engine(url)
    pipeline = Pipeline(unreachable, backend.broker)
    try:
        outcomes = [pipeline.deliver("transform", UNKNOWN_RUN_MESSAGE, attempt) for attempt in (1, 2, max_attempts())]
    finally:
        unreachable.dispose()

    assert [o.action for o in outcomes] == ["requeue"] * 3
    assert 0 < outcomes[0].delay < outcomes[1].delay < outcomes[2].delay
    assert [r.levelname for r in caplog.records if "database is unavailable" in r.getMessage()] == ["WARNING"]
    assert not any(r.exc_info for r in caplog.records)


def test_a_failing_statement_is_not_taken_for_an_outage(backend):
    statements = (["SELECT * FROM no_such_table"] if backend.name == "embedded"
                  else ["SET LOCAL statement_timeout = 1", "SELECT pg_sleep(1)"])
    with backend.engine.connect() as conn, pytest.raises(sa.exc.OperationalError) as failed:
        for statement in statements:
            conn.execute(sa.text(statement))

    assert not database_unavailable(failed.value)


def test_the_in_process_broker_puts_a_requeued_message_back_as_the_same_attempt():
    broker = MemoryBroker()
    deliveries = []
    stop = threading.Event()

    def deliver(stage, body, attempt):
        deliveries.append((attempt, time.monotonic()))
        if len(deliveries) == 1:
            return Outcome("requeue", "database unavailable", delay=0.3)
        stop.set()
        return Outcome("ack")

    broker.publish_raw("transform", b"{}")
    broker.consume(["transform"], deliver, concurrency=1, stop=stop)

    assert [attempt for attempt, _ in deliveries] == [1, 1]
    assert deliveries[1][1] - deliveries[0][1] >= 0.3
    assert broker.pending("transform") == 0 and broker.dead_letters == []
