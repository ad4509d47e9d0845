"""ghetl: a tenant's GitHub repositories through Extract -> Transform -> Embedding, with live status.

The public API: set up with `init`, `add_tenant`, `add_integration`; run with `sync`; look with
`search` (and, in notebooks, `ghetl.frames`). Everything is configured by environment
variables (see `ghetl.config`), so the same code runs on SQLite in a notebook and on
PostgreSQL + RabbitMQ with workers on other hosts.
"""

__version__ = "0.1.0"

from .broker import connect as connect_broker  # noqa: E402
from .db import engine, init  # noqa: E402
from .jobs import AlreadyRunning  # noqa: E402
from .search import search  # noqa: E402
from .settings import SettingsError  # noqa: E402
from .sync import SyncResult, sync  # noqa: E402
from .tenants import NotFound, add_integration, add_tenant  # noqa: E402

__all__ = [
    "AlreadyRunning",
    "NotFound",
    "SettingsError",
    "SyncResult",
    "add_integration",
    "add_tenant",
    "connect_broker",
    "engine",
    "init",
    "search",
    "sync",
]
