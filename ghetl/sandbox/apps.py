"""GitHub App installations, as GitHub serves them.

An app is registered with its public key; `POST /app/installations/{id}/access_tokens` takes a
JWT signed RS256 by the app's private key and checks it as GitHub does: the signature, `iss`
(the app's id), `iat` not in the future beyond a minute of clock drift, and `exp` in the future
and at most ten minutes after `iat`. A bad one is a 401 with GitHub's body. The answer is 201
`{"token", "expires_at", "permissions", "repository_selection"}` (recording
Installation.testGetRepos), a `ghs_` token that stops working at `expires_at` (an hour on
GitHub; `token_seconds` here, so that a test can see one expire mid-run). Requests with an
installation token spend from the installation's buckets, whichever of its tokens they carry.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import jwt

from .errors import REST_DOCS

DOCS = "https://docs.github.com/rest/apps/apps#create-an-installation-access-token-for-an-app"
JWT_DOCS = "https://docs.github.com/apps/creating-github-apps/authenticating-with-a-github-app/generating-a-json-web-token-jwt-for-a-github-app"
MAX_JWT_SECONDS = 600
CLOCK_DRIFT = 60


@dataclass
class Installation:
    id: int
    app_id: str
    account: str
    permissions: dict[str, str]
    repository_selection: str = "all"


@dataclass
class _Issued:
    installation: Installation
    expires_at: float
    revoked: bool = False


@dataclass
class Apps:
    """Registered apps, their installations and the tokens handed out (kept as they are: they are
    the sandbox's own throwaway tokens, never a real credential)."""

    token_seconds: float = 3600.0
    clock: Callable[[], float] = time.time
    _keys: dict[str, str] = field(default_factory=dict)
    _installations: dict[int, Installation] = field(default_factory=dict)
    _issued: dict[str, _Issued] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    exchanges: int = 0

    def register(self, app_id: int | str, public_key: str, installation_id: int, account: str,
                 permissions: dict[str, str] | None = None) -> None:
        with self._lock:
            self._keys[str(app_id)] = public_key
            self._installations[int(installation_id)] = Installation(
                int(installation_id), str(app_id), account, permissions or {"metadata": "read", "contents": "read"})

    def exchange(self, authorization: str | None, installation_id: int) -> tuple[int, dict[str, Any]]:
        """The answer to POST /app/installations/{id}/access_tokens: (status, body)."""
        scheme, _, token = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return 401, _error("A JSON web token could not be decoded", JWT_DOCS)
        app_id, refusal = self._verify(token.strip())
        if refusal is not None:
            return 401, _error(refusal, JWT_DOCS)
        with self._lock:
            installation = self._installations.get(installation_id)
            if installation is None or installation.app_id != app_id:
                return 404, {"message": "Not Found", "documentation_url": DOCS, "status": "404"}
            expires = self.clock() + self.token_seconds
            value = "ghs_" + secrets.token_urlsafe(27).replace("-", "A").replace("_", "b")[:36]
            self._issued[value] = _Issued(installation, expires)
            self.exchanges += 1
        stamp = datetime.fromtimestamp(int(expires), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return 201, {"token": value, "expires_at": stamp, "permissions": dict(installation.permissions),
                     "repository_selection": installation.repository_selection}

    def _verify(self, token: str) -> tuple[str | None, str | None]:
        """The app's id, or the message GitHub gives for a JWT it refuses."""
        try:
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            return None, "A JSON web token could not be decoded"
        app_id = str(claims.get("iss", ""))
        with self._lock:
            key = self._keys.get(app_id)
        if key is None:
            return None, "Integration not found"
        try:
            claims = jwt.decode(token, key, algorithms=["RS256"], options={"verify_exp": False, "verify_iat": False})
        except jwt.PyJWTError:
            return None, "A JSON web token could not be decoded"
        now = self.clock()
        iat, exp = claims.get("iat"), claims.get("exp")
        if not isinstance(iat, int) or iat > now + CLOCK_DRIFT:
            return None, ("'Issued at' claim ('iat') must be an Integer representing the time that the assertion "
                          "was issued")
        if not isinstance(exp, int) or exp <= now:
            return None, ("'Expiration time' claim ('exp') must be a numeric value representing the future time at "
                          "which the assertion expires")
        if exp - iat > MAX_JWT_SECONDS:
            return None, "'Expiration time' claim ('exp') is too far in the future"
        return app_id, None

    def caller(self, token: str) -> tuple[bool, str] | None:
        """For an installation token: whether it still works, and the installation's caller key
        for its rate-limit buckets; None for any other token."""
        with self._lock:
            issued = self._issued.get(token)
        if issued is None:
            return None
        usable = not issued.revoked and self.clock() < issued.expires_at
        return usable, f"installation:{issued.installation.id}"

    def revoke_all(self) -> int:
        """Revoke every token handed out so far, as `DELETE /installation/token` does for one."""
        with self._lock:
            for issued in self._issued.values():
                issued.revoked = True
            return len(self._issued)


def _error(message: str, docs: str = REST_DOCS) -> dict[str, Any]:
    return {"message": message, "documentation_url": docs, "status": "401"}
