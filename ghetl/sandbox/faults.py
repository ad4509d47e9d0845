"""Injected faults: the failures a GitHub client meets in production, on demand.

A fault matches requests whose path+query (as sent, including any GHES prefix) contains a match
for ``path`` (``re.search``), and fires for the next ``times`` matching requests.  Faults are
consumed in the order they were injected; at most one fires per request.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

KINDS = ("status", "html", "reset", "delay", "secondary", "incomplete", "mutate", "timedout", "ratelimited")
GRAPHQL_KINDS = ("timedout", "ratelimited")


@dataclass
class Fault:
    kind: str
    pattern: re.Pattern[str]
    times: int
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def action(self) -> Callable[[Any], Any] | None:
        """The callable of a ``mutate`` fault: ``action=`` or whichever keyword holds a callable."""
        if "action" in self.options:
            return self.options["action"]
        return next((v for v in self.options.values() if callable(v)), None)


class Faults:
    """The queue of pending faults, shared by the request threads."""

    def __init__(self) -> None:
        self._pending: list[Fault] = []
        self._lock = threading.Lock()

    def add(self, kind: str, path: str = ".*", times: int = 1, **options: Any) -> Fault:
        if kind not in KINDS:
            raise ValueError(f"unknown fault {kind!r}; expected one of {', '.join(KINDS)}")
        if times < 1:
            raise ValueError("times must be at least 1")
        fault = Fault(kind, re.compile(path), times, options)
        if kind == "mutate" and fault.action is None:
            raise ValueError("a mutate fault needs a callable, e.g. action=lambda sb: sb.touch(...)")
        with self._lock:
            self._pending.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._pending.clear()

    def take(self, target: str, kinds: tuple[str, ...]) -> Fault | None:
        """Consume one firing of the first pending fault of ``kinds`` that matches ``target``."""
        with self._lock:
            for fault in self._pending:
                if fault.kind in kinds and fault.pattern.search(target):
                    fault.times -= 1
                    if fault.times == 0:
                        self._pending.remove(fault)
                    return fault
        return None
