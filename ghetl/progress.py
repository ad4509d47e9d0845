"""Progress bars per stage, fed by status events: tqdm in a terminal, widgets in a notebook."""

from __future__ import annotations

import sys
import threading
from typing import Any

from .status import STAGES, Event


def _bar_class() -> tuple[type, bool]:
    """Widget bars inside a Jupyter kernel, text bars elsewhere.

    Chosen here rather than through tqdm.auto, whose import pulls in ipywidgets and IPython
    and adds a tenth of a second to every command and worker start.
    """
    if "ipykernel" in sys.modules:
        from tqdm.notebook import tqdm as notebook_tqdm

        return notebook_tqdm, True
    from tqdm import tqdm

    return tqdm, False


class StageBars:
    """One bar per stage; totals appear once extraction knows how many items the run has.

    Bars are drawn in a notebook or a terminal; in a log file or a pipe they would be noise, so
    there the log lines say what happened instead.
    """

    def __init__(self, *, enabled: bool) -> None:
        self._bars: dict[str, Any] = {}
        self._lock = threading.Lock()
        if not enabled:
            return
        tqdm, in_notebook = _bar_class()
        if in_notebook or sys.stderr.isatty():
            self._bars = {
                stage: tqdm(total=None, desc=f"{stage:<10}", unit=" repos", position=n, leave=True)
                for n, stage in enumerate(STAGES)
            }

    @property
    def drawn(self) -> bool:
        return bool(self._bars)

    def update(self, event: Event) -> None:
        bar = self._bars.get(event.get("stage", ""))
        if bar is None or event.get("processed") is None:
            return
        with self._lock:
            if event.get("total") is not None and bar.total != event["total"]:
                bar.total = event["total"]
            bar.n = max(bar.n, event["processed"])  # events of several workers can arrive out of order
            bar.set_postfix_str(event["status"], refresh=False)
            bar.refresh()

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
