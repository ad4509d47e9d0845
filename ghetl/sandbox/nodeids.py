"""GitHub's opaque GraphQL identifiers: global node ids and connection cursors.

Both are urlsafe base64 of a little MessagePack, as the 2024 recordings show:
``D_kwDOADYVqs4ATJZD`` is ``D_`` + msgpack([0, repository id, discussion id]) and a connection
cursor ``Y3Vyc29yOnYyOpK5...`` is ``cursor:v2:`` + msgpack([sort key, id]).  Search cursors are
``cursor:N`` (an offset).  Only the MessagePack subset these values use is implemented:
non-negative integers, strings and arrays.
"""

from __future__ import annotations

import base64
import binascii
import struct

CURSOR_PREFIX = b"cursor:v2:"
SEARCH_PREFIX = b"cursor:"


def pack(value: int | str | list | tuple) -> bytes:
    if isinstance(value, (list, tuple)):
        if len(value) > 15:
            raise ValueError("arrays of at most 15 items")
        return bytes([0x90 | len(value)]) + b"".join(pack(v) for v in value)
    if isinstance(value, str):
        raw = value.encode()
        if len(raw) < 32:
            return bytes([0xA0 | len(raw)]) + raw
        return bytes([0xD9, len(raw)]) + raw
    if value < 0:
        raise ValueError("non-negative integers only")
    if value < 0x80:
        return bytes([value])
    if value < 0x100:
        return bytes([0xCC, value])
    if value < 0x10000:
        return b"\xcd" + struct.pack(">H", value)
    if value < 0x100000000:
        return b"\xce" + struct.pack(">I", value)
    return b"\xcf" + struct.pack(">Q", value)


def unpack(data: bytes) -> int | str | list:
    """The value encoded in ``data``; ValueError when it is not exactly one value of the subset."""
    value, end = _unpack(data, 0)
    if end != len(data):
        raise ValueError("trailing bytes")
    return value


def _unpack(data: bytes, at: int) -> tuple[int | str | list, int]:
    if at >= len(data):
        raise ValueError("truncated")
    head = data[at]
    if head < 0x80:
        return head, at + 1
    if 0x90 <= head <= 0x9F:
        items, at = [], at + 1
        for _ in range(head & 0x0F):
            item, at = _unpack(data, at)
            items.append(item)
        return items, at
    if 0xA0 <= head <= 0xBF or head == 0xD9:
        size, at = (head & 0x1F, at + 1) if head != 0xD9 else (data[at + 1] if at + 1 < len(data) else 0, at + 2)
        raw = data[at:at + size]
        if len(raw) != size:
            raise ValueError("truncated")
        return raw.decode(), at + size
    widths = {0xCC: ">B", 0xCD: ">H", 0xCE: ">I", 0xCF: ">Q"}
    if head in widths:
        size = struct.calcsize(widths[head])
        raw = data[at + 1:at + 1 + size]
        if len(raw) != size:
            raise ValueError("truncated")
        return struct.unpack(widths[head], raw)[0], at + 1 + size
    raise ValueError(f"unsupported msgpack byte {head:#x}")


def _b64(raw: bytes, padded: bool) -> str:
    text = base64.urlsafe_b64encode(raw).decode()
    return text if padded else text.rstrip("=")


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not base64") from exc


def node_id(prefix: str, *parts: int | str) -> str:
    """E.g. node_id("PR", repo_id, pr_id) -> "PR_kwDO..."; the leading 0 is GitHub's format version."""
    return f"{prefix}_{_b64(pack([0, *parts]), padded=False)}"


def parse_node_id(text: str) -> tuple[str, list[int | str]] | None:
    """(prefix, parts) of a node id made by ``node_id``, or None for anything else."""
    prefix, sep, rest = text.partition("_")
    if not sep or not rest:
        return None
    try:
        value = unpack(_unb64(rest))
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(value, list) or not value or value[0] != 0:
        return None
    return prefix, value[1:]


def cursor(key: list[int | str]) -> str:
    """A keyset cursor: the sort key of the edge, so pages stay put when items are added."""
    return _b64(CURSOR_PREFIX + pack(key), padded=True)


def parse_cursor(text: str) -> list[int | str]:
    """The sort key inside a cursor; ValueError when it is not one."""
    raw = _unb64(text)
    if not raw.startswith(CURSOR_PREFIX):
        raise ValueError("not a cursor")
    try:
        key = unpack(raw[len(CURSOR_PREFIX):])
    except UnicodeDecodeError as exc:
        raise ValueError("not a cursor") from exc
    if not isinstance(key, list):
        raise ValueError("not a cursor")
    return key


def search_cursor(offset: int) -> str:
    """Search pages by position: cursor:1 is the first result, as on GitHub."""
    return _b64(SEARCH_PREFIX + str(offset).encode(), padded=True)


def parse_search_cursor(text: str) -> int:
    raw = _unb64(text)
    number = raw[len(SEARCH_PREFIX):]
    if not raw.startswith(SEARCH_PREFIX) or not number.isdigit():
        raise ValueError("not a search cursor")
    return int(number)
