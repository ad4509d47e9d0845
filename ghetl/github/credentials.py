"""Which credentials an integration uses, as `integration add` records them and a sync reads them.

Only names are stored, never secrets: the variables that hold the tokens (`token_env`, one or
several separated by commas), or a GitHub App's id, installation id and where its private key
is (a variable or a file). They are kept in the integration's settings under `auth` (see
`settings.AUTH_KEY`), with `allow_insecure_http` when an operator allowed a plain-http API.

Names are restricted because whoever can add an integration chooses them, and the sync sends
what they hold to the integration's API URL: `--token-env GHETL_DATABASE_URL` would send the
database password as a bearer token. A token's variable must be named as one (`GITHUB_TOKEN`,
`GH_TOKEN`, `*_GITHUB_TOKEN`, `GHETL_TOKEN_*`), an app key's likewise (`GITHUB_APP_PRIVATE_KEY`,
`*_GITHUB_APP_KEY`, `GHETL_APP_KEY_*`).
"""

from __future__ import annotations

import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from .. import config
from .auth import AppInstallationAuth, TokenAuth, TokenPool, plain_http

log = logging.getLogger(__name__)

TOKEN_ENV_RULE = "GITHUB_TOKEN, GH_TOKEN, NAME_GITHUB_TOKEN or GHETL_TOKEN_NAME"
APP_KEY_ENV_RULE = "GITHUB_APP_PRIVATE_KEY, NAME_GITHUB_APP_KEY or GHETL_APP_KEY_NAME"
_TOKEN_ENV = re.compile(r"GITHUB_TOKEN|GH_TOKEN|[A-Za-z0-9_]+_GITHUB_TOKEN|GHETL_TOKEN_[A-Za-z0-9_]+")
_APP_KEY_ENV = re.compile(r"GITHUB_APP_PRIVATE_KEY|[A-Za-z0-9_]+_GITHUB_APP_KEY|GHETL_APP_KEY_[A-Za-z0-9_]+")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TOKEN_LIKE = re.compile(r"^(gh[pousr]_|github_pat_)|^[0-9A-Fa-f]{40}$")
_ID = re.compile(r"[1-9][0-9]{0,19}")
MAX_TOKENS = 20


def token_env_names(text: str) -> list[str]:
    """The variables of `--token-env A,B,C`, or ValueError saying what to change."""
    names = [n.strip() for n in (text or "").split(",")]
    if not any(names):
        raise ValueError(f"--token-env needs the name of the variable that holds the token, e.g. {TOKEN_ENV_RULE}")
    for name in names:
        if _TOKEN_LIKE.match(name):
            raise ValueError("--token-env takes the NAME of the environment variable that holds the token "
                             "(e.g. GITHUB_TOKEN), not the token")
        if not _ENV_NAME.fullmatch(name):
            raise ValueError("--token-env must be the name of an environment variable (letters, digits and _, "
                             "not starting with a digit), or several separated by commas")
        if not _TOKEN_ENV.fullmatch(name):
            raise ValueError(f"--token-env {name} is not a name meant for a GitHub token; name the variable "
                             f"{TOKEN_ENV_RULE} (e.g. {name.upper()}_GITHUB_TOKEN)")
    if len(set(names)) != len(names):
        raise ValueError("--token-env names a variable twice; give each token's variable once")
    if len(names) > MAX_TOKENS:
        raise ValueError(f"--token-env names {len(names)} variables; at most {MAX_TOKENS}")
    return names


@dataclass(frozen=True)
class AuthConfig:
    """What an integration stores about its credentials (names and ids only)."""

    allow_insecure_http: bool = False
    app_id: str | None = None
    installation_id: str | None = None
    app_key_env: str | None = None
    app_key_file: str | None = None

    @property
    def app(self) -> bool:
        return self.app_id is not None

    def stored(self) -> dict[str, Any]:
        """The `auth` entry of the integration's settings; empty for a plain token over https."""
        out: dict[str, Any] = {}
        if self.allow_insecure_http:
            out["allow_insecure_http"] = True
        if self.app:
            out["app"] = {"app_id": self.app_id, "installation_id": self.installation_id,
                          **({"key_env": self.app_key_env} if self.app_key_env else {}),
                          **({"key_file": self.app_key_file} if self.app_key_file else {})}
        return out

    @classmethod
    def of(cls, settings: dict[str, Any] | None) -> AuthConfig:
        entry = (settings or {}).get("auth") or {}
        app = entry.get("app") or {}
        return cls(bool(entry.get("allow_insecure_http")), app.get("app_id"), app.get("installation_id"),
                   app.get("key_env"), app.get("key_file"))

    def describe(self, token_env: str) -> str:
        """For `integration list`: what authenticates, by name."""
        if self.app:
            key = f"${self.app_key_env}" if self.app_key_env else self.app_key_file
            what = f"GitHub App {self.app_id} installation {self.installation_id} (key {key})"
        else:
            what = "token " + ", ".join(f"${n}" for n in token_env.split(","))
        return what + (" over plain http (allowed)" if self.allow_insecure_http else "")


def check(api_url: str, token_env: str, *, allow_insecure_http: bool = False, app_id: str | None = None,
          installation_id: str | None = None, app_key_env: str | None = None,
          app_key_file: str | None = None) -> AuthConfig:
    """Check `integration add`'s credential flags; return what to store, or ValueError saying what to fix."""
    token_env_names(token_env)
    if plain_http(api_url) and not allow_insecure_http:
        raise ValueError("the API URL is plain http:// to another machine, and GitHub credentials are sent over "
                         "https only (or to a loopback host such as the sandbox); use https://, or add "
                         "--allow-insecure-http if this network is trusted")
    if allow_insecure_http and not plain_http(api_url):
        raise ValueError("--allow-insecure-http is only for an http:// API URL on another machine; this one "
                         "needs none, leave it out")
    app_flags = {"--app-id": app_id, "--installation-id": installation_id}
    if app_id is None and installation_id is None and app_key_env is None and app_key_file is None:
        return AuthConfig(allow_insecure_http)
    missing = [flag for flag, value in app_flags.items() if not value]
    if missing:
        raise ValueError(f"a GitHub App installation needs --app-id, --installation-id and --app-key-env or "
                         f"--app-key-file; {' and '.join(missing)} missing")
    for flag, value in app_flags.items():
        if not _ID.fullmatch(str(value)):
            raise ValueError(f"{flag} must be the number GitHub shows for it, got {value!r}")
    if (app_key_env is None) == (app_key_file is None):
        raise ValueError("give the app's private key with one of --app-key-env VAR or --app-key-file PATH")
    if app_key_env is not None and not _APP_KEY_ENV.fullmatch(app_key_env):
        raise ValueError(f"--app-key-env {app_key_env} is not a name meant for a GitHub App key; name the "
                         f"variable {APP_KEY_ENV_RULE}")
    if app_key_file is not None:
        app_key_file = str(Path(app_key_file).expanduser().absolute())
        if not Path(app_key_file).is_file():
            log.warning("%s is not a file here; put the app's private key there wherever ghetl sync runs",
                        app_key_file)
    elif not os.environ.get(app_key_env or ""):
        log.warning("$%s is not set here; set it to the app's private key wherever ghetl sync runs", app_key_env)
    return AuthConfig(allow_insecure_http, str(app_id), str(installation_id), app_key_env, app_key_file)


@dataclass
class Credentials:
    """A sync's `httpx.Auth` (None: anonymous) and the variables it read, for messages."""

    auth: httpx.Auth | None
    source: str

    @property
    def anonymous(self) -> bool:
        return self.auth is None

    def close(self) -> None:
        if isinstance(self.auth, AppInstallationAuth):
            self.auth.close()


def for_integration(integration: dict[str, Any], *, timeout: float = 30.0,
                    transport: httpx.BaseTransport | None = None) -> Credentials:
    """The credentials of a stored integration, read from the environment (or key file) now.

    Checked again here, not only at `integration add`: a row written by an earlier ghetl, or
    changed in the database, must not send a secret where the rules above forbid it.
    """
    api_url = integration["api_url"]
    cfg = AuthConfig.of(integration.get("settings"))
    where = f"integration {integration['id']}"
    if plain_http(api_url):
        if not cfg.allow_insecure_http:
            raise ValueError(f"{where}'s API URL is plain http:// to another machine; credentials go over https "
                             "only: add the integration again with an https:// URL (or --allow-insecure-http)")
        log.warning("%s sends its GitHub credentials over plain http to %s, as allowed at integration add: "
                    "anyone on the network can read them", where, httpx.URL(api_url).host)
    if cfg.app:
        key = _app_key(cfg, where)
        auth = AppInstallationAuth(str(cfg.app_id), str(cfg.installation_id), key, api_url,
                                   allow_insecure_http=cfg.allow_insecure_http, timeout=timeout,
                                   transport=transport)
        return Credentials(auth, f"GitHub App {cfg.app_id} installation {cfg.installation_id}")
    try:
        names = token_env_names(integration["token_env"])
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}; add the integration again with such a name") from None
    tokens = {name: token for name in names if (token := config.github_token(name))}
    for name in names:
        if name not in tokens and len(names) > 1:
            log.warning("$%s is empty; this run uses the other tokens", name)
    if not tokens:
        return Credentials(None, "$" + names[0])
    if len(names) == 1:
        return Credentials(TokenAuth(tokens[names[0]], api_url, allow_insecure_http=cfg.allow_insecure_http),
                           "$" + names[0])
    return Credentials(TokenPool(tokens, api_url, allow_insecure_http=cfg.allow_insecure_http),
                       ", ".join("$" + n for n in tokens))


def _app_key(cfg: AuthConfig, where: str) -> str:
    if cfg.app_key_env:
        key = (os.environ.get(cfg.app_key_env) or "").strip()
        if not key:
            raise ValueError(f"${cfg.app_key_env} is empty: set it to the private key (PEM) of GitHub App "
                             f"{cfg.app_id} for {where}")
        return key
    path = Path(str(cfg.app_key_file))
    try:
        mode = path.stat().st_mode
        key = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not an ASCII PEM file"
        raise ValueError(f"cannot read the private key of GitHub App {cfg.app_id} at {path} ({reason}); "
                         f"put the app's PEM key there for {where}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s, the private key of GitHub App %s, is readable by others; chmod 600 it", path, cfg.app_id)
    return key
