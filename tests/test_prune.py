"""Retention (`ghetl prune`): old runs and payloads go, while everything a later run, a replay or
a 304 page still needs stays."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import sqlalchemy as sa

from ghetl import tenants
from ghetl.pipeline.prune import due, prune
from ghetl.store import db

from .conftest import Backend, add_tenant

NOTHING = {"raw_extraction_data": 0, "etl_run_counts": 0, "http_cache": 0, "etl_job_runs": 0}


def run_ids(backend: Backend) -> list[str]:
    return [r.run_id for r in backend.rows("SELECT run_id FROM etl_job_runs ORDER BY started_at")]


def backdate(backend: Backend, runs: list[str], days: int) -> None:
    """Make runs (and their payloads) look `days` old."""
    when = db.utcnow() - dt.timedelta(days=days)
    with backend.engine.begin() as conn:
        conn.execute(db.etl_job_runs.update().where(db.etl_job_runs.c.run_id.in_(runs)).values(started_at=when))
        conn.execute(db.raw_extraction_data.update().where(db.raw_extraction_data.c.run_id.in_(runs))
                     .values(created_at=when))


def pruned(backend: Backend, **kwargs: Any) -> dict[str, int]:
    with backend.engine.begin() as conn:
        return prune(conn, **kwargs)


def test_prune_keeps_young_runs_unfinished_items_and_the_payloads_304_pages_need(backend, make_sandbox, token):
    sb = make_sandbox(orgs={"acme": 5}, seed=3)
    tenant = add_tenant(backend, sb)
    for _ in range(3):
        assert backend.sync(tenant, full=True).overall == "FINISHED"
    assert backend.sync(tenant).overall == "FINISHED"  # incremental, nothing changed: no payload stored
    first, second, third, fourth = run_ids(backend)
    assert backend.scalar("SELECT count(*) FROM raw_extraction_data WHERE run_id = :r", r=fourth) == 0
    assert backend.scalar("SELECT count(*) FROM raw_extraction_data") == 15
    assert pruned(backend) == NOTHING
    assert pruned(backend, keep_runs=1) == NOTHING  # all younger than 30 days

    backdate(backend, [first, second, third], days=40)
    failed = backend.scalar("SELECT min(id) FROM raw_extraction_data WHERE run_id = :r", r=first)
    pending = backend.scalar("SELECT min(id) FROM raw_extraction_data WHERE run_id = :r", r=second)
    with backend.engine.begin() as conn:
        for raw_id, status in ((failed, "failed"), (pending, "pending")):
            conn.execute(db.raw_extraction_data.update().where(db.raw_extraction_data.c.id == raw_id)
                         .values(status=status))
    counts_of_old = backend.scalar("SELECT count(*) FROM etl_run_counts WHERE run_id IN (:a, :b, :c)",
                                   a=first, b=second, c=third)
    cached = backend.scalar("SELECT count(*) FROM http_cache")
    assert counts_of_old > 0 and cached > 0

    would = pruned(backend, keep_runs=1, dry_run=True)
    assert backend.scalar("SELECT count(*) FROM raw_extraction_data") == 15
    done = pruned(backend, keep_runs=1)

    expected = {"raw_extraction_data": 8, "etl_run_counts": counts_of_old, "http_cache": 0, "etl_job_runs": 3}
    assert would == done == expected
    left = {(r.id if r.run_id != third else "newest", r.status)
            for r in backend.rows("SELECT id, run_id, status FROM raw_extraction_data")}
    assert left == {(failed, "failed"), (pending, "pending"), ("newest", "embedded")}
    assert backend.scalar("SELECT count(*) FROM raw_extraction_data WHERE run_id = :r", r=third) == 5
    assert run_ids(backend) == [fourth]
    assert {r.run_id for r in backend.rows("SELECT run_id FROM etl_run_counts")} == {fourth}
    assert backend.scalar("SELECT count(*) FROM http_cache") == cached
    assert pruned(backend, keep_runs=1) == NOTHING

    sb.reset_stats()
    full = backend.sync(tenant, full=True)  # page 1 answers 304: its payloads come from the kept rows

    assert full.overall == "FINISHED"
    # 5 from page 1's kept payloads, and the item left pending, which the run carries over and finishes
    assert full.not_modified == 1 and full.counts["github_repositories"]["embedded"] == 6
    assert backend.scalar("SELECT run_id FROM raw_extraction_data WHERE id = :i", i=pending) == full.run_id
    assert full.requests == 1, [r.path for r in sb.requests]  # no second request for page 1: nothing was missing


def test_prune_drops_etags_of_settings_the_integration_no_longer_has(backend, make_sandbox, token):
    sb = make_sandbox(orgs={"acme": 5, "globex": 4}, seed=4)
    acme = add_tenant(backend, sb)
    globex = add_tenant(backend, sb, name="globex-inc", owner="globex")
    backend.sync(acme)
    backend.sync(globex)
    acme_etags = backend.scalar("SELECT count(*) FROM http_cache WHERE integration_id = 1")
    globex_etags = backend.scalar("SELECT count(*) FROM http_cache WHERE integration_id = 2")
    with backend.engine.begin() as conn:
        for name in (acme, globex):
            integration = tenants.get_integration(conn, tenants.get_tenant(conn, name)["id"])
            tenants.update_settings(conn, integration["id"], {"include_forks": False})
        globex_id = tenants.get_tenant(conn, globex)["id"]

    only_globex = pruned(backend, tenant_id=globex_id)
    the_rest = pruned(backend)

    assert acme_etags > 0 and globex_etags > 0
    assert only_globex == {**NOTHING, "http_cache": globex_etags}
    assert the_rest == {**NOTHING, "http_cache": acme_etags}
    assert backend.scalar("SELECT count(*) FROM http_cache") == 0


def test_prune_command_prints_the_counts_of_one_tenant(cli, make_sandbox, tmp_path):
    sb = make_sandbox(orgs={"acme": 4, "globex": 3}, seed=6)
    cli("init")
    for name, owner in (("acme-corp", "acme"), ("globex-inc", "globex")):
        cli("tenant", "add", name)
        cli("integration", "add", "--tenant", name, "--owner", owner, "--api-url", sb.url)
        for _ in range(3):
            assert cli("sync", "--tenant", name, "--full", "--quiet").returncode == 0

    dry = cli("prune", "--tenant", "acme-corp", "--keep-runs", "1", "--older-than", "0", "--dry-run")
    done = json.loads(cli("prune", "--tenant", "acme-corp", "--keep-runs", "1", "--older-than", "0", "--json").stdout)

    assert dry.stdout.startswith("would delete 8 raw_extraction_data rows, ")
    assert ", 0 http_cache rows, 2 etl_job_runs rows (kept: each job's 1 newest runs" in dry.stdout
    assert done["deleted"]["raw_extraction_data"] == 8 and done["deleted"]["etl_job_runs"] == 2
    assert done["dry_run"] is False and (done["keep_runs"], done["older_than_days"]) == (1, 0)
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'cli.db'}")
    with engine.connect() as conn:
        def per_tenant_in(table: str) -> dict:
            return dict(conn.execute(sa.text(f"SELECT tenant_id, count(*) FROM {table} GROUP BY tenant_id")).all())

        per_tenant = per_tenant_in("etl_job_runs")
        raw = per_tenant_in("raw_extraction_data")
    engine.dispose()
    assert per_tenant == {1: 1, 2: 3} and raw == {1: 4, 2: 9}


def test_a_finished_sync_applies_the_default_retention_when_it_is_due(embedded, make_sandbox, token, monkeypatch):
    backend = embedded
    sb = make_sandbox(orgs={"acme": 5}, seed=3)
    tenant = add_tenant(backend, sb)
    for _ in range(6):
        assert backend.sync(tenant, full=True).overall == "FINISHED"
    for age, run in enumerate(reversed(run_ids(backend))):  # in their order, oldest first
        backdate(backend, [run], days=40 + age)
    monkeypatch.setenv("GHETL_PRUNE_ON_SYNC", "0")
    assert backend.sync(tenant).overall == "FINISHED"
    assert len(run_ids(backend)) == 7, "turned off: nothing pruned"

    monkeypatch.delenv("GHETL_PRUNE_ON_SYNC")
    last = backend.sync(tenant)

    assert last.overall == "FINISHED"
    assert len(run_ids(backend)) == 5 and run_ids(backend)[-1] == last.run_id
    kept = run_ids(backend)[:3]  # the three full runs among the five newest; the two after them stored nothing
    assert {r.run_id for r in backend.rows("SELECT DISTINCT run_id FROM raw_extraction_data")} == set(kept)
    assert backend.scalar("SELECT count(*) FROM raw_extraction_data") == 15
    with backend.engine.begin() as conn:
        assert not due(conn)
