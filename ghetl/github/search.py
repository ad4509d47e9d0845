"""Repository search past GitHub's cap of 1 000 results per query: the query is split by
`created:` ranges until each part is under the cap."""

from __future__ import annotations

import datetime as dt
from typing import Any

SEARCH_CAP = 1000
SEARCH_EPOCH = dt.datetime(2007, 10, 1, tzinfo=dt.UTC)


def reaches(page: Any, since: dt.datetime | None) -> bool:
    """Whether a page sorted by update time reaches repositories last updated before `since`."""
    return since is not None and any(updated(item) < since for item in page.items)


def updated(item: dict[str, Any]) -> dt.datetime:
    value = item.get("updated_at")
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")) if value else SEARCH_EPOCH


def split(span: tuple[dt.datetime, dt.datetime] | None) -> list[tuple[dt.datetime, dt.datetime]] | None:
    """Two halves of a creation-time span: whole days while it is days long, then seconds."""
    if span is None:
        today = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        span = (SEARCH_EPOCH, today + dt.timedelta(days=1))
    start, end = span
    days = (end - start).days
    if days >= 2 and midnight(start) and midnight(end):
        middle = start + dt.timedelta(days=days // 2)
    elif (end - start).total_seconds() >= 2:
        middle = start + dt.timedelta(seconds=int((end - start).total_seconds()) // 2)
    else:
        return None
    return [(start, middle), (middle, end)]


def created(span: tuple[dt.datetime, dt.datetime] | None) -> str:
    """The `created:` qualifier for [start, end): dates when whole days (GitHub's date ranges
    include their last day), else timestamps (a repository on the boundary may show up in both
    parts, which deduplication by id absorbs)."""
    if span is None:
        return ""
    start, end = span
    if midnight(start) and midnight(end):
        return f" created:{start:%Y-%m-%d}..{end - dt.timedelta(days=1):%Y-%m-%d}"
    return f" created:{start:%Y-%m-%dT%H:%M:%SZ}..{end:%Y-%m-%dT%H:%M:%SZ}"


def midnight(moment: dt.datetime) -> bool:
    return moment.time() == dt.time(0)
