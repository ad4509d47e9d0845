"""Where ghetl looks for its database, broker and GitHub, read from the environment.

Every setting is an environment variable so that a notebook, a papermill run, a cron job and a
worker on another host are configured the same way; the defaults give the embedded deployment
(a SQLite file and the in-process broker) that needs no set-up at all.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_API_URL = "https://api.github.com"
DEFAULT_TOKEN_ENV = "GITHUB_TOKEN"
DEFAULT_BROKER_URL = "memory://"


def default_database_path() -> Path:
    """The SQLite file used when GHETL_DATABASE_URL is unset: `data/ghetl.db` under the working directory."""
    return Path.cwd() / "data" / "ghetl.db"


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
    return (os.environ.get("GITHUB_API_URL") or DEFAULT_API_URL).rstrip("/")


def env_float(name: str, default: float) -> float:
    """A number from the environment, with the variable named in the error when it is not one."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None
