"""Where ghetl looks for its database, broker and GitHub, read from the environment.

Every setting is an environment variable so that a notebook, a papermill run, a cron job and a
worker on another host are configured the same way; the defaults give the embedded deployment
(a SQLite file and the in-process broker) that needs no set-up at all.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import httpx

DEFAULT_API_URL = "https://api.github.com"
DEFAULT_TOKEN_ENV = "GITHUB_TOKEN"
DEFAULT_BROKER_URL = "memory://"
API_URL_MAX = 500

_TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")
_HOST_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def default_database_path() -> Path:
    """The SQLite file used when GHETL_DATABASE_URL is unset: `data/ghetl.db` under the working directory."""
    return Path.cwd() / "data" / "ghetl.store.db"


def database_url() -> str:
    url = os.environ.get("GHETL_DATABASE_URL")
    if url:
        return url
    path = default_database_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"cannot create {path.parent} for the default SQLite database ({exc.strerror}); "
                         "set GHETL_DATABASE_URL or run ghetl from a directory you can write to") from exc
    return f"sqlite:///{path}"


def broker_url() -> str:
    return os.environ.get("GHETL_BROKER_URL") or DEFAULT_BROKER_URL


def api_url() -> str:
    """GITHUB_API_URL, checked as `check_api_url` does, or github.com's API."""
    return check_api_url(os.environ.get("GITHUB_API_URL") or DEFAULT_API_URL, "GITHUB_API_URL")


def check_api_url(url: str, source: str) -> str:
    """The API root without its trailing slash, or ValueError naming `source` and what to fix.

    Checked when an integration is added, so that a URL the client cannot use is refused there
    in one line rather than in every later sync. httpx parses it; what httpx lets through but
    cannot connect to (an empty host, a port out of range, a space or an over-long label in
    the host) is checked here. The messages never echo the URL, which may hold a password: a
    user or password in it is refused, since the token belongs in the variable the
    integration names, where it is never stored.
    """
    if len(url) > API_URL_MAX:
        raise ValueError(f"{source} is longer than {API_URL_MAX} characters; give the API root, "
                         "e.g. https://HOST/api/v3")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ValueError(f"{source} is not a valid URL ({exc}); give the API root, e.g. https://HOST/api/v3") from None
    if parsed.userinfo:
        raise ValueError(f"{source} holds a user name or password: put the token in the variable --token-env names, "
                         "not in the URL")
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"{source} must start with http:// or https:// and name a host, e.g. https://HOST/api/v3")
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise ValueError(f"{source} has port {parsed.port}; a port is 1 to 65535")
    if ":" not in parsed.host and not _valid_hostname(parsed.raw_host.decode("ascii")):
        raise ValueError(f"{source} has host '{parsed.host}', not a host name "
                         "(letters, digits and - between dots, at most 63 in a row)")
    if parsed.query or parsed.fragment:
        raise ValueError(f"{source} must be the API root, without ?query or #fragment")
    return url.rstrip("/")


def _valid_hostname(host: str) -> bool:
    labels = host.removesuffix(".").split(".")
    return len(host) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels)


def github_token(env_name: str) -> str | None:
    """The token in `env_name`, without surrounding whitespace; None when the variable is unset or blank.

    A token read from a file usually ends in a newline, so surrounding whitespace is dropped.
    What is left must be printable ASCII without spaces, as an HTTP header requires: httpx
    would otherwise refuse the request with an error that quotes the whole Authorization header.
    The refusal names the variable, never its value.
    """
    token = (os.environ.get(env_name) or "").strip()
    if token and not _TOKEN_CHARS.fullmatch(token):
        raise ValueError(f"${env_name} holds whitespace or a non-ASCII character inside the token; "
                         "set it to the token alone")
    return token or None


def env_float(name: str, default: float, minimum: float | None = None) -> float:
    """A number from the environment, with the variable named in the error when it is not one
    (or, given a `minimum`, when it is below it, infinite or NaN)."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None
    if minimum is not None and not (math.isfinite(value) and value >= minimum):
        raise ValueError(f"{name} must be a number of {minimum:g} or more, got {raw!r}")
    return value
