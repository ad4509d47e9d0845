"""ghetl.workbench.runbook, the notebook-level helpers: session, tenant set-up, token check, preview, sync."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ghetl import tenants
from ghetl.github import TokenRejected
from ghetl.settings import SettingsError
from ghetl.workbench import frames, runbook

from .conftest import TOKEN, add_tenant


@pytest.fixture
def process_state() -> Iterator[None]:
    """open_session exports GHETL_* variables and sets up logging: undo both after the test."""
    environ = dict(os.environ)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    os.environ.clear()
    os.environ.update(environ)
    root.handlers[:] = handlers
    root.setLevel(level)


def test_blank_session_starts_the_sandbox_and_a_throwaway_database(process_state, monkeypatch):
    for name in ("GHETL_DATABASE_URL", "GHETL_BROKER_URL"):
        monkeypatch.delenv(name, raising=False)
    session = runbook.open_session(sandbox_orgs={"globex": 7})
    try:
        path = Path(session.database_url.removeprefix("sqlite:///"))
        assert session.sandbox is not None and session.api_url == session.sandbox.url
        assert len(session.sandbox.repos("globex")) == 7
        assert session.token_env == runbook.SANDBOX_TOKEN_ENV and os.environ[runbook.SANDBOX_TOKEN_ENV]
        assert os.environ["GHETL_DATABASE_URL"] == session.database_url
        assert os.environ["GHETL_BROKER_URL"] == "memory://"
        assert not path.exists()  # nothing written before a tenant is set up
        assert "throwaway" in session.describe() and str(path.parent) not in session.describe()
        setup = runbook.ensure_tenant("demo", "globex", api_url=session.api_url, token_env=session.token_env)
        assert setup.created and path.exists()
    finally:
        session.close()
    assert not path.parent.exists()


def test_given_urls_are_used_and_passwords_never_shown(process_state, tmp_path, sandbox):
    database_url = f"sqlite:///{tmp_path / 'given.db'}"
    session = runbook.open_session(database_url, "amqp://ghetl:s3cret-pass@mq.example:5672/%2F", sandbox.url + "/",
                                     token_env="ACME_GITHUB_TOKEN")

    assert (session.database_url, session.api_url, session.token_env) == (database_url, sandbox.url,
                                                                          "ACME_GITHUB_TOKEN")
    assert session.sandbox is None
    assert os.environ["GHETL_BROKER_URL"].startswith("amqp://ghetl:s3cret-pass@")
    assert "s3cret-pass" not in session.describe() and "s3cret-pass" not in repr(session)
    session.close()


def test_a_lasting_database_gets_no_sandbox_and_no_tenant_without_an_api_url(process_state, embedded, monkeypatch):
    """A tenant stored there would point at a sandbox that dies with the kernel."""
    monkeypatch.setenv("GHETL_DATABASE_URL", embedded.database_url)
    session = runbook.open_session()
    try:
        assert (session.sandbox, session.api_url, session.throwaway) == (None, "", False)
        assert "stored with the tenant's integration" in session.describe()
        with pytest.raises(tenants.NotFound, match=r"tenant 'acme-crop' does not exist in sqlite:///.*no api_url"):
            runbook.ensure_tenant("acme-crop", "acme", api_url=session.api_url, engine=embedded.engine)
        with pytest.raises(tenants.NotFound, match="onboard the tenant first"):
            runbook.ensure_tenant("acme-crop", "acme", api_url="https://ghe.example/api/v3", engine=embedded.engine,
                                    create=False)
    finally:
        session.close()
    assert embedded.scalar("select count(*) from tenants") == 0


def test_setup_tenant_is_all_or_nothing(embedded, sandbox):
    with pytest.raises(SettingsError, match="unknown settings key 'include_fork'"):
        runbook.setup_tenant("acme-corp", "acme", api_url=sandbox.url, settings='{"include_fork": false}',
                               engine=embedded.engine)
    assert embedded.scalar("select count(*) from tenants") == 0

    setup = runbook.setup_tenant("acme-corp", "acme", api_url=sandbox.url, engine=embedded.engine)
    with embedded.engine.connect() as conn:
        assert tenants.check_key(conn, setup.tenant_id, setup.stream_key)
    assert "stream_key" not in repr(setup) and setup.stream_key not in repr(setup)
    with pytest.raises(ValueError, match="tenant 'acme-corp' already exists"):
        runbook.setup_tenant("acme-corp", "acme", api_url=sandbox.url, engine=embedded.engine)


def test_ensure_tenant_keeps_an_existing_tenant_as_configured(embedded, sandbox):
    add_tenant(embedded, sandbox, name="acme-corp", owner="acme")
    found = runbook.ensure_tenant("acme-corp", "other-org", api_url="https://ghe.example/api/v3",
                                    engine=embedded.engine)

    assert (found.created, found.owner, found.api_url, found.stream_key) == (False, "acme", sandbox.url, None)
    assert embedded.scalar("select count(*) from integrations") == 1


def test_check_token_reports_budget_and_scopes_and_refuses_bad_tokens(make_sandbox, monkeypatch):
    sandbox = make_sandbox(orgs={"acme": 3}, tokens={TOKEN}, core_limit=900)
    monkeypatch.setenv("ACME_GITHUB_TOKEN", TOKEN)
    check = runbook.check_token(sandbox.url, "ACME_GITHUB_TOKEN")

    assert check.scopes == ["read:org", "repo"]
    assert check.remaining("core") == 900 and check.remaining("search") == 30
    assert str(check.rate["reset"].dt.tz) == "UTC"
    assert TOKEN not in check.describe() and "$ACME_GITHUB_TOKEN" in check.describe()
    assert check.remaining("core") == runbook.check_token(sandbox.url, "ACME_GITHUB_TOKEN").remaining("core")  # free

    monkeypatch.setenv("ACME_GITHUB_TOKEN", "ghp_" + "x" * 36)
    with pytest.raises(TokenRejected, match="401") as refused:
        runbook.check_token(sandbox.url, "ACME_GITHUB_TOKEN")
    assert "ghp_" not in str(refused.value)
    monkeypatch.delenv("ACME_GITHUB_TOKEN")
    with pytest.raises(ValueError, match=r"\$ACME_GITHUB_TOKEN is empty"):
        runbook.check_token(sandbox.url, "ACME_GITHUB_TOKEN")


def test_check_token_strips_the_newline_of_a_token_file_and_refuses_inner_whitespace(make_sandbox, monkeypatch):
    sandbox = make_sandbox(orgs={"acme": 3}, tokens={TOKEN})
    monkeypatch.setenv("ACME_GITHUB_TOKEN", TOKEN + "\n")
    assert runbook.check_token(sandbox.url, "ACME_GITHUB_TOKEN").remaining("core") > 0

    monkeypatch.setenv("ACME_GITHUB_TOKEN", TOKEN[:10] + " " + TOKEN[10:])
    with pytest.raises(ValueError, match=r"\$ACME_GITHUB_TOKEN holds whitespace") as refused:
        runbook.check_token(sandbox.url, "ACME_GITHUB_TOKEN")
    assert TOKEN[10:] not in str(refused.value)
    assert sandbox.requests[-1].authenticated and len(sandbox.requests) == 1


@pytest.mark.parametrize("settings", [
    {"repository_filter": "language:Python", "include_archived": False},
    {"include_forks": False, "visibility": "private"},
])
def test_preview_selects_exactly_what_the_first_sync_stores(embedded, make_sandbox, token, settings):
    sandbox = make_sandbox(orgs={"acme": 150}, seed=5)
    preview = runbook.preview_repositories("acme", api_url=sandbox.url, settings=settings)
    assert embedded.scalar("select count(*) from tenants") == 0

    tenant = add_tenant(embedded, sandbox, settings=settings)
    embedded.sync(tenant)
    stored = set(frames.repositories(tenant, engine=embedded.engine)["external_id"])

    assert len(preview) == 150
    assert 0 < preview["selected"].sum() < 150
    assert set(preview.loc[preview["selected"], "id"].astype(str)) == stored


def test_run_sync_raises_with_the_reason_and_without_the_token(process_state, embedded, make_sandbox, monkeypatch):
    sandbox = make_sandbox(orgs={"acme": 3}, tokens={TOKEN})
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_" + "b" * 36)
    monkeypatch.setenv("GHETL_DATABASE_URL", embedded.database_url)
    monkeypatch.delenv("GHETL_STATUS_KEY", raising=False)
    tenant = add_tenant(embedded, sandbox)

    with pytest.raises(runbook.SyncFailed, match=r"sync of tenant 'acme-corp' ended FAILED: .*401") as failed:
        runbook.run_sync(tenant)
    assert "ghp_" not in str(failed.value)
    assert frames.jobs(tenant, engine=embedded.engine).loc[0, "overall"] == "FAILED"


def test_use_embedder_follows_the_tenants_vectors(process_state, embedded, make_sandbox, token, monkeypatch):
    monkeypatch.setenv("GHETL_DATABASE_URL", embedded.database_url)
    monkeypatch.setenv("GHETL_EMBEDDER", "hash")
    sandbox = make_sandbox(orgs={"acme": 4})
    tenant = add_tenant(embedded, sandbox)
    embedded.sync(tenant)

    assert runbook.use_embedder("", tenant=tenant) == "hash"
    assert os.environ["GHETL_EMBEDDER"] == "hash"
    with pytest.raises(ValueError, match="GHETL_EMBEDDER must be 'hash' or 'minilm'"):
        runbook.use_embedder("word2vec")
