"""Behaviour of the GitHub sandbox over real HTTP, with httpx as the client."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from ghetl.sandbox import THEMES, Sandbox
from ghetl.sandbox.data import ANCHOR

TOKEN = "ghp_sandboxOwnTestToken0000000000000000001"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LINK = re.compile(r'<([^>]+)>; rel="(\w+)"')


def links(response: httpx.Response) -> list[tuple[str, str]]:
    """(rel, url) pairs in header order."""
    return [(rel, url) for url, rel in LINK.findall(response.headers.get("link", ""))]


def walk(client: httpx.Client, url: str, **kwargs) -> tuple[list[dict], int]:
    """Follow rel="next" to the end; returns the items and the number of pages."""
    items, pages = [], 0
    while url:
        response = client.get(url, **kwargs)
        assert response.status_code == 200, response.text
        items.extend(response.json())
        pages += 1
        url = dict(links(response)).get("next")
        kwargs.pop("params", None)
    return items, pages


@pytest.fixture(scope="module")
def sb():
    with Sandbox(orgs={"acme": 250, "globex": 40}, users={"octocat": 12}, seed=3) as sandbox:
        yield sandbox


@pytest.fixture()
def client(sb):
    with httpx.Client(base_url=sb.url, headers=AUTH, timeout=10) as c:
        yield c


@pytest.fixture()
def fresh():
    """A private sandbox for tests that mutate or exhaust something."""
    started = []

    def make(**kwargs) -> Sandbox:
        kwargs.setdefault("orgs", {"acme": 60})
        started.append(Sandbox(**kwargs).start())
        return started[-1]

    yield make
    for sandbox in started:
        sandbox.stop()


# ----- pagination ------------------------------------------------------------------------------

def test_pagination_walks_every_repository_exactly_once(sb, client):
    items, pages = walk(client, "/orgs/acme/repos", params={"per_page": 30})
    ids = [item["id"] for item in items]
    assert len(ids) == len(set(ids)) == 250
    assert set(ids) == {r["id"] for r in sb.repos("acme")}
    assert pages == 9


def test_unauthenticated_listing_shows_public_repositories_only(sb):
    with httpx.Client(base_url=sb.url) as anonymous:
        items, _ = walk(anonymous, "/orgs/acme/repos", params={"per_page": 100})
    assert {i["id"] for i in items} == {r["id"] for r in sb.repos("acme") if not r["private"]}
    assert all("permissions" not in i for i in items)


def test_link_header_format_order_and_id_based_paths(sb, client):
    org_id = client.get("/orgs/acme").json()["id"]
    base = f"{sb.url}/organizations/{org_id}/repos"
    first = client.get("/orgs/acme/repos", params={"per_page": 100, "sort": "updated"})
    assert first.headers["link"] == (f'<{base}?per_page=100&sort=updated&page=2>; rel="next", '
                                     f'<{base}?per_page=100&sort=updated&page=3>; rel="last"')
    middle = client.get(dict(links(first))["next"])
    assert [rel for rel, _ in links(middle)] == ["prev", "next", "last", "first"]
    last = client.get(dict(links(middle))["last"])
    assert [rel for rel, _ in links(last)] == ["prev", "first"]
    assert len(last.json()) == 50
    single = client.get("/orgs/acme/repos", params={"per_page": 100, "type": "forks"})
    assert "link" not in single.headers


def test_user_listing_links_to_user_id_path_and_keeps_params(sb, client):
    user_id = client.get("/users/octocat").json()["id"]
    response = client.get("/users/octocat/repos", params={"per_page": 2, "direction": "desc"})
    assert response.status_code == 200
    rels = dict(links(response))
    assert rels["next"] == f"{sb.url}/user/{user_id}/repos?per_page=2&direction=desc&page=2"
    assert client.get(rels["next"]).status_code == 200
    names = [r["full_name"] for r in walk(client, "/users/octocat/repos")[0]]
    public = sorted((r["full_name"] for r in sb.repos("octocat") if not r["private"]), key=str.lower)
    assert names == public


def test_viewer_repos_include_private_ones(sb, client):
    items, _ = walk(client, "/user/repos", params={"per_page": 100, "affiliation": "owner"})
    assert {i["id"] for i in items} == {r["id"] for r in sb.repos("octocat")}
    assert client.get("/user").json()["login"] == "octocat"


def test_sort_updated_desc_and_default_created_order(sb, client):
    items, _ = walk(client, "/orgs/acme/repos", params={"per_page": 100, "sort": "updated"})
    stamps = [i["updated_at"] for i in items]
    assert stamps == sorted(stamps, reverse=True)
    default = client.get("/orgs/acme/repos", params={"per_page": 100}).json()
    created = [i["created_at"] for i in default]
    assert created == sorted(created, reverse=True)
    by_name = client.get("/orgs/acme/repos", params={"per_page": 100, "sort": "full_name"}).json()
    assert [i["full_name"].lower() for i in by_name] == sorted(i["full_name"].lower() for i in by_name)


# ----- conditional requests and rate limits --------------------------------------------------------

def test_304_with_if_none_match_is_free_when_authenticated(fresh):
    sb = fresh()
    with httpx.Client(base_url=sb.url, headers=AUTH) as client:
        first = client.get("/orgs/acme/repos")
        etag = first.headers["etag"]
        assert etag.startswith('W/"')
        remaining = int(first.headers["x-ratelimit-remaining"])
        again = client.get("/orgs/acme/repos", headers={"If-None-Match": etag})
        assert again.status_code == 304 and again.content == b""
        assert again.headers["etag"] == etag
        assert int(again.headers["x-ratelimit-remaining"]) == remaining
        assert sb.requests[-1].charged is False
        name = first.json()[0]["full_name"]
        repo = client.get(f"/repos/{name}")
        assert client.get(f"/repos/{name}", headers={"If-Modified-Since": repo.headers["last-modified"]}
                          ).status_code == 304
        sb.touch(name)
        changed = client.get(f"/repos/{name}", headers={"If-None-Match": repo.headers["etag"]})
        assert changed.status_code == 200
        assert int(changed.headers["x-ratelimit-remaining"]) == remaining - 2
    with httpx.Client(base_url=sb.url) as anonymous:
        first = anonymous.get("/orgs/acme/repos")
        again = anonymous.get("/orgs/acme/repos", headers={"If-None-Match": first.headers["etag"]})
        assert again.status_code == 304
        assert int(again.headers["x-ratelimit-remaining"]) == int(first.headers["x-ratelimit-remaining"]) - 1


def test_rate_limit_decrements_exhausts_and_resets(fresh):
    sb = fresh(core_limit=3, reset_seconds=3600)
    with httpx.Client(base_url=sb.url, headers=AUTH) as client:
        seen = [int(client.get("/orgs/acme").headers["x-ratelimit-remaining"]) for _ in range(3)]
        assert seen == [2, 1, 0]
        blocked = client.get("/orgs/acme")
        assert blocked.status_code == 403
        assert blocked.headers["x-ratelimit-remaining"] == "0"
        assert int(blocked.headers["x-ratelimit-reset"]) > time.time()
        body = blocked.json()
        assert body["message"].startswith("API rate limit exceeded for user ID ")
        assert body["documentation_url"] == "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"
        assert body["status"] == "403"
        assert client.get("/rate_limit").json()["resources"]["core"]["remaining"] == 0
        sb.set_rate_limit("core", remaining=0, reset_in=0.5)
        reset = int(client.get("/orgs/acme").headers["x-ratelimit-reset"])
        time.sleep(max(0.0, reset - time.time()) + 0.05)
        refilled = client.get("/orgs/acme")
        assert refilled.status_code == 200
        assert refilled.headers["x-ratelimit-remaining"] == "2"


def test_each_token_and_anonymous_caller_has_its_own_bucket(fresh):
    sb = fresh(core_limit=100)
    one = httpx.get(f"{sb.url}/orgs/acme", headers={"Authorization": "token one"})
    two = httpx.get(f"{sb.url}/orgs/acme", headers={"Authorization": "token two"})
    anonymous = httpx.get(f"{sb.url}/orgs/acme")
    assert one.headers["x-ratelimit-remaining"] == two.headers["x-ratelimit-remaining"] == "99"
    assert anonymous.headers["x-ratelimit-limit"] == "60"
    assert anonymous.headers["cache-control"] == "public, max-age=60, s-maxage=60"
    assert one.headers["cache-control"] == "private, max-age=60, s-maxage=60"


def test_search_has_its_own_bucket(fresh):
    sb = fresh()
    with httpx.Client(base_url=sb.url, headers=AUTH) as client:
        core = client.get("/orgs/acme")
        found = client.get("/search/repositories", params={"q": "org:acme"})
        assert found.headers["x-ratelimit-resource"] == "search"
        assert found.headers["x-ratelimit-limit"] == "30"
        assert found.headers["x-ratelimit-remaining"] == "29"
        assert found.headers["cache-control"] == "no-cache" and "etag" not in found.headers
        assert client.get("/orgs/acme").headers["x-ratelimit-remaining"] == str(
            int(core.headers["x-ratelimit-remaining"]) - 1)
        limits = client.get("/rate_limit")
        assert limits.json()["resources"]["search"]["used"] == 1
        assert limits.headers["x-ratelimit-remaining"] == client.get("/rate_limit").headers["x-ratelimit-remaining"]
    assert httpx.get(f"{sb.url}/search/repositories", params={"q": "x"}).headers["x-ratelimit-limit"] == "10"


def test_secondary_limit_answers_403_with_retry_after(fresh):
    sb = fresh(secondary_limit=(3, 30))
    with httpx.Client(base_url=sb.url, headers=AUTH) as client:
        statuses = [client.get("/orgs/acme").status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 403]
        blocked = client.get("/orgs/acme")
        assert blocked.json()["message"].startswith("You have exceeded a secondary rate limit")
        assert 1 <= int(blocked.headers["retry-after"]) <= 30
        assert int(blocked.headers["x-ratelimit-remaining"]) > 0


# ----- search ---------------------------------------------------------------------------------

def test_search_caps_results_at_1000(fresh):
    sb = fresh(orgs={"acme": 1150})
    with httpx.Client(base_url=sb.url, headers=AUTH) as client:
        first = client.get("/search/repositories", params={"q": "org:acme fork:true", "per_page": 100})
        assert first.json()["total_count"] == 1150
        assert dict(links(first))["last"].endswith("page=10")
        tenth = client.get("/search/repositories", params={"q": "org:acme fork:true", "per_page": 100, "page": 10})
        assert len(tenth.json()["items"]) == 100
        assert [rel for rel, _ in links(tenth)] == ["prev", "first"]
        beyond = client.get("/search/repositories", params={"q": "org:acme fork:true", "per_page": 100, "page": 11})
        assert beyond.status_code == 422
        assert beyond.json()["message"] == "Only the first 1000 search results are available"
        too_long = client.get("/search/repositories", params={"q": "a" * 257})
        assert too_long.status_code == 422
        assert too_long.json()["errors"][0] == {"message": "The search is longer than 256 characters.",
                                                "resource": "Search", "field": "q", "code": "invalid"}


def test_search_qualifiers_and_words(sb, client):
    def search(q: str, **params) -> dict:
        response = client.get("/search/repositories", params={"q": q, "per_page": 100, **params})
        assert response.status_code == 200, response.text
        return response.json()

    repos = sb.repos("acme")
    go = search("org:acme language:go fork:true")
    assert go["total_count"] == sum(1 for r in repos if r["language"] == "Go")
    assert all(i["score"] >= 1 for i in go["items"])
    archived = search("org:acme archived:true")
    assert {i["id"] for i in archived["items"]} == {r["id"] for r in repos if r["archived"] and not r["fork"]}
    since = search("org:acme fork:only created:>=2020-01-01")
    assert {i["id"] for i in since["items"]} == {r["id"] for r in repos
                                                  if r["fork"] and r["created_at"] >= "2020-01-01"}
    topic = next(t for r in repos for t in r["topics"])
    tagged = search(f"topic:{topic} org:acme fork:true")
    assert tagged["total_count"] == sum(1 for r in repos if topic in r["topics"])
    private = search("org:acme is:private fork:true")
    assert private["total_count"] == sum(1 for r in repos if r["visibility"] == "private")
    with httpx.Client(base_url=sb.url) as anonymous:
        hidden = anonymous.get("/search/repositories", params={"q": "org:acme is:private"}).json()
    assert hidden["total_count"] == 0
    word = next(r["name"].split("-")[0] for r in repos if "-" in r["name"])
    named = search(f"{word} in:name org:acme fork:true")
    assert named["total_count"] == sum(1 for r in repos if word.lower() in r["name"].lower())
    starred = search("org:acme fork:true", sort="stars", order="asc")["items"]
    assert [i["stargazers_count"] for i in starred] == sorted(i["stargazers_count"] for i in starred)


def test_incomplete_results_fault(sb, client):
    sb.inject("incomplete", path="search")
    assert client.get("/search/repositories", params={"q": "org:acme"}).json()["incomplete_results"] is True
    assert client.get("/search/repositories", params={"q": "org:acme"}).json()["incomplete_results"] is False


# ----- authentication, renames, deletes ----------------------------------------------------------

def test_unknown_token_gets_401_when_tokens_are_configured(fresh):
    sb = fresh(tokens=["good-token"])
    bad = httpx.get(f"{sb.url}/orgs/acme", headers={"Authorization": "Bearer wrong"})
    assert bad.status_code == 401
    assert bad.json() == {"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest",
                          "status": "401"}
    assert httpx.get(f"{sb.url}/orgs/acme", headers={"Authorization": "token good-token"}).status_code == 200
    assert httpx.get(f"{sb.url}/orgs/acme").status_code == 200
    assert "wrong" not in repr(sb.requests) and "good-token" not in repr(sb.requests)


def test_rename_and_transfer_answer_301_to_repositories_id(fresh):
    sb = fresh(orgs={"acme": 30, "globex": 5})
    with httpx.Client(base_url=sb.url, headers=AUTH) as client:
        repo = sb.repos("acme")[0]
        sb.rename(repo["full_name"], "brand-new-name")
        moved = client.get(f"/repos/{repo['full_name']}")
        assert moved.status_code == 301
        target = f"{sb.url}/repositories/{repo['id']}"
        assert moved.headers["location"] == target
        assert moved.json() == {"message": "Moved Permanently", "url": target,
                                "documentation_url": "https://docs.github.com/v3/#http-redirects"}
        followed = client.get(f"/repos/{repo['full_name']}", follow_redirects=True)
        assert followed.json()["full_name"] == "acme/brand-new-name" and followed.json()["id"] == repo["id"]
        other = sb.repos("acme")[1]
        sb.transfer(other["full_name"], "globex")
        assert client.get(f"/repos/{other['full_name']}").status_code == 301
        listed, _ = walk(client, "/orgs/acme/repos", params={"per_page": 100})
        assert other["id"] not in {i["id"] for i in listed}
        assert other["id"] in {i["id"] for i in walk(client, "/orgs/globex/repos")[0]}


def test_delete_gives_404_by_name_and_by_id(fresh):
    sb = fresh()
    repo = sb.repos("acme")[3]
    sb.delete(repo["full_name"])
    with httpx.Client(base_url=sb.url, headers=AUTH) as client:
        for path in (f"/repos/{repo['full_name']}", f"/repositories/{repo['id']}"):
            gone = client.get(path)
            assert gone.status_code == 404
            assert gone.json()["message"] == "Not Found" and gone.json()["status"] == "404"
        assert client.get("/orgs/nobody/repos").status_code == 404
    assert repo["id"] not in {r["id"] for r in sb.repos("acme")}


def test_touch_is_the_only_recent_change(fresh):
    sb = fresh()
    day_ago = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert all(r["updated_at"] < day_ago and r["created_at"] <= r["updated_at"] for r in sb.repos("acme"))
    name = sb.repos("acme")[7]["full_name"]
    touched = sb.touch(name, description="Invoice reconciliation for the new ledger")
    assert touched["description"] == "Invoice reconciliation for the new ledger"
    assert touched["updated_at"] == touched["pushed_at"] > day_ago
    with httpx.Client(base_url=sb.url, headers=AUTH) as client:
        top = client.get("/orgs/acme/repos", params={"sort": "updated"}).json()[0]
    assert top["full_name"] == name


# ----- faults ---------------------------------------------------------------------------------

def test_status_fault_then_recovery(fresh):
    sb = fresh()
    sb.inject("status", path=r"/orgs/acme/repos", times=2, status=502)
    with httpx.Client(base_url=sb.url, headers=AUTH) as client:
        first = client.get("/orgs/acme/repos")
        assert first.status_code == 502 and first.json() == {"message": "Server Error"}
        assert client.get("/orgs/acme/repos").status_code == 502
        assert client.get("/orgs/acme/repos").status_code == 200
    assert [r.fault for r in sb.requests] == ["status", "status", None]
    assert [r.charged for r in sb.requests] == [False, False, True]


def test_html_fault_is_labelled_json(fresh):
    sb = fresh()
    sb.inject("html", status=503)
    sb.inject("html", status=200)
    for expected in (503, 200):
        response = httpx.get(f"{sb.url}/orgs/acme")
        assert response.status_code == expected
        assert response.headers["content-type"] == "application/json; charset=utf-8"
        assert response.text.startswith("<html>")
        with pytest.raises(ValueError):
            response.json()


def test_reset_fault_drops_the_connection(fresh):
    sb = fresh()
    sb.inject("reset", path="repos")
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        httpx.get(f"{sb.url}/orgs/acme/repos")
    assert httpx.get(f"{sb.url}/orgs/acme/repos").status_code == 200
    assert sb.requests[0].status is None and sb.requests[0].fault == "reset"


def test_delay_fault(fresh):
    sb = fresh()
    sb.inject("delay", seconds=0.4)
    started = time.perf_counter()
    assert httpx.get(f"{sb.url}/orgs/acme").status_code == 200
    assert time.perf_counter() - started >= 0.4
    with pytest.raises(httpx.ReadTimeout):
        sb.inject("delay", seconds=0.5)
        httpx.get(f"{sb.url}/orgs/acme", timeout=0.1)


def test_secondary_fault_403_with_and_429_without_retry_after(fresh):
    sb = fresh()
    sb.inject("secondary", retry_after=42)
    sb.inject("secondary", status=429)
    first = httpx.get(f"{sb.url}/orgs/acme/repos", headers=AUTH)
    assert first.status_code == 403 and first.headers["retry-after"] == "42"
    assert first.json()["documentation_url"].endswith("secondary-rate-limits")
    second = httpx.get(f"{sb.url}/orgs/acme/repos", headers=AUTH)
    assert second.status_code == 429 and "retry-after" not in second.headers
    assert "x-ratelimit-reset" in second.headers


def test_mutate_between_pages_shifts_offset_pagination(fresh):
    sb = fresh(orgs={"acme": 40})
    sb.inject("mutate", path="page=2", action=lambda s: s.create("acme", "brand-new-service"))
    with httpx.Client(base_url=sb.url, headers=AUTH) as client:
        items, _ = walk(client, "/orgs/acme/repos", params={"per_page": 10})
    ids = [i["id"] for i in items]
    assert len(ids) == 41 and len(set(ids)) == 40
    assert "acme/brand-new-service" not in {i["full_name"] for i in items}


def test_stop_closes_kept_alive_connections():
    sb = Sandbox(orgs={"acme": 5}).start()
    with httpx.Client(base_url=sb.url) as client:
        assert client.get("/orgs/acme").status_code == 200
        sb.stop()
        with pytest.raises(httpx.TransportError):
            client.get("/orgs/acme")


def test_clear_faults(fresh):
    sb = fresh()
    sb.inject("status", times=5)
    sb.clear_faults()
    assert httpx.get(f"{sb.url}/orgs/acme").status_code == 200
    with pytest.raises(ValueError):
        sb.inject("earthquake")


# ----- GHES prefix, control API, CLI ------------------------------------------------------------

def test_ghes_path_prefix(fresh):
    sb = fresh(path_prefix="/api/v3")
    assert sb.url.endswith("/api/v3")
    web = sb.url[: -len("/api/v3")]
    with httpx.Client(base_url=sb.url, headers=AUTH) as client:
        first = client.get("/orgs/acme/repos", params={"per_page": 10})
        org_id = client.get("/orgs/acme").json()["id"]
        assert dict(links(first))["next"] == f"{sb.url}/organizations/{org_id}/repos?per_page=10&page=2"
        item = first.json()[0]
        assert item["url"] == f"{sb.url}/repos/{item['full_name']}"
        assert item["html_url"] == f"{web}/{item['full_name']}"
        assert first.headers["x-github-enterprise-version"]
        assert len(walk(client, "/orgs/acme/repos", params={"per_page": 25})[0]) == 60
    assert httpx.get(f"{web}/orgs/acme/repos").status_code == 404
    assert sb.requests[0].path == "/orgs/acme/repos"


def test_http_control_api(fresh):
    sb = fresh()
    control = f"{sb.url}/_sandbox"
    name = sb.repos("acme")[0]["full_name"]
    assert httpx.post(f"{control}/touch", json={"repo": name, "description": "über-ledger"}).json()[
        "description"] == "über-ledger"
    created = httpx.post(f"{control}/create", json={"owner": "acme", "name": "made-over-http",
                                                    "visibility": "private"}).json()
    assert created["private"] is True
    assert httpx.post(f"{control}/rename", json={"repo": created["id"], "new_name": "renamed-over-http"}
                      ).json()["full_name"] == "acme/renamed-over-http"
    assert httpx.post(f"{control}/delete", json={"repo": "acme/renamed-over-http"}).status_code == 200
    assert httpx.post(f"{control}/delete", json={"repo": "acme/renamed-over-http"}).status_code == 404
    assert httpx.post(f"{control}/inject", json={"fault": "status", "status": 500, "times": 1}).status_code == 200
    assert httpx.get(f"{sb.url}/orgs/acme").status_code == 500
    httpx.post(f"{control}/inject", json={"fault": "mutate", "path": "page=2", "op": "touch", "args": {"repo": name}})
    httpx.get(f"{sb.url}/orgs/acme/repos?page=2")
    assert sb.repo(name)["updated_at"] > "2026-01-01"
    httpx.post(f"{control}/inject", json={"fault": "status", "times": 3})
    httpx.post(f"{control}/clear_faults")
    httpx.post(f"{control}/set_rate_limit", json={"resource": "core", "remaining": 0, "reset_in": 60})
    assert httpx.get(f"{sb.url}/orgs/acme").status_code == 403
    logged = httpx.get(f"{control}/requests").json()
    assert [r["status"] for r in logged] == [500, 200, 403]
    assert all(not r["path"].startswith("/_sandbox") for r in logged)
    httpx.post(f"{control}/reset_stats")
    assert httpx.get(f"{control}/requests").json() == []
    assert httpx.get(f"{control}/themes", params={"repo": name}).json() == sb.themes_of(name)
    assert httpx.get(f"{control}/info").json()["owners"][0]["login"] == "acme"
    assert httpx.post(f"{control}/nonsense").status_code == 404


def test_cli_serves_until_sigterm():
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    process = subprocess.Popen([sys.executable, "-m", "ghetl.sandbox", "--port", "0", "--orgs", "acme:15",
                                "--users", "octocat:3", "--path-prefix", "/api/v3"],
                               stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = process.stdout.readline().strip()
        assert re.fullmatch(r"GitHub sandbox serving acme \(15 repos\), octocat \(3 repos\) at "
                            r"http://127\.0\.0\.1:\d+/api/v3", line), line
        url = line.rsplit(" ", 1)[1]
        assert len(httpx.get(f"{url}/orgs/acme/repos", headers=AUTH).json()) == 15
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0


# ----- generated data -----------------------------------------------------------------------------

def test_generation_is_deterministic_and_realistic():
    one = Sandbox(orgs={"acme": 400}, users={"octocat": 50}, seed=5)
    two = Sandbox(orgs={"acme": 400}, users={"octocat": 50}, seed=5)
    other = Sandbox(orgs={"acme": 400}, users={"octocat": 50}, seed=6)
    assert one.repos("acme") == two.repos("acme")
    assert [r["name"] for r in one.repos("acme")] != [r["name"] for r in other.repos("acme")]
    repos = one.repos("acme") + one.repos("octocat")
    share = lambda test: sum(1 for r in repos if test(r)) / len(repos)  # noqa: E731
    assert 0.04 < share(lambda r: r["description"] is None) < 0.18
    assert 0.03 < share(lambda r: r["language"] is None) < 0.16
    assert 0.04 < share(lambda r: r["archived"]) < 0.18
    assert 0.08 < share(lambda r: r["fork"]) < 0.25
    assert share(lambda r: r["license"] is None) > 0.1
    assert any(r["pushed_at"] is None for r in repos) or share(lambda r: r["size"] == 0) > 0
    assert any(not (r["description"] or "").isascii() for r in repos)
    assert {r["visibility"] for r in one.repos("acme")} == {"public", "private", "internal"}
    assert {r["visibility"] for r in one.repos("octocat")} <= {"public", "private"}
    assert all(0 <= len(r["topics"]) <= 6 for r in repos)
    assert len({r["id"] for r in repos}) == len(repos)
    assert max(r["updated_at"] for r in repos) <= ANCHOR.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert min(r["created_at"] for r in repos) < "2016"


def test_themes_of_ground_truth():
    sb = Sandbox(orgs={"acme": 300}, seed=9)
    repos = sb.repos("acme")
    themes = [sb.themes_of(r["full_name"]) for r in repos]
    assert all(t and set(t) <= set(THEMES) for t in themes)
    assert len({t[0] for t in themes}) >= 12
    payments = [r for r, t in zip(repos, themes, strict=True) if t == ["payments"] and r["description"]]
    vocabulary = {w for p in THEMES["payments"].phrases + THEMES["payments"].actions for w in p.lower().split()}
    assert all(set(r["description"].lower().replace(":", "").split()) & vocabulary for r in payments)
    assert sb.themes_of(repos[0]["id"]) == themes[0]


def test_requests_are_recorded(fresh):
    sb = fresh()
    httpx.get(f"{sb.url}/orgs/acme/repos", params={"per_page": 7, "page": 2}, headers=AUTH)
    httpx.get(f"{sb.url}/rate_limit")
    record, free = sb.requests
    assert (record.method, record.path, record.query, record.status) == (
        "GET", "/orgs/acme/repos", {"per_page": "7", "page": "2"}, 200)
    assert record["resource"] == "core" and record.charged and record.per_page == 7 and record.authenticated
    assert free.charged is False
    sb.reset_stats()
    assert sb.requests == []


def test_ten_thousand_repositories_timing(capsys):
    started = time.perf_counter()
    sb = Sandbox(orgs={"acme": 10_000})
    generated = time.perf_counter() - started
    with sb, httpx.Client(base_url=sb.url, headers=AUTH) as client:
        started = time.perf_counter()
        items, pages = walk(client, "/orgs/acme/repos", params={"per_page": 100})
        listed = time.perf_counter() - started
        started = time.perf_counter()
        walk(client, "/orgs/acme/repos", params={"per_page": 100})
        relisted = time.perf_counter() - started
    assert len(items) == 10_000 and pages == 100
    with capsys.disabled():
        print(f"\nsandbox: generated 10000 repositories in {generated:.2f}s; listed 100 pages in {listed:.2f}s "
              f"(cold) and {relisted:.2f}s (cached)")


def test_latency_delays_each_reply_while_serving_others_at_once() -> None:
    """`--latency-ms` plays GitHub's 0.3-1 s a request: eight requests at once take one delay, not eight."""
    from concurrent.futures import ThreadPoolExecutor

    with Sandbox(orgs={"acme": 3}, seed=1, latency_ms=300, jitter_ms=50) as sb:
        started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda _: httpx.get(f"{sb.url}/orgs/acme", timeout=10).status_code, range(8)))
        elapsed = time.monotonic() - started
        info = httpx.get(f"{sb.url}/_sandbox/info", timeout=10).json()
    assert codes == [200] * 8
    assert 0.25 <= elapsed < 1.2, elapsed
    assert info["max_in_flight"] == 8 and info["in_flight"] == 0 and info["latency_ms"] == 300
    with pytest.raises(ValueError, match="jitter at most the latency"):
        Sandbox(latency_ms=10, jitter_ms=20)
