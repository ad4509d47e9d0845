"""Credentials as organisations run them: several tokens, GitHub App installations, the rules on
token variables and plain http, and secrets that leave by no path (issue 18)."""

from __future__ import annotations

import io
import json
import logging
import time

import httpx
import jwt
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ghetl import logs, tenants
from ghetl.github import TokenRejected, credentials
from ghetl.github.auth import AppInstallationAuth

from .conftest import one_line_error

TOKENS = {"A_GITHUB_TOKEN": "ghp_poolTokenAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
          "B_GITHUB_TOKEN": "gho_poolTokenBBBBBBBBBBBBBBBBBBBBBBBBBBBB",
          "GHETL_TOKEN_C": "plain-shape-token-cccc"}


def _keypair() -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


PRIVATE_KEY, PUBLIC_KEY = _keypair()


def _add(embedded, sandbox, token_env: str, **kwargs) -> str:
    with embedded.engine.begin() as conn:
        tenants.add_tenant(conn, "acme-corp")
        kwargs.setdefault("settings", {"pull_requests": False})
        tenants.add_integration(conn, "acme-corp", "acme", api_url=sandbox.url, token_env=token_env, **kwargs)
    return "acme-corp"


def test_three_tokens_finish_a_sync_one_of_them_could_not(embedded, make_sandbox, monkeypatch):
    # 1 200 repositories: 12 listing pages and the owner, 13 points; each token has 9 above its reserve.
    sb = make_sandbox(orgs={"acme": 1200}, tokens=set(TOKENS.values()), core_limit=10)
    for name, value in TOKENS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("GHETL_RATE_LIMIT_MAX_WAIT", "5")
    tenant = _add(embedded, sb, ",".join(TOKENS))

    result = embedded.sync(tenant, full=True)

    assert result.overall == "FINISHED", result.error
    assert result.counts["github_repositories"]["extracted"] == 1200
    assert result.stats["rate_limit_waits"] == 0 and result.stats["waited_seconds"] == 0
    used = {name: sb.rate_limit_of(value)["used"] for name, value in TOKENS.items()}
    assert all(1 <= n <= 9 for n in used.values()), used
    assert sum(used.values()) == result.rate_limit_points


def test_one_token_alone_with_that_limit_stops_with_the_time_to_retry(embedded, make_sandbox, monkeypatch):
    sb = make_sandbox(orgs={"acme": 1200}, tokens={TOKENS["A_GITHUB_TOKEN"]}, core_limit=10)
    monkeypatch.setenv("A_GITHUB_TOKEN", TOKENS["A_GITHUB_TOKEN"])
    monkeypatch.setenv("GHETL_RATE_LIMIT_MAX_WAIT", "5")
    result = embedded.sync(_add(embedded, sb, "A_GITHUB_TOKEN"), full=True)
    assert result.overall == "FAILED"
    assert "rate limit" in result.error and "GHETL_RATE_LIMIT_MAX_WAIT" in result.error


def test_a_token_revoked_mid_run_is_dropped_with_one_warning_and_the_run_finishes(embedded, make_sandbox,
                                                                                 monkeypatch, caplog):
    sb = make_sandbox(orgs={"acme": 800}, tokens=set(TOKENS.values()))
    for name, value in TOKENS.items():
        monkeypatch.setenv(name, value)
    revoked = TOKENS["B_GITHUB_TOKEN"]
    # Revoked while the listing's first page is served: its other pages, sent side by side once
    # that page's links are known, all come after (revoked at page 3, B could have served its
    # last page before the revocation, and nothing was refused).
    sb.inject("mutate", path=r"^/orgs/acme/repos\?", action=lambda s: setattr(s, "tokens", s.tokens - {revoked}))
    caplog.set_level(logging.WARNING)

    result = embedded.sync(_add(embedded, sb, ",".join(TOKENS)), full=True)

    assert result.overall == "FINISHED", result.error
    assert result.counts["github_repositories"]["extracted"] == 800
    dropped = [r.getMessage() for r in caplog.records if "rejected the token" in r.getMessage()]
    assert len(dropped) == 1 and "$B_GITHUB_TOKEN" in dropped[0] and "other 2 tokens" in dropped[0]
    assert revoked not in caplog.text
    # Pages go side by side: every request already in flight with the revoked token is refused
    # (at most GHETL_CONCURRENCY of them), and each is sent again with another token.
    refused = [r.query.get("page") for r in sb.requests if r.status == 401]
    served = {r.query.get("page") for r in sb.requests if r.status == 200}
    assert len(refused) <= 16 and set(refused) <= served


def test_every_token_revoked_stops_the_run_as_one_token_does(embedded, make_sandbox, monkeypatch):
    sb = make_sandbox(orgs={"acme": 300}, tokens={"ghp_acceptedButNotOursXXXXXXXXXXXXXXXXXXXX"})
    for name, value in TOKENS.items():
        monkeypatch.setenv(name, value)
    result = embedded.sync(_add(embedded, sb, ",".join(TOKENS)), full=True)
    assert result.overall == "FAILED" and "token rejected" in result.error


def _app(embedded, sb, monkeypatch) -> str:
    sb.add_app(1234, PUBLIC_KEY, 56789)
    monkeypatch.setenv("ACME_GITHUB_APP_KEY", PRIVATE_KEY)
    return _add(embedded, sb, "GITHUB_TOKEN", app_id="1234", installation_id="56789",
                app_key_env="ACME_GITHUB_APP_KEY")


def test_an_installation_token_expiring_mid_run_is_replaced_once(embedded, make_sandbox, monkeypatch):
    # Used until 5 minutes before it expires: a token of 302 s is replaced after 2 s, and the owner's
    # type, asked before the listing, takes 2.5 s.
    sb = make_sandbox(orgs={"acme": 600}, tokens={"ghp_noPersonalTokenIsAcceptedHereXXXXXXXX"},
                      installation_token_seconds=302)
    sb.inject("delay", path="^/users/acme$", seconds=2.5)
    monkeypatch.delenv("GITHUB_TOKEN", raising=False)
    result = embedded.sync(_app(embedded, sb, monkeypatch), full=True)
    assert result.overall == "FINISHED", result.error
    assert result.counts["github_repositories"]["extracted"] == 600
    assert sb.apps.exchanges == 2
    assert 401 not in [r.status for r in sb.requests]
    # Both installation tokens spent from the installation's one bucket.
    assert sb.limits.peek("installation:56789", "core", True).used == result.rate_limit_points > 0


def test_an_installation_token_refused_mid_run_is_fetched_again_once(embedded, make_sandbox, monkeypatch):
    sb = make_sandbox(orgs={"acme": 600})
    sb.inject("mutate", path="^/orgs/acme/repos", action=lambda s: s.revoke_installation_tokens())  # page 1
    result = embedded.sync(_app(embedded, sb, monkeypatch), full=True)
    assert result.overall == "FINISHED", result.error
    assert sb.apps.exchanges == 2
    # The requests in flight with the revoked token:
    refused = [(r.path, r.query.get("page")) for r in sb.requests if r.status == 401]
    assert refused and len(refused) == len(set(refused))  # each refused once, then sent with the new token


def test_a_forged_jwt_is_one_clear_line(cli, make_sandbox):
    sb = make_sandbox(orgs={"acme": 20})
    sb.add_app(1234, PUBLIC_KEY, 56789)
    forged, _ = _keypair()
    cli("init")
    cli("tenant", "add", "t1")
    added = cli("integration", "add", "--tenant", "t1", "--owner", "acme", "--api-url", sb.url, "--app-id", "1234",
                "--installation-id", "56789", "--app-key-env", "ACME_GITHUB_APP_KEY", ACME_GITHUB_APP_KEY=forged)
    assert added.returncode == 0, added.stderr

    result = cli("-v", "sync", "--tenant", "t1", ACME_GITHUB_APP_KEY=forged)

    line = one_line_error(result)
    assert "GitHub refused the JWT of GitHub App 1234 (401 A JSON web token could not be decoded)" in line
    body = forged.split("-----")[2].strip().splitlines()
    assert not any(part.lower() in (result.stdout + result.stderr).lower() for part in body)


def test_an_expired_jwt_is_refused_with_githubs_words(make_sandbox):
    sb = make_sandbox(orgs={"acme": 5})
    sb.add_app(1234, PUBLIC_KEY, 56789)
    late = AppInstallationAuth("1234", "56789", PRIVATE_KEY, sb.url, clock=lambda: time.time() - 3600)
    with pytest.raises(TokenRejected, match=r"401 'Expiration time' claim \('exp'\) must be a numeric value"):
        late.token()
    long_lived = jwt.encode({"iat": int(time.time()) - 30, "exp": int(time.time()) + 900, "iss": "1234"},
                            PRIVATE_KEY, algorithm="RS256")
    answer = httpx.post(f"{sb.url}/app/installations/56789/access_tokens",
                        headers={"Authorization": f"Bearer {long_lived}"})
    assert answer.status_code == 401
    assert answer.json()["message"] == "'Expiration time' claim ('exp') is too far in the future"
    assert set(answer.json()) >= {"message", "documentation_url"}


def test_a_good_jwt_gets_a_token_shaped_like_githubs(make_sandbox):
    sb = make_sandbox(orgs={"acme": 5}, path_prefix="/api/v3")
    sb.add_app(1234, PUBLIC_KEY, 56789)
    auth = AppInstallationAuth("1234", "56789", PRIVATE_KEY, sb.url)
    token = auth.token()
    assert token.startswith("ghs_") and auth.token() == token and sb.apps.exchanges == 1
    record = next(r for r in sb.requests if r.path.endswith("/access_tokens"))
    assert record.status == 201 and record.path == "/app/installations/56789/access_tokens"
    assert httpx.get(f"{sb.url}/orgs/acme/repos", headers={"Authorization": f"Bearer {token}"}).status_code == 200


@pytest.mark.parametrize("name", ["GHETL_DATABASE_URL", "AWS_SECRET_ACCESS_KEY", "GITHUB_TOKEN_OLD", "HOME"])
def test_token_env_refuses_variables_not_meant_for_github_tokens(cli, name):
    cli("init")
    cli("tenant", "add", "t1")
    line = one_line_error(cli("integration", "add", "--tenant", "t1", "--owner", "acme", "--token-env", name))
    assert f"--token-env {name} is not a name meant for a GitHub token" in line
    assert "GITHUB_TOKEN, GH_TOKEN, NAME_GITHUB_TOKEN or GHETL_TOKEN_NAME" in line
    assert json.loads(cli("integration", "list", "--json").stdout) == []


@pytest.mark.parametrize("name", ["GITHUB_TOKEN", "GH_TOKEN", "ACME_GITHUB_TOKEN", "GHETL_TOKEN_ACME",
                                  "A_GITHUB_TOKEN,GHETL_TOKEN_B"])
def test_token_env_accepts_names_meant_for_github_tokens(name):
    assert credentials.token_env_names(name) == name.split(",")


def test_plain_http_to_another_machine_is_refused_unless_allowed_and_then_warned(cli, caplog, monkeypatch):
    cli("init")
    cli("tenant", "add", "t1")
    add = ("integration", "add", "--tenant", "t1", "--owner", "acme", "--api-url", "http://ghe.example.com/api/v3")
    line = one_line_error(cli(*add, pull_requests=True))
    assert "plain http:// to another machine" in line and "--allow-insecure-http" in line
    assert cli(*add, "--allow-insecure-http", pull_requests=True).returncode == 0
    listed = cli("integration", "list").stdout
    assert "over plain http (allowed)" in listed
    row = json.loads(cli("integration", "list", "--json").stdout)[0]
    assert row["settings"] == {"auth": {"allow_insecure_http": True}}

    caplog.set_level(logging.WARNING)
    monkeypatch.setenv("GITHUB_TOKEN", TOKENS["A_GITHUB_TOKEN"])
    creds = credentials.for_integration({"id": 1, "api_url": row["api_url"], "token_env": "GITHUB_TOKEN",
                                         "settings": row["settings"]})
    assert creds.auth is not None
    assert any("over plain http to ghe.example.com" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="credentials go over https only"):
        credentials.for_integration({"id": 1, "api_url": row["api_url"], "token_env": "GITHUB_TOKEN",
                                     "settings": {}})


def test_redaction_covers_tracebacks_any_length_and_any_case():
    logs.register_secret("s3c")
    logs.register_secret("MixedCaseSecretValue")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.RedactingFormatter("%(message)s"))
    logger = logging.getLogger("ghetl.test_auth_redaction")
    logger.addHandler(handler)
    try:
        try:
            raise RuntimeError("header Authorization: Bearer mixedcasesecretvalue and s3c")
        except RuntimeError:
            logger.exception("failed with MIXEDCASESECRETVALUE")
    finally:
        logger.removeHandler(handler)
    out = stream.getvalue()
    assert "Traceback" in out and "RuntimeError" in out
    assert "mixedcasesecretvalue" not in out.lower() and "s3c" not in out
    assert out.count("[token]") >= 3


def test_leak_scan_a_full_run_leaves_no_secret_anywhere(embedded, make_sandbox, monkeypatch, caplog, tmp_path):
    """Tokens of a pool (one revoked mid-run) and an app's private key, searched for in any case in
    the database, the logs (debug, with tracebacks) and every status event."""
    sb = make_sandbox(orgs={"acme": 400}, tokens=set(TOKENS.values()))
    for name, value in TOKENS.items():
        monkeypatch.setenv(name, value)
    sb.inject("mutate", path="page=2", action=lambda s: setattr(s, "tokens", s.tokens - {TOKENS["GHETL_TOKEN_C"]}))
    sb.inject("status", path="page=3", status=502)
    caplog.set_level(logging.DEBUG)
    events: list[dict] = []
    tenant = _add(embedded, sb, ",".join(TOKENS))
    first = embedded.sync(tenant, full=True, on_event=events.append)
    with embedded.engine.begin() as conn:
        tenants.add_tenant(conn, "app-corp")
        sb.add_app(99, PUBLIC_KEY, 77)
        monkeypatch.setenv("GHETL_APP_KEY_APP", PRIVATE_KEY)
        tenants.add_integration(conn, "app-corp", "acme", api_url=sb.url, app_id="99", installation_id="77",
                                app_key_env="GHETL_APP_KEY_APP", settings={"pull_requests": False})
    second = embedded.sync("app-corp", full=True, on_event=events.append)
    assert (first.overall, second.overall) == ("FINISHED", "FINISHED"), (first.error, second.error)

    with embedded.engine.connect() as conn:
        dump = "\n".join(str(row) for table in sa.inspect(conn).get_table_names()
                         for row in conn.execute(sa.text(f"SELECT * FROM {table}")))
    formatter = logs.RedactingFormatter("%(message)s")
    logged = "\n".join(formatter.format(r) for r in caplog.records)
    text = "\n".join([dump, logged, json.dumps(events, default=str), json.dumps(first.as_dict(), default=str),
                      json.dumps(second.as_dict(), default=str)]).lower()
    secrets = [*TOKENS.values(), PRIVATE_KEY.strip(),
               *(line for line in PRIVATE_KEY.splitlines() if line and not line.startswith("-----"))]
    assert dump and events and logged
    found = [s[:6] + "..." for s in secrets if s.lower() in text]
    assert found == []
