"""Operating integrations from the command line: list them, disable and enable them (and whole
tenants), change their settings. A disabled one is refused by every sync in one line, and
nothing stored changes when a command is refused."""

from __future__ import annotations

import json
import sqlite3

import pytest
import sqlalchemy as sa

import ghetl
from ghetl import tenants
from ghetl.pipeline import jobs
from ghetl.pipeline.sync import sync

from .conftest import TOKEN, Backend, add_tenant, one_line_error

DISABLED_INTEGRATION = ("ghetl: error: integration 1 of tenant acme-corp is disabled; enable it with: "
                        "ghetl integration enable --tenant acme-corp --integration 1")
DISABLED_TENANT = "ghetl: error: tenant acme-corp is disabled; enable it with: ghetl tenant enable acme-corp"


def setup_tenant(cli, url: str, *settings: str, pull_requests: bool = False) -> None:
    cli("init")
    cli("tenant", "add", "acme-corp")
    added = cli("integration", "add", "--tenant", "acme-corp", "--owner", "acme", "--api-url", url, *settings,
                pull_requests=pull_requests)
    assert added.stdout.strip() == "1", added.stderr


def stored(tmp_path, sql: str) -> list[tuple]:
    with sqlite3.connect(tmp_path / "cli.db") as conn:
        return conn.execute(sql).fetchall()


def test_integration_list_names_the_token_variable_never_the_token(cli, make_sandbox):
    sb = make_sandbox(orgs={"acme": 5, "globex": 3})
    setup_tenant(cli, sb.url, "--settings", '{"include_forks": false}')
    cli("tenant", "add", "globex-inc")
    cli("integration", "add", "--tenant", "globex-inc", "--owner", "globex", "--api-url", sb.url,
        "--token-env", "GLOBEX_GITHUB_TOKEN", pull_requests=True, GLOBEX_GITHUB_TOKEN=TOKEN)  # never synced here
    assert cli("sync", "--tenant", "acme-corp", "--quiet").returncode == 0

    every = json.loads(cli("integration", "list", "--json").stdout)
    only_globex = cli("integration", "list", "--tenant", "globex-inc")

    assert [(i["id"], i["tenant"], i["owner"], i["token_env"], i["settings"], i["active"]) for i in every] == [
        (1, "acme-corp", "acme", "GITHUB_TOKEN", {"include_forks": False}, True),
        (2, "globex-inc", "globex", "GLOBEX_GITHUB_TOKEN", {}, True),
    ]
    assert every[0]["api_url"] == sb.url and "T" in every[0]["last_sync_date"]
    assert every[1]["last_sync_date"] is None
    assert only_globex.stdout.splitlines() == [
        f"2\ttenant globex-inc\towner globex\t{sb.url}\ttoken $GLOBEX_GITHUB_TOKEN\tsettings {{}}\tactive\t"
        "last sync never"
    ]
    assert TOKEN not in cli("integration", "list").stdout


def test_a_disabled_integration_is_refused_by_sync_in_one_line_and_starts_no_run(cli, tmp_path):
    setup_tenant(cli, "http://127.0.0.1:9")

    disabled = cli("integration", "disable", "--tenant", "acme-corp")
    refused = cli("sync", "--tenant", "acme-corp", "--integration", "1")
    refused_without_id = cli("sync", "--tenant", "acme-corp")

    assert disabled.stdout.strip() == ("integration 1 of tenant acme-corp disabled; ghetl sync refuses it until: "
                                       "ghetl integration enable --tenant acme-corp --integration 1")
    assert one_line_error(refused) == DISABLED_INTEGRATION
    assert one_line_error(refused_without_id) == DISABLED_INTEGRATION
    assert stored(tmp_path, "SELECT count(*) FROM etl_job_runs") == [(0,)]
    assert stored(tmp_path, "SELECT active FROM integrations") == [(0,)]
    assert "\tdisabled\t" in cli("integration", "list").stdout
    again = cli("integration", "enable", "--tenant", "acme-corp", "--integration", "1")
    assert again.stdout.strip() == "integration 1 of tenant acme-corp enabled"
    assert stored(tmp_path, "SELECT active FROM integrations") == [(1,)]


def test_a_disabled_tenant_is_refused_by_sync_and_stays_visible(cli, tmp_path, make_sandbox):
    sb = make_sandbox(orgs={"acme": 5})
    setup_tenant(cli, sb.url)

    cli("tenant", "disable", "acme-corp")
    refused = cli("sync", "--tenant", "acme-corp")
    listed = cli("tenant", "list").stdout

    assert one_line_error(refused) == DISABLED_TENANT
    assert stored(tmp_path, "SELECT count(*) FROM etl_job_runs") == [(0,)]
    assert listed == "1\tacme-corp\tdisabled\n"
    assert len(json.loads(cli("jobs", "--tenant", "acme-corp", "--json").stdout)) == 1
    assert cli("tenant", "enable", "acme-corp").stdout == "tenant acme-corp enabled\n"
    assert cli("tenant", "enable", "acme-corp").stdout == "tenant acme-corp enabled (it already was)\n"
    assert cli("sync", "--tenant", "acme-corp", "--quiet").returncode == 0
    assert stored(tmp_path, "SELECT overall FROM etl_job_runs") == [("FINISHED",)]


def test_the_library_sync_refuses_a_disabled_integration_too(backend: Backend, sandbox, token):
    tenant = add_tenant(backend, sandbox)
    with backend.engine.begin() as conn:
        tenants.set_integration_active(conn, tenant, None, False)

    with pytest.raises(ghetl.Disabled) as refused:
        sync(tenant, engine=backend.engine, broker=backend.broker)

    assert str(refused.value) == DISABLED_INTEGRATION.removeprefix("ghetl: error: ")
    assert backend.scalar("SELECT count(*) FROM etl_job_runs") == 0


def test_several_disabled_integrations_say_which_to_enable(cli):
    setup_tenant(cli, "http://127.0.0.1:9")
    cli("integration", "add", "--tenant", "acme-corp", "--owner", "globex", "--api-url", "http://127.0.0.1:9")
    for n in ("1", "2"):
        cli("integration", "disable", "--tenant", "acme-corp", "--integration", n)

    assert one_line_error(cli("sync", "--tenant", "acme-corp")) == (
        "ghetl: error: tenant acme-corp's integrations (1, 2) are all disabled; enable one with: "
        "ghetl integration enable --tenant acme-corp --integration ID")
    assert "several integrations (1, 2)" in one_line_error(cli("integration", "disable", "--tenant", "acme-corp"))


@pytest.mark.parametrize("settings, says", [
    ('{"include_archived": "sometimes"}', "settings key 'include_archived' must be true or false"),
    ("{oops", "settings are not valid JSON"),
    ('{"visibilty": "public"}', "unknown settings key 'visibilty'"),
])
def test_integration_set_refuses_what_add_refuses_and_changes_nothing(cli, tmp_path, settings, says):
    setup_tenant(cli, "http://127.0.0.1:9", "--settings", '{"include_forks": false}')
    with sqlite3.connect(tmp_path / "cli.db") as conn:
        conn.execute("UPDATE etl_jobs SET last_sync_date = '2026-12-01 10:00:00'")
    at_add = cli("integration", "add", "--tenant", "acme-corp", "--owner", "acme", "--settings", settings)

    refused = cli("integration", "set", "--tenant", "acme-corp", "--settings", settings)

    assert one_line_error(refused) == one_line_error(at_add)
    assert says in one_line_error(refused)
    assert stored(tmp_path, "SELECT settings FROM integrations") == [('{"include_forks":false}',)]
    assert stored(tmp_path, "SELECT last_sync_date FROM etl_jobs") == [("2026-12-01 10:00:00",)]


def test_a_settings_change_says_what_changed_and_makes_the_next_sync_full(cli, tmp_path, make_sandbox):
    sb = make_sandbox(orgs={"acme": 30}, seed=5)
    forks = sum(1 for r in sb.repos("acme") if r["fork"])
    assert 0 < forks < 30
    setup_tenant(cli, sb.url, "--settings", '{"include_forks": false}')
    first = json.loads(cli("sync", "--tenant", "acme-corp", "--json").stdout)
    unchanged = cli("integration", "set", "--tenant", "acme-corp", "--settings", '{"include_forks": false}')
    assert unchanged.stdout == "integration 1: settings unchanged\n"
    assert stored(tmp_path, "SELECT last_sync_date IS NOT NULL FROM etl_jobs") == [(1,)]

    changed = cli("integration", "set", "--tenant", "acme-corp", "--integration", "1",
                  "--settings", '{"visibility": "all"}')
    next_run = json.loads(cli("sync", "--tenant", "acme-corp", "--json").stdout)

    assert changed.stdout.splitlines() == [
        "integration 1: include_forks: false -> true",
        "integration 1: last sync date cleared, so the next ghetl sync is a full one",
    ]
    assert stored(tmp_path, "SELECT settings FROM integrations") == [("{}",)]
    assert first["counts"]["github_repositories"]["embedded"] == 30 - forks
    assert next_run["full"] is True
    assert stored(tmp_path, "SELECT count(*) FROM repositories") == [(30,)]


def test_settings_are_not_changed_under_a_running_job(cli, tmp_path):
    """The run's end would set last_sync_date for the old settings, and the next run would miss
    what the new ones add."""
    setup_tenant(cli, "http://127.0.0.1:9", pull_requests=True)  # the defaults, stored as {}
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'cli.db'}")
    with engine.begin() as conn:
        jobs.start(conn, jobs.list_jobs(conn)[0], full=True)
    engine.dispose()

    refused = cli("integration", "set", "--tenant", "acme-corp", "--settings", '{"include_forks": false}')

    assert one_line_error(refused) == ("ghetl: error: integration 1's job is running; wait for it to end "
                                       "(see: ghetl jobs), then change the settings")
    assert stored(tmp_path, "SELECT settings FROM integrations") == [("{}",)]
