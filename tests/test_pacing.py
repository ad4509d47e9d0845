"""Requests side by side within GitHub's rules: the pacer's limits as the sandbox counts them,
a secondary limit holding every request of the token, and pages that land out of order giving
exactly what one page after the other gives."""

from __future__ import annotations

import threading
import time

import pytest

from ghetl.github import GitHubClient, pacer
from ghetl.github.fanout import concurrently
from ghetl.github.pacer import Limits, Pacer

from .conftest import add_tenant
from .test_github import charged, client, fast_waits, newest_first, org_url, repo_rows, run_payloads  # noqa: F401


def listing_pages(c: GitHubClient) -> list[str]:
    first = c.page(org_url(c))
    return [first.url, *first.following()]


def test_following_pages_come_from_the_last_link_in_github_s_own_form(make_sandbox):
    sb = make_sandbox(orgs={"acme": 450})
    c = client(sb)

    urls = listing_pages(c)

    assert len(urls) == 5
    assert all("/organizations/" in u for u in urls[1:])  # as GitHub's Link header writes them
    assert [u.rsplit("page=", 1)[1] for u in urls[1:]] == ["2", "3", "4", "5"]
    sequential = [p.url for p in c.paginate(org_url(c))]
    assert urls == sequential


def test_the_pacer_keeps_to_its_concurrency_as_the_sandbox_counts_it(make_sandbox, monkeypatch):
    monkeypatch.setenv("GHETL_CONCURRENCY", "4")
    sb = make_sandbox(orgs={"acme": 2000}, latency_ms=40, jitter_ms=20, max_concurrent=4)
    c = client(sb)
    urls = listing_pages(c)
    sb.reset_stats()

    pages = list(concurrently(c.page, urls[1:], workers=12))  # more threads than the pacer lets through

    assert sorted(r["id"] for p in pages for r in p.items) == sorted(
        r["id"] for r in newest_first(sb)[100:])
    assert [r.status for r in sb.requests] == [200] * 19  # the sandbox refused nothing
    assert sb.in_flight.most_per_caller == 4 and c.pacer.most_in_flight == 4


def test_past_github_s_concurrency_a_secondary_limit_halves_it(make_sandbox, monkeypatch):
    monkeypatch.setenv("GHETL_CONCURRENCY", "8")
    sb = make_sandbox(orgs={"acme": 3000}, latency_ms=40, max_concurrent=3)
    c = client(sb)
    urls = listing_pages(c)

    pages = list(concurrently(c.page, urls[1:], workers=8))

    assert len({r["id"] for p in pages for r in p.items}) == 2900
    assert c.stats.secondary_limits >= 1
    assert c.pacer.concurrency < 8


def test_the_per_minute_points_are_kept_without_a_refusal(make_sandbox, monkeypatch):
    monkeypatch.setattr(pacer, "WINDOW_SECONDS", 1.0)  # GitHub's minute, shrunk
    monkeypatch.setenv("GHETL_REST_POINTS_PER_MINUTE", "4")
    sb = make_sandbox(orgs={"acme": 1000}, secondary_limit=(4, 1.0))
    c = client(sb)
    started = time.monotonic()

    pages = list(concurrently(c.page, [org_url(c), *[f"{org_url(c)}&page={n}" for n in range(2, 11)]], workers=8))

    assert len({r["id"] for p in pages for r in p.items}) == 1000
    assert [r.status for r in sb.requests] == [200] * 10 and c.stats.secondary_limits == 0
    assert 2.0 <= time.monotonic() - started < 4.0  # 4, 4 and 2 requests in three windows


def test_a_secondary_limit_holds_every_request_of_the_token_for_its_retry_after(make_sandbox, monkeypatch, caplog):
    monkeypatch.setenv("GHETL_CONCURRENCY", "4")
    sb = make_sandbox(orgs={"acme": 2000}, latency_ms=20)
    c = client(sb)
    urls = listing_pages(c)
    sb.reset_stats()
    sb.inject("secondary", path="&page=4$", retry_after=1)

    pages = list(concurrently(c.page, urls[1:], workers=4))

    assert len({r["id"] for p in pages for r in p.items}) == 1900
    refused = next(r for r in sb.requests if r.status == 403)
    after = [r.time - refused.time for r in sb.requests if r.time > refused.time]
    in_flight = [t for t in after if t < 0.1]  # sent before the refusal came back (20 ms a reply)
    assert len(in_flight) <= 3 and all(t >= 0.95 for t in after if t >= 0.1)  # then nothing before the retry-after
    assert "waits 1.0 s, then 2 go at once instead of 4" in caplog.text and c.stats.secondary_limits == 1
    assert c.pacer.concurrency == 4  # grown back over the answers since
    assert [r.status for r in sb.requests].count(200) == 19


def test_concurrency_grows_back_after_a_secondary_limit():
    p = Pacer(Limits(concurrency=8))
    p.hold(0)
    assert p.concurrency == 4
    for _ in range(4):
        p.answered()
    assert p.concurrency == 5
    for _ in range(100):
        p.answered()
    assert p.concurrency == 8


def test_a_pacer_lets_no_more_than_its_concurrency_through():
    p = Pacer(Limits(concurrency=3))
    inside, most, lock = [0], [0], threading.Lock()

    def request(_: int) -> None:
        with p.slot("rest"):
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            time.sleep(0.01)
            with lock:
                inside[0] -= 1

    list(concurrently(request, range(30), workers=10))

    assert most[0] == 3 == p.most_in_flight


def test_a_failure_among_concurrent_calls_keeps_what_finished_and_is_raised():
    finished: list[int] = []

    def call(n: int) -> int:
        if n == 5:
            raise ValueError("item 5 is broken")
        time.sleep(0.001)
        return n

    with pytest.raises(ValueError, match="item 5"):
        for n in concurrently(call, range(1000), workers=4):
            finished.append(n)

    assert 5 not in finished and len(finished) < 20  # no new calls once one failed


def test_an_invalid_concurrency_says_what_to_set(monkeypatch):
    monkeypatch.setenv("GHETL_CONCURRENCY", "500")
    with pytest.raises(ValueError, match="GHETL_CONCURRENCY=500: GitHub allows 1 to 100"):
        Limits.from_env()


def test_pages_landing_out_of_order_give_exact_rows_and_per_page_304s(backend, make_sandbox, token, monkeypatch):
    monkeypatch.setenv("GHETL_CONCURRENCY", "8")
    sb = make_sandbox(orgs={"acme": 1250}, latency_ms=30, jitter_ms=25)
    tenant = add_tenant(backend, sb)

    first = backend.sync(tenant)

    assert first.overall == "FINISHED"
    assert set(repo_rows(backend)) == {str(r["id"]) for r in sb.repos("acme")}
    assert sb.in_flight.most_per_caller > 1
    sb.reset_stats()

    second = backend.sync(tenant, full=True)

    assert second.overall == "FINISHED"
    statuses = sorted((int(r.query.get("page", 1)), r.status) for r in sb.requests if r.path.endswith("/repos"))
    assert statuses == [(n, 304) for n in range(1, 14)] and charged(sb) == 0
    assert sorted(p["id"] for p in run_payloads(backend, second.run_id)) == sorted(r["id"] for r in sb.repos("acme"))
