"""Progress bars per stage, fed by status events: tqdm in a terminal, widgets in a notebook."""

from __future__ import annotations

import sys
import threading
from typing import Any

from .status.events import STAGES, Event


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
    """One bar per step and stage, the step's three drawn together, in stage order, when its
    first event arrives (the stages' own events come from several workers in any order);
    totals appear once extraction knows how many items the step has.

    Bars are drawn in a notebook or a terminal; in a log file or a pipe they would be noise, so
    there the log lines say what happened instead (`drawn` is then false).
    """

    def __init__(self, *, enabled: bool) -> None:
        self._bars: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()
        self._tqdm: Any = None
        if enabled:
            tqdm, in_notebook = _bar_class()
            if in_notebook or sys.stderr.isatty():
                self._tqdm = tqdm

    @property
    def drawn(self) -> bool:
        return self._tqdm is not None

    def update(self, event: Event) -> None:
        stage, step = event.get("stage"), event.get("step")
        if self._tqdm is None or stage not in STAGES or not step or event.get("processed") is None:
            return
        with self._lock:
            if (step, stage) not in self._bars:
                for each in STAGES:
                    label = f"{step.removeprefix('github_')} {each}"
                    self._bars[(step, each)] = self._tqdm(total=None, desc=f"{label:<24}", unit=" items",
                                                         position=len(self._bars), leave=True)
            bar = self._bars[(step, stage)]
            if event.get("total") is not None and bar.total != event["total"]:
                bar.total = event["total"]
            bar.n = max(bar.n, event["processed"])  # events of several workers can arrive out of order
            bar.set_postfix_str(event["status"], refresh=False)
            bar.refresh()

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
