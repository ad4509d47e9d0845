"""Logging set-up: plain sentences on stderr, with tokens masked wherever they might slip in."""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from typing import Any

_TOKEN_SHAPES = re.compile(r"\b(gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})\b")
_SECRET_ENV = re.compile(r"(TOKEN|SECRET|PASSWORD|KEY)$")
MIN_SECRET_LENGTH = 8
"""Values of secret-looking variables (`*_TOKEN`, `*_PASSWORD`...) shorter than this are not masked
unless registered: a guess by name alone would otherwise mask `1` or `true` everywhere."""

_secrets: frozenset[str] = frozenset()
_secrets_lock = threading.Lock()


def safe_url(url: str) -> str:
    """A URL fit for a log line: its password replaced by ***."""
    return re.sub(r"//([^:/@]+):[^@/]*@", r"//\1:***@", url)


def first_line(exc: BaseException) -> str:
    """The first line of an error, for a one-line message: a database error's own (`orig`, the
    driver's text without SQLAlchemy's statement dump), else the exception's, else its type."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def register_secret(value: str) -> None:
    """Have `redact` mask this value from now on, whatever its shape, length or case.

    A token's variable may have many names and a GHES or app token any shape, so neither the
    name nor the shape rules can be relied on to spot it; whoever holds a secret registers it.
    A registered value is known to be a secret, so it is masked however short it is.
    """
    global _secrets, _pattern
    value = value.strip()
    if value and value not in _secrets:
        with _secrets_lock:
            _secrets = _secrets | {value}
            _pattern = _compile(_secrets)


def _compile(values: frozenset[str]) -> re.Pattern[str] | None:
    """One case-insensitive alternation, longest first (so a secret inside a longer one goes with it)."""
    if not values:
        return None
    return re.compile("|".join(re.escape(v) for v in sorted(values, key=len, reverse=True)), re.IGNORECASE)


_pattern: re.Pattern[str] | None = None


def redact(text: str) -> str:
    """Mask GitHub token shapes, registered secrets and the values of secret-looking environment variables."""
    text = _TOKEN_SHAPES.sub("[token]", text)
    if _pattern is not None:
        text = _pattern.sub("[token]", text)
    named = {v for k, v in os.environ.items() if len(v) >= MIN_SECRET_LENGTH and _SECRET_ENV.search(k)}
    for value in sorted(named, key=len, reverse=True):
        if value in text:
            text = text.replace(value, "[token]")
    return text


class RedactingFilter(logging.Filter):
    """Masks the message of a record before any handler sees it (handlers of other libraries too)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = ()
        return True


class RedactingFormatter(logging.Formatter):
    """Masks the whole formatted line, traceback and stack included: an exception's text (httpx
    quoting a header, a driver quoting its URL) is formatted only here, after every filter ran."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a record is emitted.

    A plain StreamHandler keeps the stream it was given; when `main()` runs inside a process
    that later swaps stderr (pytest's capture, a notebook kernel), it would go on writing to a
    closed stream.
    """

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def configure(verbose: bool = False) -> None:
    handler = _CurrentStderr()
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S"))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("httpx", "httpcore", "websockets", "sentence_transformers", "alembic"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)
    # pika logs each failed reconnect as several ERROR lines with a traceback; ghetl.rabbitmq
    # already says it in one line ("lost RabbitMQ (...); reconnecting in 1.2 s").
    logging.getLogger("pika").setLevel(logging.DEBUG if verbose else logging.CRITICAL)
