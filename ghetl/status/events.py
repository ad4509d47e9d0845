"""Status events: what the workers say while a job runs, and the in-process bus that carries them.

The status JSON on `etl_jobs` is the truth; events announce each change of it so that a
WebSocket server, a notebook board or a progress bar can follow without polling. Events are
published only after the change is committed, so nobody ever sees a state the database lacks.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import threading
from collections.abc import Callable
from typing import Any

from .. import records
from ..records import Stage, StageStatus

log = logging.getLogger(__name__)

_KEYS = re.compile(r"(key=|bearer\s+|ghetl\.key\.)[^\s&,'\"]+", re.IGNORECASE)


class _HideKeys(logging.Filter):
    """websockets logs request lines and headers at debug level; a stream key must not show there.

    The server and the notebook board both log their connections through PROTOCOL_LOG.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = _KEYS.sub(r"\1***", record.getMessage())
        record.args = ()
        return True


PROTOCOL_LOG = logging.getLogger("websockets.ghetl")
PROTOCOL_LOG.addFilter(_HideKeys())

STAGES = records.STAGES  # ("extraction", "transform", "embedding")
Event = dict[str, Any]
Subscriber = Callable[[Event], None]


def stage_event(
    tenant_id: int,
    job_id: int,
    run_id: str,
    step: str,
    stage: Stage,
    status: StageStatus,
    *,
    processed: int | None = None,
    total: int | None = None,
    failed: int | None = None,
) -> Event:
    """A stage turned idle/running/finished/failed, or made progress (status unchanged)."""
    return {
        "type": "stage",
        "tenant_id": tenant_id,
        "job_id": job_id,
        "run_id": run_id,
        "step": step,
        "stage": stage,
        "status": status,
        "processed": processed,
        "total": total,
        "failed": failed,
        "timestamp": dt.datetime.now(dt.UTC).isoformat(),
    }


def job_event(tenant_id: int, job_id: int, run_id: str, overall: str, *, error: str | None = None) -> Event:
    return {
        "type": "job",
        "tenant_id": tenant_id,
        "job_id": job_id,
        "run_id": run_id,
        "overall": overall,
        "error": error,
        "timestamp": dt.datetime.now(dt.UTC).isoformat(),
    }


class StatusBus:
    """Fan-out of events to subscribers inside one process.

    A subscriber that raises is logged and kept; it must not be able to stop a worker.
    """

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []
        self._lock = threading.Lock()

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Start delivering events to `callback`; return the function that stops it."""
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    def publish(self, events: list[Event]) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for event in events:
            for callback in subscribers:
                try:
                    callback(event)
                except Exception:
                    log.exception("a status subscriber failed on a %s event; it stays subscribed", event.get("type"))
