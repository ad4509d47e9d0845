"""Where ghetl looks for its database, broker and GitHub, read from the environment.

Every setting is an environment variable so that a notebook, a papermill run, a cron job and a
worker on another host are configured the same way; the defaults give the embedded deployment
(a SQLite file and the in-process broker) that needs no set-up at all.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

DEFAULT_API_URL = "https://api.github.com"
DEFAULT_TOKEN_ENV = "GITHUB_TOKEN"
DEFAULT_BROKER_URL = "memory://"

_TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")


def default_database_path() -> Path:
    """The SQLite file used when GHETL_DATABASE_URL is unset: `data/ghetl.db` under the working directory."""
    return Path.cwd() / "data" / "ghetl.db"


def database_url() -> str:
    url = os.environ.get("GHETL_DATABASE_URL")
    if url:
        return url
    path = default_database_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def broker_url() -> str:
    return os.environ.get("GHETL_BROKER_URL") or DEFAULT_BROKER_URL


def api_url() -> str:
    return (os.environ.get("GITHUB_API_URL") or DEFAULT_API_URL).rstrip("/")


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


def env_float(name: str, default: float) -> float:
    """A number from the environment, with the variable named in the error when it is not one."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None
