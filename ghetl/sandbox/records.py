"""What the sandbox remembers about each API request, for tests and benchmarks to assert on."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class RequestRecord:
    """One API request.  Readable as ``record.path`` or ``record["path"]``: notebooks use both.

    ``path`` is relative to the API root (a GHES prefix is removed), ``resource`` names the
    rate-limit bucket (``core``/``search``), ``charged`` says whether it cost rate limit, and
    ``status`` is None when a ``reset`` fault dropped the connection.  Tokens are never kept.
    """

    method: str
    path: str
    query: dict[str, str] = field(default_factory=dict)
    status: int | None = None
    resource: str | None = None
    charged: bool = False
    per_page: int | None = None
    authenticated: bool = False
    fault: str | None = None
    request_id: str = ""
    time: float = 0.0

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
