"""ghetl: a tenant's GitHub repositories through Extract -> Transform -> Embedding, with live status.

The public API: set up with `init`, `add_tenant`, `add_integration`; run with `sync` (which
raises `Disabled` for a disabled tenant or integration); keep the database lean with `prune`;
look with `search` (and, in notebooks, `ghetl.workbench.frames`). Everything is configured by
environment variables (see `ghetl.config`), so the same code runs on SQLite in a notebook and
on PostgreSQL + RabbitMQ with workers on other hosts.

The names below are imported on first use, so that `ghetl worker` or `ghetl sync` start
without loading what only other commands need (numpy for search, the sandbox's server).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "AlreadyRunning": "pipeline.jobs",
    "Disabled": "tenants",
    "NotFound": "tenants",
    "SettingsError": "settings",
    "SyncResult": "pipeline.sync",
    "add_integration": "tenants",
    "add_tenant": "tenants",
    "connect_broker": "queue.broker",
    "engine": "store.db",
    "init": "store.migrate",
    "prune": "pipeline.prune",
    "search": "workbench.search",
    "sync": "pipeline.sync",
}
_RENAMED = {"connect_broker": "connect"}

# The names of _EXPORTS, spelled out so that linters and type checkers see the TYPE_CHECKING imports as the API.
__all__ = [
    "AlreadyRunning",
    "Disabled",
    "NotFound",
    "SettingsError",
    "SyncResult",
    "add_integration",
    "add_tenant",
    "connect_broker",
    "engine",
    "init",
    "prune",
    "search",
    "sync",
]

if TYPE_CHECKING:
    from .pipeline.jobs import AlreadyRunning
    from .pipeline.prune import prune
    from .pipeline.sync import SyncResult, sync
    from .queue.broker import connect as connect_broker
    from .settings import SettingsError
    from .store.db import engine
    from .store.migrate import init
    from .tenants import Disabled, NotFound, add_integration, add_tenant
    from .workbench.search import search


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ghetl' has no attribute {name!r}")
    module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
    value = getattr(module, _RENAMED.get(name, name))
    globals()[name] = value
    return value
