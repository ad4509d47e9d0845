"""How a request proves who it is, as an `httpx.Auth`: the transport never sets credentials itself.

Three kinds, chosen per integration (`credentials`):

- `TokenAuth`: one personal access token (or any bearer token);
- `TokenPool`: several tokens, each with its own rate-limit buckets read from the answers; a
  request goes to the token with the most points left, and a token GitHub answers 401 is
  dropped for the run with one warning naming its variable;
- `AppInstallationAuth`: a GitHub App installation, whose short-lived token is exchanged for a
  JWT signed with the app's private key, cached until five minutes before it expires, and
  fetched again once when GitHub answers 401.

Every kind attaches credentials to requests for the API's own origin only (a `Link` URL or a
redirect that points elsewhere gets none), refuses to be built for a plain-http origin other
than a loopback host unless the integration allows it, and registers every secret it holds
(tokens, the private key, JWTs) with the log redaction as soon as it holds it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx
import jwt

from .. import __version__, logs
from .errors import GitHubError, GitHubUnavailable, TokenRejected, message

if TYPE_CHECKING:
    from .transport import Bucket

log = logging.getLogger(__name__)

REFRESH_MARGIN = 300.0
"""An installation token is used until this many seconds before its `expires_at`, then replaced."""
JWT_BACKDATE = 60
"""GitHub's advice: set `iat` 60 s in the past, against clock drift between us and GitHub."""
JWT_LIFETIME = 540
"""`exp` - `iat` in seconds: GitHub refuses more than 10 minutes; 9 leave room for drift."""
EXCHANGE_ATTEMPTS = 3


def origin(url: httpx.URL) -> tuple[str, str, int | None]:
    """Scheme, host and port: what must match for a request to carry the token."""
    return url.scheme, url.host.lower(), url.port


def is_loopback(host: str) -> bool:
    """Whether a host name or address is this machine (the sandbox), where plain http is safe."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def plain_http(api_url: str) -> bool:
    """True for an http:// API root on another machine: credentials would cross the network in clear."""
    url = httpx.URL(api_url)
    return url.scheme == "http" and not is_loopback(url.host)


class InsecureTransport(ValueError):
    """Credentials would go over plain http to another machine, and nobody allowed it."""


def _check_origin(api_url: str, allow_insecure_http: bool) -> tuple[str, str, int | None]:
    if plain_http(api_url) and not allow_insecure_http:
        raise InsecureTransport(
            f"the API URL {httpx.URL(api_url).copy_with(path='/')} is plain http to another machine: GitHub "
            "credentials are sent over https only (or to a loopback host); use https://, or add the integration "
            "with --allow-insecure-http if this network is trusted"
        )
    return origin(httpx.URL(api_url))


class TokenAuth(httpx.Auth):
    """A bearer token for one API origin; registered with the log redaction when made."""

    def __init__(self, token: str, api_url: str, *, allow_insecure_http: bool = False) -> None:
        self._origin = _check_origin(api_url, allow_insecure_http)
        self._token = token
        logs.register_secret(token)

    @property
    def pacing_key(self) -> str:
        """What GitHub's secondary limits count by: the token, as a digest (never the token itself)."""
        return "token:" + hashlib.sha256(self._token.encode()).hexdigest()[:16]

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if origin(request.url) == self._origin:
            request.headers["Authorization"] = f"Bearer {self._token}"
        yield request

    def __repr__(self) -> str:
        return "TokenAuth(token=set)"


# ----- several tokens ------------------------------------------------------------------------


def resource_of(path: str) -> str:
    """The rate-limit bucket a request spends from, as GitHub names it in `x-ratelimit-resource`."""
    if path.endswith("/graphql"):
        return "graphql"
    return "search" if "/search/" in path else "core"


def reserve_of(resource: str, bucket: Bucket, reserve: int) -> int:
    """Points of a bucket kept for people using the same token: core only, at most a tenth of it."""
    return min(reserve, bucket.limit // 10) if resource == "core" else 0


@dataclass
class _Member:
    name: str
    token: str
    buckets: dict[str, Bucket]
    used: int = 0


class TokenPool(httpx.Auth):
    """Several tokens (`--token-env A,B,C`), each named by its variable.

    Each answer's `x-ratelimit-*` headers update the bucket of the token that made the request;
    each request goes to the token with the most points left in its bucket (one not heard of
    yet counts as full). `bucket` tells the transport's rate-limit gate the bucket the next
    request would spend from, so that it waits only when every token is spent, until the first
    of them refills. A 401 drops the token for the rest of the run with one warning, and the
    same request is sent again with another; when none is left, the 401 reaches the transport,
    which stops the run as for one token.
    """

    requires_response_body = True  # a 401's message goes into the warning; every answer is read anyway

    def __init__(self, tokens: dict[str, str], api_url: str, *, allow_insecure_http: bool = False) -> None:
        if not tokens:
            raise ValueError("a token pool needs at least one token")
        self._origin = _check_origin(api_url, allow_insecure_http)
        self._members = [_Member(name, token, {}) for name, token in tokens.items()]
        self._lock = threading.Lock()
        for token in tokens.values():
            logs.register_secret(token)

    @property
    def pacing_key(self) -> str:
        """The pool as a whole, as a digest of its tokens."""
        digest = hashlib.sha256("\n".join(sorted(m.token for m in self._members)).encode()).hexdigest()[:16]
        return "tokens:" + digest

    @property
    def names(self) -> list[str]:
        """The variables of the tokens still in use."""
        with self._lock:
            return [m.name for m in self._members]

    def usage(self) -> dict[str, int]:
        """Requests sent with each token still in use, by its variable's name."""
        with self._lock:
            return {m.name: m.used for m in self._members}

    def bucket(self, resource: str, reserve: int) -> Bucket | None:
        """The bucket the next request to `resource` would spend from, for the rate-limit gate.

        None while some token's bucket is unknown or refilled (the request may go ahead); the
        bucket with the most points above its reserve otherwise; when every token is spent,
        the one that refills first, which is how long the gate has to wait.
        """
        with self._lock:
            buckets = [self._fresh(m, resource) for m in self._members]
        if not buckets or any(b is None for b in buckets):
            return None
        known = [b for b in buckets if b is not None]
        best = max(known, key=lambda b: b.remaining - reserve_of(resource, b, reserve))
        if best.remaining > reserve_of(resource, best, reserve):
            return best
        return min(known, key=lambda b: b.reset)

    def forget(self, resource: str, bucket: Bucket) -> None:
        """After the gate waited for `bucket`'s reset: that token counts as full again."""
        with self._lock:
            for member in self._members:
                if member.buckets.get(resource) is bucket:
                    del member.buckets[resource]

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if origin(request.url) != self._origin:
            yield request
            return
        resource = resource_of(request.url.path)
        while True:
            member = self._choose(resource)
            request.headers["Authorization"] = f"Bearer {member.token}"
            response = yield request
            if response.status_code != 401:
                self._observe(member, response)
                return
            if not self._drop(member, response):
                return

    def _choose(self, resource: str) -> _Member:
        with self._lock:
            member = max(self._members, key=lambda m: _points(self._fresh(m, resource)) - m.used * 1e-9)
            member.used += 1
            return member

    def _fresh(self, member: _Member, resource: str) -> Bucket | None:
        bucket = member.buckets.get(resource)
        if bucket is not None and bucket.reset <= time.time():
            del member.buckets[resource]
            return None
        return bucket

    def _observe(self, member: _Member, response: httpx.Response) -> None:
        from .transport import Bucket

        headers = response.headers
        resource, remaining = headers.get("x-ratelimit-resource"), headers.get("x-ratelimit-remaining")
        if resource is None or remaining is None:
            return
        bucket = Bucket(int(headers.get("x-ratelimit-limit", 0)), int(remaining),
                        float(headers.get("x-ratelimit-reset", 0)))
        with self._lock:
            member.buckets[resource] = bucket

    def _drop(self, member: _Member, response: httpx.Response) -> bool:
        """Drop a token GitHub refused; whether another is left to send the request with."""
        with self._lock:
            if member in self._members:
                self._members.remove(member)
                left = len(self._members)
                if left:
                    log.warning("GitHub rejected the token in $%s (%d %s); this run goes on with the other %d "
                                "token%s", member.name, response.status_code, message(response) or "Bad credentials",
                                left, "" if left == 1 else "s")
            return bool(self._members)

    def __repr__(self) -> str:
        return f"TokenPool({', '.join('$' + n for n in self.names)})"


def _points(bucket: Bucket | None) -> float:
    return float("inf") if bucket is None else bucket.remaining


# ----- GitHub App installations --------------------------------------------------------------


class AppInstallationAuth(httpx.Auth):
    """A GitHub App installation: installation tokens (`ghs_...`, an hour on github.com) got for
    a JWT that the app's private key signs (RS256, `iss` the app's id), as GitHub documents.

    The token is cached until `REFRESH_MARGIN` before its `expires_at`, so a long run replaces
    it before GitHub would refuse it; a 401 all the same (revoked, clocks apart) fetches a new
    one and sends the request once more. The exchange has a small client of its own: its
    answer spends from the app's bucket, not the installation's, so it must not move the
    transport's rate-limit gate. `transport` is for tests (an `httpx.MockTransport`).
    """

    def __init__(self, app_id: str, installation_id: str, private_key: str, api_url: str, *,
                 allow_insecure_http: bool = False, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None, clock: Callable[[], float] = time.time) -> None:
        self._origin = _check_origin(api_url, allow_insecure_http)
        self.app_id, self.installation_id = str(app_id), str(installation_id)
        self._api_url = api_url.rstrip("/")
        self._key = private_key
        _register_key(private_key)
        self._clock = clock
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = threading.Lock()
        self.exchanges = 0
        self._http = httpx.Client(timeout=timeout, transport=transport, headers={
            "Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28",
            "User-Agent": f"ghetl/{__version__}"})

    @property
    def pacing_key(self) -> str:
        """GitHub limits an installation as a whole, whatever token it holds at the moment."""
        return f"installation:{self.app_id}:{self.installation_id}"

    def close(self) -> None:
        self._http.close()

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if origin(request.url) != self._origin:
            yield request
            return
        token = self.token()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401:
            log.info("GitHub refused the installation token of app %s; getting a new one", self.app_id)
            request.headers["Authorization"] = f"Bearer {self.token(refused=token)}"
            yield request

    def token(self, refused: str | None = None) -> str:
        """The installation token, fetched when there is none, it is `REFRESH_MARGIN` from
        expiring, or it is the one GitHub just `refused` (another thread may have replaced it)."""
        with self._lock:
            stale = self._token is None or self._clock() >= self._expires_at - REFRESH_MARGIN
            if stale or (refused is not None and self._token == refused):
                self._token, self._expires_at = self._exchange()
            assert self._token is not None
            return self._token

    def signed_jwt(self) -> str:
        """A JWT for this app, as GitHub asks: RS256, `iat` a minute back, `exp` under 10 minutes on."""
        now = int(self._clock())
        try:
            token = jwt.encode({"iat": now - JWT_BACKDATE, "exp": now - JWT_BACKDATE + JWT_LIFETIME,
                                "iss": self.app_id}, self._key, algorithm="RS256")
        except (ValueError, TypeError, jwt.PyJWTError) as exc:
            raise ValueError(f"the private key of GitHub App {self.app_id} cannot sign a JWT ({type(exc).__name__}); "
                             "give the app's PEM private key, as GitHub generated it") from None
        logs.register_secret(token)
        return token

    def _exchange(self) -> tuple[str, float]:
        url = f"{self._api_url}/app/installations/{self.installation_id}/access_tokens"
        response = None
        for attempt in range(EXCHANGE_ATTEMPTS):
            try:
                response = self._http.post(url, headers={"Authorization": f"Bearer {self.signed_jwt()}"})
            except httpx.TransportError as exc:
                if attempt + 1 == EXCHANGE_ATTEMPTS:
                    raise GitHubUnavailable(f"could not get an installation token of GitHub App {self.app_id} "
                                            f"from {self._api_url} ({type(exc).__name__})") from None
            else:
                if response.status_code < 500:
                    break
            time.sleep(0.5 * 2 ** attempt)
        assert response is not None
        self.exchanges += 1
        return self._judge(response)

    def _judge(self, response: httpx.Response) -> tuple[str, float]:
        status = response.status_code
        why = message(response) or f"HTTP {status}"
        if status == 401:
            raise TokenRejected(f"GitHub refused the JWT of GitHub App {self.app_id} (401 {why}): check --app-id "
                                "and that the private key is this app's, current and not revoked, and this "
                                "machine's clock")
        if status == 404:
            raise GitHubError(f"GitHub App {self.app_id} has no installation {self.installation_id} at "
                              f"{self._api_url} (404); check --installation-id")
        if status >= 500:
            raise GitHubUnavailable(f"GitHub kept failing to give an installation token of GitHub App "
                                    f"{self.app_id} ({status})")
        if status != 201:
            raise GitHubError(f"GitHub answered {status} when asked for an installation token of GitHub App "
                              f"{self.app_id}: {why}")
        try:
            body = response.json()
            token, expires = str(body["token"]), body["expires_at"]
            expires_at = dt.datetime.fromisoformat(expires.replace("Z", "+00:00")).timestamp()
        except (ValueError, KeyError, TypeError, AttributeError):
            raise GitHubError(f"GitHub's answer with an installation token of GitHub App {self.app_id} "
                              "lacks a token or its expires_at") from None
        logs.register_secret(token)
        log.info("installation token of GitHub App %s (installation %s) valid until %s", self.app_id,
                 self.installation_id, expires)
        return token, expires_at

    def __repr__(self) -> str:
        return f"AppInstallationAuth(app={self.app_id}, installation={self.installation_id})"


def _register_key(private_key: str) -> None:
    """The whole PEM and each of its base64 lines: a traceback or a message may hold a part of it."""
    logs.register_secret(private_key.strip())
    for line in private_key.splitlines():
        line = line.strip()
        if line and not line.startswith("-----"):
            logs.register_secret(line)
