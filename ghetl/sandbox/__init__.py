"""A faithful local GitHub API sandbox: generated organizations and pull requests, REST and
GraphQL, real-looking responses, faults.

    from ghetl.sandbox import Sandbox
    with Sandbox(orgs={"acme": 500}, users={"octocat": 12}, seed=7) as sb:
        httpx.get(f"{sb.url}/orgs/acme/repos", params={"per_page": 100})
        httpx.post(f"{sb.url}/graphql", json={"query": "{ viewer { login } }"}, headers={"Authorization": "bearer t"})

The server is imported on first use of `Sandbox`, so `ghetl` commands that only list the
`sandbox` subcommand in their help do not load it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .cli import add_arguments, run

_EXPORTS = {"Sandbox": "sandbox", "RequestRecord": "records", "THEMES": "data"}

__all__ = ["THEMES", "RequestRecord", "Sandbox", "add_arguments", "run"]

if TYPE_CHECKING:
    from .data import THEMES
    from .records import RequestRecord
    from .sandbox import Sandbox


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ghetl.sandbox' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
