"""Where ghetl looks for its database, broker and GitHub, read from the environment.

Every setting is an environment variable so that a notebook, a papermill run, a cron job and a
worker on another host are configured the same way; the defaults give the embedded deployment
(a SQLite file and the in-process broker) that needs no set-up at all.
"""

from __future__ import annotations

import math
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
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def broker_url() -> str:
    return os.environ.get("GHETL_BROKER_URL") or DEFAULT_BROKER_URL


def api_url() -> str:
    return (os.environ.get("GITHUB_API_URL") or DEFAULT_API_URL).rstrip("/")


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
