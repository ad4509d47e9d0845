"""Progress bars per stage, fed by status events: tqdm in a terminal, widgets in a notebook."""

from __future__ import annotations

import sys
import threading
from typing import Any

from tqdm.auto import tqdm
from tqdm.notebook import tqdm as notebook_tqdm

from .status import STAGES, Event


class StageBars:
    """One bar per stage; totals appear once extraction knows how many items the run has.

    Bars are drawn in a notebook or a terminal; in a log file or a pipe they would be noise, so
    there the log lines say what happened instead.
    """

    def __init__(self, *, enabled: bool) -> None:
        self._bars: dict[str, Any] = {}
        self._lock = threading.Lock()
        in_notebook = issubclass(tqdm, notebook_tqdm)
        if enabled and (in_notebook or sys.stderr.isatty()):
            self._bars = {
                stage: tqdm(total=None, desc=f"{stage:<10}", unit="repo", position=n, leave=True)
                for n, stage in enumerate(STAGES)
            }

    def update(self, event: Event) -> None:
        bar = self._bars.get(event.get("stage", ""))
        if bar is None or event.get("processed") is None:
            return
        with self._lock:
            if event.get("total") is not None and bar.total != event["total"]:
                bar.total = event["total"]
            bar.n = event["processed"]
            bar.set_postfix_str(event["status"], refresh=False)
            bar.refresh()

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
