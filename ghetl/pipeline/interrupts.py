"""Ctrl-C and SIGTERM taken where a sync can act on them, not wherever they land.

Python runs a signal handler in the main thread between two bytecodes, wherever that is. A
KeyboardInterrupt raised inside SQLAlchemy's pool, a SQLite `BEGIN IMMEDIATE` or a logging
handler can leave a lock held or a transaction open; the sync's own way out, marking its job
FAILED "interrupted", then waits for that lock until SQLite's busy timeout gives up (seen in CI:
a SIGTERMed sync hung for the whole minute). So while a sync runs, the handler only records
the signal, and the sync calls `check` between two polls of its job, where raising is safe.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

Handler = Callable[[int, FrameType | None], Any]


class Deferred:
    """The signals received meanwhile; `check` runs the handler each one had before, here."""

    def __init__(self, previous: dict[int, Handler]) -> None:
        self.previous = previous
        self.received: list[int] = []

    def record(self, signum: int, _frame: FrameType | None) -> None:
        self.received.append(signum)
        if len(self.received) > 1:
            self.check()  # a second Ctrl-C while stopping: out at once

    def check(self) -> None:
        """Raise what the first signal received would have raised (KeyboardInterrupt, or the
        CLI's Terminated for SIGTERM), and give the signals their handlers back."""
        if self.received:
            first = self.received[0]
            self.received.clear()
            self._restore()
            self.previous[first](first, None)

    def _restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


@contextmanager
def deferred(signums: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[Deferred]:
    """Within, the signals among `signums` that raise in Python (their handler is a function:
    Ctrl-C's KeyboardInterrupt, the CLI's SIGTERM) are only recorded until `check` is called;
    one received and not checked is raised on the way out. A signal left to the operating
    system (SIG_DFL, SIG_IGN) keeps its behaviour, and outside the main thread (a notebook's
    background thread), where no handler can be set, nothing changes."""
    in_main = threading.current_thread() is threading.main_thread()
    previous: dict[int, Handler] = {}
    for signum in signums if in_main else ():
        handler = signal.getsignal(signum)
        if callable(handler):
            previous[signum] = handler
    pending = Deferred(previous)
    for signum in previous:
        signal.signal(signum, pending.record)
    try:
        yield pending
    finally:
        pending._restore()
    pending.check()
