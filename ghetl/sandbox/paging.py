"""Page-number pagination and GitHub's ``Link`` header.

Format and order follow extracted/link-headers.txt (octokit 2022 and PyGithub 2026 recordings):
first page ``next, last``; middle pages ``prev, next, last, first``; last page ``prev, first``;
no header at all when everything fits on one page.  The client's query parameters are kept in
the order it sent them, ``page`` is replaced in place or appended at the end.
"""

from __future__ import annotations

from urllib.parse import urlencode

DEFAULT_PER_PAGE = 30
MAX_PER_PAGE = 100


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def paging(params: dict[str, str]) -> tuple[int, int]:
    """(per_page, page) as GitHub reads them: per_page defaults to 30 and is capped at 100."""
    per_page = _int(params.get("per_page"), DEFAULT_PER_PAGE)
    per_page = DEFAULT_PER_PAGE if per_page < 1 else min(per_page, MAX_PER_PAGE)
    page = max(1, _int(params.get("page"), 1))
    return per_page, page


def last_page(total: int, per_page: int) -> int:
    return max(1, -(-total // per_page))


def page_url(base: str, pairs: list[tuple[str, str]], page: int) -> str:
    """``base`` with the client's parameters and the given page."""
    out = [(k, str(page) if k == "page" else v) for k, v in pairs]
    if not any(k == "page" for k, _ in pairs):
        out.append(("page", str(page)))
    return f"{base}?{urlencode(out)}"


def link_header(base: str, pairs: list[tuple[str, str]], page: int, last: int) -> str | None:
    """The Link header for ``page`` of ``last`` pages, or None for a single page."""
    if page == 1 and last <= 1:
        return None
    rels: list[tuple[int, str]] = []
    if page > 1:
        rels.append((page - 1, "prev"))
    if page < last:
        rels.append((page + 1, "next"))
        rels.append((last, "last"))
    if page > 1:
        rels.append((1, "first"))
    return ", ".join(f'<{page_url(base, pairs, number)}>; rel="{rel}"' for number, rel in rels)
