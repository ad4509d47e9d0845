"""The GitHub client against the sandbox: each behaviour GitHub asks of a client, with what it cost.

Client tests talk to the sandbox directly (no database involved); sync tests run the whole job on
both back ends, because there what is stored between runs (ETags, payloads) is the point. Every
test asserts the outcome and the cost: requests, rate-limit points (checked against what the
sandbox charged), and time waited, with waits shrunk through `Policy` or the environment.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import sqlalchemy as sa

from ghetl import logs, tenants
from ghetl.github import (
    GitHubClient,
    GitHubError,
    GitHubUnavailable,
    GitHubUnreachable,
    Policy,
    RateLimited,
    TokenRejected,
)
from ghetl.store import db
from ghetl.store.db import raw_extraction_data, repositories

from .conftest import TOKEN, add_tenant

FAST = Policy(timeout=2.0, retries=3, backoff=0.01, backoff_max=0.05, secondary_wait=0.2, reserve=0, max_wait=5.0)
FAST_ENV = {
    "GHETL_HTTP_TIMEOUT": "2", "GHETL_HTTP_RETRIES": "3", "GHETL_HTTP_BACKOFF": "0.01",
    "GHETL_HTTP_BACKOFF_MAX": "0.05", "GHETL_SECONDARY_RATE_LIMIT_WAIT": "0.2", "GHETL_RATE_LIMIT_MAX_WAIT": "5",
}


@pytest.fixture(autouse=True)
def fast_waits(monkeypatch):
    for name, value in FAST_ENV.items():
        monkeypatch.setenv(name, value)


def client(sb, token=TOKEN, **policy) -> GitHubClient:
    return GitHubClient(sb.url, token, policy=replace(FAST, **policy))


def org_url(c: GitHubClient, owner: str = "acme") -> str:
    return c.listing_url(owner, "Organization")


def charged(sb) -> int:
    return sum(1 for r in sb.requests if r.charged)


def newest_first(sb, owner="acme"):
    return sorted(sb.repos(owner), key=lambda r: (r["updated_at"], r["id"]), reverse=True)


def ids(pages) -> list[int]:
    return [r["id"] for p in pages for r in p.items]


# ----- listing, conditional requests, GHES -----------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "/api/v3"], ids=["github.com", "ghes"])
def test_pages_follow_link_headers_and_cost_a_point_each(make_sandbox, prefix):
    sb = make_sandbox(orgs={"acme": 250}, path_prefix=prefix)
    c = client(sb)

    pages = list(c.paginate(org_url(c)))

    assert [len(p.items) for p in pages] == [100, 100, 50]
    assert sorted(ids(pages)) == sorted(r["id"] for r in sb.repos("acme"))
    assert all(p.next_url.startswith(sb.url + "/organizations/") for p in pages[:-1])
    assert c.stats.requests == len(sb.requests) == 3
    assert c.stats.rate_limit_points == charged(sb) == 3
    assert c.stats.remaining["core"] == 5000 - 3


def test_an_unchanged_page_answers_304_and_costs_nothing(make_sandbox):
    sb = make_sandbox(orgs={"acme": 250})
    c = client(sb)
    first = c.page(org_url(c))
    sb.reset_stats()

    again = c.page(org_url(c), etag=first.etag)

    assert again.not_modified and again.items == []
    assert again.next_url == first.next_url
    assert c.stats.not_modified == 1 and c.stats.requests == 2 and c.stats.rate_limit_points == 1
    assert [(r.status, r.charged) for r in sb.requests] == [(304, False)]
    assert c.stats.remaining["core"] == 5000 - 1


@pytest.mark.parametrize("prefix", ["", "/api/v3"], ids=["github.com", "ghes"])
def test_a_renamed_repository_is_followed_from_its_old_name(make_sandbox, prefix):
    sb = make_sandbox(orgs={"acme": 20}, path_prefix=prefix)
    repo = sb.repos("acme")[3]
    sb.rename(repo["full_name"], "moved-on")
    c = client(sb)

    found = c.get_repository(repo["full_name"])

    assert found["id"] == repo["id"] and found["full_name"] == "acme/moved-on"
    assert [(r.path, r.status) for r in sb.requests] == [
        (f"/repos/{repo['full_name']}", 301), (f"/repositories/{repo['id']}", 200)]
    assert all(r.authenticated for r in sb.requests)
    assert c.stats.requests == 2 and c.stats.rate_limit_points == charged(sb) == 2


def test_a_deleted_repository_is_none(make_sandbox):
    sb = make_sandbox(orgs={"acme": 20})
    repo = sb.repos("acme")[0]
    sb.delete(repo["full_name"])
    c = client(sb)

    assert c.get_repository(repo["id"]) is None
    assert c.stats.requests == 1 and c.stats.retries == 0


def test_the_token_goes_only_to_the_api_host(make_sandbox):
    sb = make_sandbox(orgs={"acme": 20})
    elsewhere = make_sandbox(orgs={"other": 5})
    target = f"{elsewhere.url}/orgs/other"
    sb.inject("status", path="^/orgs/acme$", status=302, headers={"Location": target}, body={"message": "Found"})
    c = client(sb)

    response, body = c.get("/orgs/acme")

    assert response.status_code == 200 and body["login"] == "other"
    assert [r.authenticated for r in sb.requests] == [True]
    assert [(r.path, r.authenticated) for r in elsewhere.requests] == [("/orgs/other", False)]
    assert c.stats.requests == 2


def test_the_clients_token_is_masked_in_any_text_whatever_its_shape():
    token = "0123456789abcdef0123456789abcdef0000beef"
    GitHubClient("http://127.0.0.1:9", token).close()

    assert logs.redact(f"Illegal header value b'Bearer {token}\\r'") == "Illegal header value b'Bearer [token]\\r'"


# ----- faults -----------------------------------------------------------------------------------


def test_server_errors_html_pages_and_dropped_connections_are_retried(make_sandbox):
    sb = make_sandbox(orgs={"acme": 250})
    sb.inject("status", path="&page=2$", times=2, status=502)
    sb.inject("reset", path="&page=2$")
    sb.inject("html", path="&page=3$", status=200)
    sb.inject("html", path="&page=3$", status=503)
    c = client(sb)
    started = time.monotonic()

    pages = list(c.paginate(org_url(c)))

    assert sorted(ids(pages)) == sorted(r["id"] for r in sb.repos("acme"))
    assert [r.fault for r in sb.requests].count(None) == 3
    assert c.stats.requests == len(sb.requests) == 3 + 5
    assert c.stats.retries == 5
    assert c.stats.rate_limit_points == charged(sb) == 3
    # backoff 0.01 s doubling, plus up to 0.01 s jitter, capped at 0.05 s: five waits stay well under 0.5 s
    assert 0.02 < c.stats.waited_seconds < 0.5
    assert time.monotonic() - started < 3


def test_an_api_url_nothing_answers_on_stops_with_the_reason_and_what_to_check():
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    c = GitHubClient(f"http://127.0.0.1:{port}", TOKEN, policy=FAST)

    refused = r"Connection refused.* after 4 attempts; check the integration's API URL"
    with pytest.raises(GitHubUnreachable, match=refused):
        c.page(f"http://127.0.0.1:{port}/orgs/acme/repos?per_page=100")

    assert c.stats.smaller_pages == 0  # a smaller page would not connect either


def test_a_read_timeout_is_retried(make_sandbox):
    sb = make_sandbox(orgs={"acme": 30})
    sb.inject("delay", path="^/orgs/acme/repos", seconds=0.6)
    c = client(sb, timeout=0.2)

    pages = list(c.paginate(org_url(c)))

    assert len(ids(pages)) == 30
    assert c.stats.requests == 2 and c.stats.retries == 1
    assert c.stats.rate_limit_points == 1


def test_a_page_that_keeps_failing_is_fetched_as_two_smaller_pages(make_sandbox):
    sb = make_sandbox(orgs={"acme": 250})
    sb.inject("status", path="per_page=100&page=2$", times=FAST.retries + 1, status=502)
    c = client(sb)

    pages = list(c.paginate(org_url(c)))

    got = ids(pages)
    assert len(got) == len(set(got)) == 250
    assert [(r.per_page, r.query.get("page")) for r in sb.requests if r.status == 200] == [
        (100, None), (50, "3"), (50, "4"), (100, "3")]
    assert c.stats.smaller_pages == 1
    assert c.stats.requests == 4 + FAST.retries + 1
    assert c.stats.rate_limit_points == charged(sb) == 4


def test_retries_are_bounded_and_say_what_failed(make_sandbox):
    sb = make_sandbox(orgs={"acme": 250})
    sb.inject("status", path="repos", times=1000, status=502)
    c = client(sb)

    with pytest.raises(GitHubUnavailable, match=r"kept failing .*502.* after 4 attempts"):
        list(c.paginate(org_url(c)))

    # 100 fails, then its first half of 50, then that one's first half of 25: each FAST.retries + 1 times
    assert c.stats.requests == len(sb.requests) == 3 * (FAST.retries + 1)
    assert sorted({r.per_page for r in sb.requests}) == [None]  # every attempt was a fault, none reached GitHub
    assert c.stats.rate_limit_points == 0


def test_a_rejected_token_stops_at_once(make_sandbox):
    sb = make_sandbox(orgs={"acme": 20}, tokens={"the-right-one"})
    c = client(sb, token="ghp_wrongwrongwrongwrongwrongwrong0001")

    with pytest.raises(TokenRejected, match="token rejected"):
        list(c.paginate(org_url(c)))

    assert c.stats.requests == len(sb.requests) == 1
    assert c.stats.retries == 0 and c.stats.rate_limit_points == 0


# ----- rate limits ------------------------------------------------------------------------------


def test_a_secondary_limit_waits_for_retry_after(make_sandbox):
    sb = make_sandbox(orgs={"acme": 250})
    sb.inject("secondary", path="&page=2$", status=429, retry_after=1)
    c = client(sb)
    started = time.monotonic()

    pages = list(c.paginate(org_url(c)))

    assert len(set(ids(pages))) == 250
    assert c.stats.secondary_limits == 1 and c.stats.requests == 4
    assert c.stats.rate_limit_points == charged(sb) == 3
    assert c.stats.waited_seconds == pytest.approx(1.0)
    assert 1.0 <= time.monotonic() - started < 2.5


def test_a_secondary_limit_without_retry_after_backs_off_from_the_minimum(make_sandbox):
    sb = make_sandbox(orgs={"acme": 250})
    sb.inject("secondary", path="&page=2$", times=2)
    c = client(sb)

    pages = list(c.paginate(org_url(c)))

    assert len(set(ids(pages))) == 250
    assert [r.status for r in sb.requests] == [200, 403, 403, 200, 200]
    assert c.stats.secondary_limits == 2 and c.stats.requests == 5
    assert c.stats.rate_limit_points == charged(sb) == 3
    assert c.stats.waited_seconds == pytest.approx(0.2 + 0.4)


def test_the_sandbox_secondary_limit_is_waited_out(make_sandbox):
    sb = make_sandbox(orgs={"acme": 450}, secondary_limit=(3, 1.0))
    c = client(sb)
    started = time.monotonic()

    pages = list(c.paginate(org_url(c)))

    assert len(set(ids(pages))) == 450
    refused = sum(1 for r in sb.requests if r.status == 403)
    assert refused >= 1 and c.stats.secondary_limits == refused
    assert c.stats.requests == 5 + refused and c.stats.rate_limit_points == charged(sb) == 5
    assert 0.9 <= time.monotonic() - started < 4


def test_a_spent_budget_waits_for_the_reset_with_a_countdown(make_sandbox, caplog):
    sb = make_sandbox(orgs={"acme": 250}, core_limit=2, reset_seconds=1)
    c = client(sb)
    started = time.monotonic()

    with caplog.at_level(logging.INFO, logger="ghetl.github"):
        pages = list(c.paginate(org_url(c)))

    assert len(set(ids(pages))) == 250
    assert c.stats.rate_limit_waits == 1
    assert all(r.status == 200 for r in sb.requests)  # it waited instead of running into a 403
    assert c.stats.requests == 3 and c.stats.rate_limit_points == charged(sb) == 3
    # the sandbox's reset is the next whole second after 1 s, plus the client's margin of 0.5 s
    assert 0.5 <= c.stats.waited_seconds <= 2.6
    assert time.monotonic() - started < 4
    assert re.search(r"core rate limit is spent; it refills at \d\d:\d\d .*: waiting \d", caplog.text)


def test_the_reserve_is_not_spent_and_the_stop_says_when_to_retry(make_sandbox):
    sb = make_sandbox(orgs={"acme": 20})
    sb.set_rate_limit("core", remaining=105, reset_in=3600)
    c = client(sb, reserve=100, max_wait=5.0)

    with pytest.raises(RateLimited) as stopped:
        for _ in range(10):
            c.get("/orgs/acme")

    assert c.stats.requests == len(sb.requests) == 5
    assert c.stats.remaining["core"] == 100
    message = str(stopped.value)
    local = dt.datetime.fromtimestamp(stopped.value.reset_at).astimezone()
    assert f"{local:%H:%M}" in message and re.search(r"\(in (59|60|61) minutes\)", message)
    assert "kept for interactive use" in message and "run the sync again" in message
    assert c.stats.waited_seconds == 0


def test_a_budget_spent_by_someone_else_is_waited_for(make_sandbox):
    sb = make_sandbox(orgs={"acme": 250})
    sb.inject("mutate", path="&page=2$", action=lambda s: s.set_rate_limit("core", remaining=0, reset_in=0.5))
    c = client(sb)

    pages = list(c.paginate(org_url(c)))

    assert len(set(ids(pages))) == 250
    assert [r.status for r in sb.requests] == [200, 403, 200, 200]
    assert c.stats.rate_limit_waits == 1 and 0.5 <= c.stats.waited_seconds <= 2.1
    assert c.stats.requests == 4 and c.stats.rate_limit_points == charged(sb) == 3


# ----- search -----------------------------------------------------------------------------------


def test_search_is_paced_to_its_own_bucket(make_sandbox):
    sb = make_sandbox(orgs={"acme": 600}, search_limit=3, reset_seconds=1)
    c = client(sb)
    started = time.monotonic()

    pages = list(c.search_repositories("user:acme stars:>=0"))

    expected = {r["id"] for r in sb.repos("acme") if not r["fork"]}  # GitHub's search leaves forks out
    assert set(ids(pages)) == expected and len(pages) == -(-len(expected) // 100)
    assert all(r.status == 200 and r.resource == "search" for r in sb.requests)
    assert c.stats.requests == len(pages) and c.stats.rate_limit_waits >= (len(pages) - 1) // 3
    assert c.stats.remaining.keys() == {"search"}
    assert time.monotonic() - started < len(pages) + 1


def test_search_over_the_cap_is_split_by_creation_date(make_sandbox):
    sb = make_sandbox(orgs={"big": 2600}, search_limit=1000)
    c = client(sb)

    pages = list(c.search_repositories("user:big stars:>=0"))

    expected = {r["id"] for r in sb.repos("big") if not r["fork"]}
    assert len(expected) > 2000
    assert set(ids(pages)) == expected
    assert all(r.status == 200 for r in sb.requests)  # never asked past the cap (422)
    assert max(len(r.query["q"]) for r in sb.requests) < 256
    assert c.stats.search_parts > 3 and c.stats.search_capped == 0
    assert c.stats.requests == len(sb.requests) == c.stats.rate_limit_points
    # each part costs its pages; only the parts found over the cap cost one probe more
    probes = c.stats.search_parts - len({p.url.split("&page=")[0] for p in pages})
    assert c.stats.requests == len(pages) + probes


def test_an_incremental_search_over_the_cap_stops_at_the_cutoff_without_splitting(make_sandbox):
    sb = make_sandbox(orgs={"big": 2600}, search_limit=1000)
    hundredth = [r for r in newest_first(sb, "big") if not r["fork"]][99]["updated_at"]
    since = dt.datetime.fromisoformat(hundredth.replace("Z", "+00:00")) + dt.timedelta(seconds=1)
    c = client(sb)

    pages = list(c.search_repositories("user:big stars:>=0", updated_since=since))

    assert len(pages) == 1 and c.stats.requests == 1 and c.stats.search_parts == 1


def test_incomplete_results_are_retried_then_reported(make_sandbox, caplog):
    sb = make_sandbox(orgs={"acme": 150})
    sb.inject("incomplete", path="search")
    c = client(sb)

    pages = list(c.search_repositories("user:acme stars:>=0"))

    assert not any(p.incomplete for p in pages) and c.stats.incomplete_results == 0
    assert c.stats.requests == len(pages) + 1

    sb.inject("incomplete", path="search", times=FAST.retries + 1)
    with caplog.at_level(logging.WARNING, logger="ghetl.github"):
        pages = list(c.search_repositories("user:acme stars:>=0"))
    assert pages[0].incomplete and c.stats.incomplete_results == 1
    assert "stayed incomplete" in caplog.text


def test_a_search_query_over_256_characters_is_refused_before_it_is_sent(make_sandbox):
    sb = make_sandbox(orgs={"acme": 20})
    c = client(sb)

    with pytest.raises(GitHubError, match="256"):
        list(c.search_repositories("user:acme " + "payments " * 30))

    assert sb.requests == [] and c.stats.requests == 0


# ----- the whole job, both back ends -------------------------------------------------------------


def repo_rows(backend) -> dict[str, dict]:
    with backend.engine.connect() as conn:
        return {r["external_id"]: dict(r) for r in conn.execute(sa.select(repositories)).mappings()}


def run_payloads(backend, run_id) -> list[dict]:
    with backend.engine.connect() as conn:
        return conn.execute(
            sa.select(raw_extraction_data.c.raw_data).where(raw_extraction_data.c.run_id == run_id)
        ).scalars().all()


@pytest.fixture
def small(make_sandbox):
    return make_sandbox(orgs={"acme": 250}, users={"octocat": 12, "hubot": 20})


def test_an_incremental_sync_with_nothing_changed_makes_one_free_request(backend, small, token):
    tenant = add_tenant(backend, small)
    first = backend.sync(tenant)
    assert (first.requests, first.not_modified, first.rate_limit_points) == (4, 0, 4)  # owner type, 3 pages
    small.reset_stats()

    result = backend.sync(tenant)

    assert result.overall == "FINISHED" and not result.full
    assert (result.requests, result.not_modified, result.rate_limit_points) == (1, 1, 0)
    assert [(r.status, r.charged) for r in small.requests] == [(304, False)]
    assert result.counts["github_repositories"]["extracted"] == 0
    assert len(repo_rows(backend)) == 250


def test_a_full_sync_of_unchanged_pages_gives_every_repository_from_stored_payloads(backend, small, token):
    tenant = add_tenant(backend, small)
    backend.sync(tenant)
    small.reset_stats()

    result = backend.sync(tenant, full=True)

    assert result.overall == "FINISHED"
    assert (result.requests, result.not_modified, result.rate_limit_points) == (3, 3, 0)
    assert charged(small) == 0
    payloads = run_payloads(backend, result.run_id)
    assert sorted(p["id"] for p in payloads) == sorted(r["id"] for r in small.repos("acme"))
    listed = {r["id"]: r for r in small.repos("acme")}
    assert all(p["full_name"] == listed[p["id"]]["full_name"] for p in payloads)
    assert result.counts["github_repositories"] == {"extracted": 250, "transformed": 250, "embedded": 250, "failed": 0}


def test_a_page_whose_stored_payloads_are_gone_is_fetched_in_full(backend, small, token):
    tenant = add_tenant(backend, small)
    backend.sync(tenant)
    lost = newest_first(small)[150]["id"]
    with backend.engine.begin() as conn:
        conn.execute(raw_extraction_data.delete().where(raw_extraction_data.c.external_id == str(lost)))
    small.reset_stats()

    result = backend.sync(tenant, full=True)

    assert result.overall == "FINISHED"
    assert sorted((r.query.get("page") or "1", r.status) for r in small.requests) == [
        ("1", 304), ("2", 200), ("2", 304), ("3", 304)]
    assert (result.requests, result.not_modified, result.rate_limit_points) == (4, 3, 1)
    assert sorted(p["id"] for p in run_payloads(backend, result.run_id)) == sorted(r["id"] for r in small.repos("acme"))


def test_a_rate_limit_stop_keeps_what_landed_and_the_next_run_resumes(backend, make_sandbox, token):
    sb = make_sandbox(orgs={"acme": 250}, core_limit=3, reset_seconds=3600)
    tenant = add_tenant(backend, sb)

    stopped = backend.sync(tenant)

    assert stopped.overall == "FAILED"
    assert re.search(r"core rate limit .* until \d\d:\d\d .*\(in (59|60) minutes\).*run the sync again", stopped.error)
    assert (stopped.requests, stopped.rate_limit_points) == (3, 3)  # owner type, page 1, and page 2 or 3
    landed, left = ("2", "3") if any(r.query.get("page") == "2" for r in sb.requests) else ("3", "2")
    assert len(repo_rows(backend)) == {"2": 200, "3": 150}[landed]
    with backend.engine.connect() as conn:
        job = conn.execute(sa.text("select last_sync_date, error_message from etl_jobs")).one()
    assert job.last_sync_date is None and job.error_message == stopped.error

    sb.set_rate_limit("core", limit=5000, remaining=5000, reset_in=3600)
    sb.reset_stats()
    resumed = backend.sync(tenant)

    assert resumed.overall == "FINISHED"
    assert (resumed.requests, resumed.not_modified, resumed.rate_limit_points) == (3, 2, 1)
    assert sorted((r.query.get("page") or "1", r.status) for r in sb.requests) == sorted(
        [("1", 304), (landed, 304), (left, 200)])
    rows = repo_rows(backend)
    assert set(rows) == {str(r["id"]) for r in sb.repos("acme")}
    assert backend.scalar("select count(*) from repositories") == 250


def test_faults_and_secondary_limits_cost_retries_not_items(backend, small, token):
    tenant = add_tenant(backend, small)
    small.inject("status", path="&page=2$", times=2, status=502)
    small.inject("html", path="&page=3$", status=200)
    small.inject("reset", path="^/users/acme$")
    small.inject("secondary", path="^/orgs/acme/repos")

    result = backend.sync(tenant)

    assert result.overall == "FINISHED"
    assert result.counts["github_repositories"] == {"extracted": 250, "transformed": 250, "embedded": 250, "failed": 0}
    assert len(repo_rows(backend)) == 250
    assert result.requests == len(small.requests) == 4 + 5
    assert result.rate_limit_points == charged(small) == 4
    assert result.stats["secondary_limits"] == 1 and result.stats["retries"] == 5
    assert 0.2 <= result.stats["waited_seconds"] < 1.0


def test_a_repository_skipped_between_pages_is_caught_by_the_next_incremental_run(backend, small, token, monkeypatch):
    monkeypatch.setenv("GHETL_CONCURRENCY", "1")  # the skip needs page 2 served before page 3
    tenant = add_tenant(backend, small)
    order = newest_first(small)
    skipped, repeated = order[230], order[99]
    small.inject("mutate", path="&page=2$", action=lambda s: s.touch(skipped["id"], description="touched mid-run"))

    first = backend.sync(tenant)

    assert first.overall == "FINISHED"
    assert str(skipped["id"]) not in repo_rows(backend)
    payloads = run_payloads(backend, first.run_id)
    assert len(payloads) == len({p["id"] for p in payloads}) == 249  # the repeated one was kept once
    assert repeated["id"] in {p["id"] for p in payloads}
    small.reset_stats()

    second = backend.sync(tenant)

    assert second.overall == "FINISHED"
    rows = repo_rows(backend)
    assert len(rows) == 250 and rows[str(skipped["id"])]["description"] == "touched mid-run"
    assert (second.requests, second.rate_limit_points) == (1, 1)
    assert [p["id"] for p in run_payloads(backend, second.run_id)] == [skipped["id"]]


def test_a_repository_github_keeps_failing_on_is_skipped_not_the_run(backend, small, token):
    tenant = add_tenant(backend, small)
    backend.sync(tenant)
    broken = small.repos("acme")[4]
    small.transfer(broken["full_name"], "elsewhere")
    small.inject("status", path=f"^/repositories/{broken['id']}$", times=100, status=500)

    result = backend.sync(tenant, full=True)

    assert result.overall == "FINISHED" and result.stats["unavailable"] == 1
    row = repo_rows(backend)[str(broken["id"])]
    assert row["full_name"] == broken["full_name"] and row["active"]
    assert result.counts["github_repositories"]["extracted"] == 249
    assert result.requests == 3 + FAST.retries + 1 and result.rate_limit_points == 3


def test_rename_and_transfer_update_the_same_row(backend, small, token):
    tenant = add_tenant(backend, small)
    backend.sync(tenant)
    before = repo_rows(backend)
    renamed, moved = small.repos("acme")[7], small.repos("acme")[8]
    small.rename(renamed["full_name"], "renamed-here")
    small.transfer(moved["full_name"], "elsewhere")
    small.reset_stats()

    result = backend.sync(tenant, full=True)

    rows = repo_rows(backend)
    assert result.overall == "FINISHED" and len(rows) == 250
    assert rows[str(renamed["id"])]["full_name"] == "acme/renamed-here"
    assert rows[str(moved["id"])]["full_name"] == f"elsewhere/{moved['name']}"
    assert rows[str(renamed["id"])]["id"] == before[str(renamed["id"])]["id"]
    assert rows[str(moved["id"])]["id"] == before[str(moved["id"])]["id"]
    # three changed pages, and the transferred repository fetched by id
    assert [r.path for r in small.requests][-1] == f"/repositories/{moved['id']}"
    assert (result.requests, result.rate_limit_points) == (4, 4)


def test_a_users_own_token_lists_private_repositories_and_another_users_lists_public(backend, small, token):
    own = add_tenant(backend, small, name="own", owner="octocat")
    other = add_tenant(backend, small, name="other", owner="hubot")

    first = backend.sync(own)
    backend.sync(other)

    rows = repo_rows(backend)
    octocat = {str(r["id"]) for r in small.repos("octocat")}
    hubot_public = {str(r["id"]) for r in small.repos("hubot") if not r["private"]}
    assert any(r["private"] for r in small.repos("octocat")) and any(r["private"] for r in small.repos("hubot"))
    assert {k for k, r in rows.items() if r["owner"] == "octocat"} == octocat
    assert {k for k, r in rows.items() if r["owner"] == "hubot"} == hubot_public
    assert first.requests == 3  # owner type, whose token this is, one page
    small.reset_stats()

    again = backend.sync(own)

    assert (again.requests, again.not_modified, again.rate_limit_points) == (2, 2, 0)
    assert [r.path for r in small.requests] == ["/user", "/user/repos"]


def test_a_token_without_a_user_lists_a_users_public_repositories(embedded, small, token):
    tenant = add_tenant(embedded, small, name="app", owner="octocat")
    small.inject("status", path="^/user$", status=403,
                 body={"message": "Resource not accessible by integration", "status": "403"})

    result = embedded.sync(tenant)

    assert result.overall == "FINISHED"
    assert set(repo_rows(embedded)) == {str(r["id"]) for r in small.repos("octocat") if not r["private"]}
    assert [r.path for r in small.requests] == ["/users/octocat", "/user", "/users/octocat/repos"]


def test_a_settings_change_fetches_cached_pages_in_full_again(backend, small, token):
    tenant = add_tenant(backend, small, settings={"include_forks": False})
    backend.sync(tenant)
    forks = {str(r["id"]) for r in small.repos("acme") if r["fork"]}
    assert forks and not forks & set(repo_rows(backend))
    with backend.engine.begin() as conn:
        integration = tenants.get_integration(conn, tenants.get_tenant(conn, tenant)["id"])["id"]
        tenants.update_settings(conn, integration, {"pull_requests": False})
    small.reset_stats()

    result = backend.sync(tenant, full=True)

    assert forks <= set(repo_rows(backend)) and len(repo_rows(backend)) == 250
    assert (result.requests, result.not_modified, result.rate_limit_points) == (3, 0, 3)


def test_ghes_listing_renames_and_search(backend, make_sandbox, token):
    sb = make_sandbox(orgs={"acme": 150}, path_prefix="/api/v3")
    assert sb.url.endswith("/api/v3")
    tenant = add_tenant(backend, sb)
    searched = add_tenant(backend, sb, name="searched", settings={"repository_filter": "stars:>=0"})
    backend.sync(tenant)
    renamed = sb.repos("acme")[0]
    sb.rename(renamed["full_name"], "on-ghes")

    full = backend.sync(tenant, full=True)
    found = backend.sync(searched)

    assert full.overall == found.overall == "FINISHED"
    names = {r["full_name"] for r in repo_rows(backend).values()}
    assert "acme/on-ghes" in names
    assert found.counts["github_repositories"]["extracted"] == sum(1 for r in sb.repos("acme") if not r["fork"])
    assert all(r.status in (200, 304) for r in sb.requests)


# ----- the token --------------------------------------------------------------------------------


def database_text(backend) -> str:
    with backend.engine.connect() as conn:
        return "\n".join(
            json.dumps([list(row) for row in conn.execute(sa.select(table))], default=str)
            for table in db.metadata.sorted_tables
        )


def test_the_token_never_appears_in_logs_errors_payloads_or_the_database(embedded, make_sandbox, token, caplog):
    sb = make_sandbox(orgs={"acme": 250}, core_limit=3, reset_seconds=3600)
    tenant = add_tenant(embedded, sb)
    sb.inject("status", path="&page=2$", status=502)
    sb.inject("secondary", path="^/orgs/acme/repos")

    with caplog.at_level(logging.DEBUG):
        stopped = embedded.sync(tenant)
        rejected_sb = make_sandbox(orgs={"acme": 5}, tokens={"someone-else"})
        rejected = add_tenant(embedded, rejected_sb, name="rejected")
        refused = embedded.sync(rejected)

    assert stopped.overall == refused.overall == "FAILED"
    assert "token rejected" in refused.error and "rate limit" in stopped.error
    assert all(r.authenticated for r in sb.requests)  # the token was sent, so there was something to leak
    outputs = [caplog.text, database_text(embedded), json.dumps(stopped.as_dict(), default=str),
               json.dumps(refused.as_dict(), default=str), repr(GitHubClient(sb.url, token))]
    for text in outputs:
        assert token not in text
    assert len(caplog.records) > 10


def test_sync_json_reports_requests_304s_and_points(embedded, make_sandbox):
    sb = make_sandbox(orgs={"acme": 250})
    add_tenant(embedded, sb)
    env = {**os.environ, **embedded.env, "GHETL_BROKER_URL": "memory://", "GITHUB_TOKEN": TOKEN}

    def ghetl(*args):
        done = subprocess.run([sys.executable, "-m", "ghetl", *args], env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        assert TOKEN not in done.stdout + done.stderr
        return done.stdout

    first = json.loads(ghetl("sync", "--tenant", "acme-corp", "--json"))
    second = json.loads(ghetl("sync", "--tenant", "acme-corp", "--json"))

    assert (first["requests"], first["not_modified"], first["rate_limit_points"]) == (4, 0, 4)
    assert (second["requests"], second["not_modified"], second["rate_limit_points"]) == (1, 1, 0)
    assert charged(sb) == 4 and len(sb.requests) == 5


def test_a_bad_waiting_setting_is_refused_before_the_job_starts(embedded, make_sandbox, token, monkeypatch):
    sb = make_sandbox(orgs={"acme": 5})
    tenant = add_tenant(embedded, sb)
    monkeypatch.setenv("GHETL_RATE_LIMIT_MAX_WAIT", "an hour")

    with pytest.raises(ValueError, match="GHETL_RATE_LIMIT_MAX_WAIT must be a number, got 'an hour'"):
        embedded.sync(tenant)

    assert json.loads(embedded.scalar("select status from etl_jobs"))["overall"] == "READY"
    assert sb.requests == []
