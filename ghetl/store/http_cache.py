"""ETags of listing pages, kept per integration, so an unchanged page costs no rate limit.

A cached page remembers its ETag, the ids of the items on it that the integration keeps (their
payloads have landed in `raw_extraction_data` by the time the entry is written), where the next
page is, and the oldest update time on it (so an incremental run knows from a 304 alone whether
the page reaches its cut-off). Entries are tied to a fingerprint of the integration's settings:
after a settings change the stored items no longer describe what the page would give, so the
page is fetched in full again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from . import db
from .db import http_cache, raw_extraction_data


def fingerprint(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class CachedPage:
    etag: str
    item_ids: list[str]
    next_url: str | None
    oldest_updated_at: dt.datetime | None


class PageCache:
    """The cached pages of one integration's listing, and the stored payloads they stand for."""

    def __init__(
        self, engine: sa.Engine, tenant_id: int, integration_id: int, entity_type: str, fingerprint: str
    ) -> None:
        self.engine = engine
        self.tenant_id = tenant_id
        self.integration_id = integration_id
        self.entity_type = entity_type
        self.fingerprint = fingerprint

    def get(self, url: str) -> CachedPage | None:
        """The entry for `url`, unless it was written under other settings or has no ETag."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(http_cache).where(http_cache.c.integration_id == self.integration_id, http_cache.c.url == url)
            ).mappings().first()
        if row is None or not row["etag"] or row["fingerprint"] != self.fingerprint:
            return None
        return CachedPage(row["etag"], list(row["item_ids"]), row["next_url"], row["oldest_updated_at"])

    def put(self, conn: sa.Connection, url: str, etag: str, item_ids: list[str], next_url: str | None,
            oldest: dt.datetime | None) -> None:
        """Remember a page, in the transaction that stores the items it names (or after it)."""
        row = {
            "integration_id": self.integration_id, "url": url, "etag": etag, "item_ids": item_ids,
            "next_url": next_url, "fingerprint": self.fingerprint, "oldest_updated_at": oldest,
        }
        db.upsert(conn, http_cache, [row], ("integration_id", "url"))

    def payloads(self, item_ids: list[str]) -> list[dict[str, Any]] | None:
        """The latest stored payload of each id, in order; None when any of them is missing."""
        if not item_ids:
            return []
        with self.engine.connect() as conn:
            latest = (
                sa.select(raw_extraction_data.c.external_id, sa.func.max(raw_extraction_data.c.id).label("id"))
                .where(
                    raw_extraction_data.c.tenant_id == self.tenant_id,
                    raw_extraction_data.c.integration_id == self.integration_id,
                    raw_extraction_data.c.entity_type == self.entity_type,
                    raw_extraction_data.c.external_id.in_(item_ids),
                )
                .group_by(raw_extraction_data.c.external_id)
                .subquery()
            )
            found = dict(conn.execute(
                sa.select(raw_extraction_data.c.external_id, raw_extraction_data.c.raw_data)
                .join(latest, latest.c.id == raw_extraction_data.c.id)
            ).all())
        if len(found) < len(set(item_ids)):
            return None
        return [found[i] for i in item_ids]
