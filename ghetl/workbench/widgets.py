"""The status board for notebooks: three circles per step that follow the WebSocket status stream.

`StatusBoard(tenant, key=..., url=...)` is an ipywidgets box: per job a badge with the overall
state, and per step one row with a circle for extraction, transform and embedding (idle grey,
running blue, finished green, failed red) and a progress bar under each. It reads the stream
of `ghetl status-server` (or of a `StatusServer` started in the kernel) on a daemon thread, so
the cell that shows it returns at once and the board keeps moving while later cells run; a
papermill run never waits for it, and the thread dies with the kernel.

What the board shows lives in `BoardModel`, plain data built from the stream's messages, so
`board.state()` answers without a browser. When the connection drops the board reconnects
with a growing pause and starts again from the fresh snapshot the server sends first; a refusal
(wrong key, unknown tenant) is shown and not retried, since retrying cannot fix it.
"""

from __future__ import annotations

import html
import json
import logging
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import ipywidgets as w
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.sync.client import ClientConnection, connect

from ..status.events import PROTOCOL_LOG, STAGES

log = logging.getLogger(__name__)

DEFAULT_URL = "ws://127.0.0.1:8765"
COLOURS = {"idle": "#9e9e9e", "running": "#1e88e5", "finished": "#43a047", "failed": "#e53935"}
OVERALL_COLOURS = {"READY": "#9e9e9e", "RUNNING": "#1e88e5", "FINISHED": "#43a047", "FAILED": "#e53935"}
BAR_STYLES = {"idle": "", "running": "info", "finished": "success", "failed": "danger"}
REFUSALS = (4400, 4401, 4403, 4404)
FINAL = ("FINISHED", "FAILED")


@dataclass
class JobView:
    """One job as the board knows it: its run, overall state, circles and progress."""

    job_id: int
    job_name: str = "GitHub"
    run_id: str | None = None
    overall: str = "READY"
    error: str | None = None
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    circles: dict[str, dict[str, str]] = field(default_factory=dict)
    progress: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    def new_run(self, run_id: str) -> None:
        self.run_id, self.overall, self.error = run_id, "RUNNING", None
        self.circles = {step: dict.fromkeys(STAGES, "idle") for step in self.steps}
        self.progress = {}


class BoardModel:
    """The board's state, rebuilt from a snapshot and moved on by each event; no widgets, no I/O."""

    def __init__(self) -> None:
        self.jobs: dict[int, JobView] = {}
        self.tenant: str | None = None

    def apply(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "snapshot":
            self.tenant = message.get("tenant")
            self.jobs = {j["job_id"]: _job_from_snapshot(j) for j in message["jobs"]}
            return
        if kind not in ("stage", "job"):
            return
        job = self.jobs.setdefault(message["job_id"], JobView(message["job_id"]))
        if message["run_id"] != job.run_id:
            job.new_run(message["run_id"])
        if kind == "job":
            job.overall = message["overall"]
            job.error = message.get("error")
            return
        step, stage = message["step"], message["stage"]
        if step not in job.steps:
            from .. import steps

            known = steps.registry().get(step)
            job.steps[step] = {"display_name": known.display_name if known else step,
                               "order": known.order if known else len(job.steps) + 1}
        job.circles.setdefault(step, dict.fromkeys(STAGES, "idle"))[stage] = message["status"]
        shown = job.progress.get(step, {}).get(stage) or {}
        # Workers report from several processes, so their events can arrive out of order: a
        # stage's count never goes back within a run.
        if message.get("processed") is not None and message["processed"] >= (shown.get("processed") or 0):
            job.progress.setdefault(step, {})[stage] = {k: message.get(k) for k in ("processed", "total", "failed")}

    def state(self, job: int | None = None) -> dict[str, dict[str, str]]:
        """{step: {stage: status}} of one job (the only one, when the board shows one)."""
        return {step: dict(circles) for step, circles in self.job(job).circles.items()}

    def job_of_run(self, run_id: str) -> JobView | None:
        """The job whose current run is `run_id`, if the board has seen that run start."""
        return next((j for j in self.jobs.values() if j.run_id == run_id), None)

    def job(self, job: int | None = None) -> JobView:
        if job is not None:
            if job not in self.jobs:
                raise KeyError(f"the board has no job {job}; it shows jobs {_ids(self.jobs)}")
            return self.jobs[job]
        if len(self.jobs) != 1:
            raise ValueError(
                f"the board shows jobs {_ids(self.jobs)}; say which one, e.g. job={next(iter(self.jobs), 1)}"
            )
        return next(iter(self.jobs.values()))


def _ids(jobs: Iterable[int]) -> str:
    return ", ".join(map(str, jobs)) or "none yet"


def _job_from_snapshot(item: dict[str, Any]) -> JobView:
    steps = dict(sorted(item["status"]["steps"].items(), key=lambda kv: kv[1].get("order", 0)))
    return JobView(
        job_id=item["job_id"], job_name=item["job_name"], run_id=item["run_id"], overall=item["overall"],
        error=item.get("error_message"),
        steps={s: {"display_name": info.get("display_name", s), "order": info.get("order", 0)}
               for s, info in steps.items()},
        circles={s: {stage: info[stage] for stage in STAGES} for s, info in steps.items()},
        progress=item.get("progress") or {},
    )


def circle_html(job_id: int, step: str, stage: str, status: str) -> str:
    """A coloured dot with its stage name; data-* attributes let a browser test find it."""
    return (
        f'<div style="display:flex;align-items:center;gap:6px">'
        f'<span class="ghetl-circle" data-job="{job_id}" data-step="{html.escape(step)}" data-stage="{stage}" '
        f'data-status="{status}" title="{stage}: {status}" style="display:inline-block;width:16px;height:16px;'
        f'border-radius:50%;background:{COLOURS.get(status, COLOURS["idle"])}"></span>'
        f"<span>{stage}</span></div>"
    )


def badge_html(overall: str) -> str:
    colour = OVERALL_COLOURS.get(overall, OVERALL_COLOURS["READY"])
    return (f'<span class="ghetl-overall" data-overall="{overall}" style="padding:1px 8px;border-radius:9px;'
            f'background:{colour};color:white;font-weight:bold">{overall}</span>')


class _StageCell:
    def __init__(self) -> None:
        self.circle = w.HTML()
        self.bar = w.FloatProgress(min=0.0, max=1.0, value=0.0, layout=w.Layout(width="130px"))
        self.count = w.Label(layout=w.Layout(min_width="90px"))
        self.box = w.VBox([self.circle, w.HBox([self.bar, self.count])], layout=w.Layout(margin="0 16px 0 0"))

    def show(self, job_id: int, step: str, stage: str, status: str, progress: dict[str, Any] | None) -> None:
        self.circle.value = circle_html(job_id, step, stage, status)
        self.bar.bar_style = BAR_STYLES.get(status, "")
        processed = (progress or {}).get("processed")
        total = (progress or {}).get("total")
        if status == "finished" and not total:
            self.bar.value = 1.0
        elif processed is not None:
            self.bar.value = min(1.0, processed / total) if total else 0.0
        elif status == "idle":
            self.bar.value = 0.0
        self.count.value = (
            "" if processed is None else (f"{processed}/{total}" if total is not None else str(processed))
        )


class _JobPanel:
    def __init__(self, job: JobView) -> None:
        self.title = w.HTML()
        self.badge = w.HTML()
        self.error = w.HTML()
        self.cells: dict[str, dict[str, _StageCell]] = {}
        self.rows = w.VBox()
        self.box = w.VBox([w.HBox([self.title, self.badge]), self.rows, self.error],
                          layout=w.Layout(margin="4px 0 8px 0"))
        self.show(job)

    def show(self, job: JobView) -> None:
        self.title.value = f"<b>job {job.job_id}</b> {html.escape(job.job_name)}&nbsp;"
        self.badge.value = badge_html(job.overall)
        self.error.value = f'<span style="color:#e53935">{html.escape(job.error)}</span>' if job.error else ""
        if set(self.cells) != set(job.steps):
            self.cells = {step: {stage: _StageCell() for stage in STAGES} for step in job.steps}
            self.rows.children = [
                w.HBox([w.HTML(f"<b>{html.escape(info['display_name'])}</b>", layout=w.Layout(width="180px")),
                        *(cell.box for cell in self.cells[step].values())])
                for step, info in job.steps.items()
            ]
        for step, cells in self.cells.items():
            circles = job.circles.get(step, {})
            for stage, cell in cells.items():
                cell.show(job.job_id, step, stage, circles.get(stage, "idle"), job.progress.get(step, {}).get(stage))


class StatusBoard:
    """Live circles for one tenant (or one of its jobs), fed by the WebSocket status stream.

    `url` defaults to $GHETL_STATUS_URL, else ws://127.0.0.1:8765; `key` (the tenant's
    status-stream key from `ghetl tenant add` or `ghetl tenant key`) to $GHETL_STATUS_KEY.
    A notebook shows the board as a cell's value; `.widget` is its ipywidgets box, to place in
    a layout of one's own.
    """

    def __init__(self, tenant: str | int, job: int | None = None, *, url: str | None = None,
                 key: str | None = None, reconnect_max: float = 5.0) -> None:
        key = key or os.environ.get("GHETL_STATUS_KEY")
        if not key:
            raise ValueError("StatusBoard needs the tenant's status-stream key: pass key=... or set GHETL_STATUS_KEY "
                             "(ghetl tenant key NAME issues a new one)")
        base = (url or os.environ.get("GHETL_STATUS_URL") or DEFAULT_URL).rstrip("/")
        query = {"tenant": tenant, **({"job": job} if job is not None else {})}
        self.url = f"{base}/?{urlencode(query)}"
        self.tenant = tenant
        self.model = BoardModel()
        self.refused: str | None = None
        self.connection = ""
        self._key = key
        self._reconnect_max = reconnect_max
        self._changed = threading.Condition()
        self._closed = threading.Event()
        self._ws: ClientConnection | None = None
        self._panels: dict[int, _JobPanel] = {}
        self._header = w.HTML(f"<b>{html.escape(str(tenant))}</b>")
        self._connection = w.HTML()
        self._jobs_box = w.VBox()
        self.widget = w.VBox([w.HBox([self._header, self._connection]), self._jobs_box])
        self._say("connecting to " + base)
        self._thread = threading.Thread(target=self._follow, name="ghetl-status-board", daemon=True)
        self._thread.start()

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any] | None:
        return self.widget._repr_mimebundle_(**kwargs)

    def state(self, job: int | None = None) -> dict[str, dict[str, str]]:
        """{step: {stage: idle|running|finished|failed}} of the board's job, as drawn."""
        with self._changed:
            return self.model.state(job)

    def overall(self, job: int | None = None) -> str:
        with self._changed:
            return self.model.job(job).overall

    def wait(
        self, run_id: str | None = None, *, job: int | None = None, timeout: float = 60.0
    ) -> dict[str, dict[str, str]]:
        """Block until the job's run (this `run_id`, if given) is FINISHED or FAILED; return its circles.

        A `run_id` names its job, so `job` is needed only without one, on a board of several jobs.
        Raises TimeoutError saying what the board last saw, so a notebook or test never hangs.
        """
        def target() -> JobView | None:
            if job is None and run_id is not None:
                return self.model.job_of_run(run_id)
            try:
                return self.model.job(job)
            except (KeyError, ValueError):
                return None

        def done() -> bool:
            view = target()
            return bool(self.refused) or (
                view is not None and view.overall in FINAL and (run_id is None or view.run_id == run_id))

        with self._changed:
            if not self._changed.wait_for(done, timeout):
                if run_id is None:
                    self.model.job(job)  # raises what to fix when the board has several jobs or not that one
                seen = {j.job_id: j.overall for j in self.model.jobs.values()}
                raise TimeoutError(
                    f"the status board saw no end of the run within {timeout:.0f} s (jobs: {seen or 'none'})"
                )
            if self.refused:
                raise ConnectionRefusedError(f"the status stream refused the board: {self.refused}")
            view = target()
            assert view is not None  # done() saw it
            return self.model.state(view.job_id)

    def close(self) -> None:
        """Stop following the stream; the board keeps showing what it last knew."""
        self._closed.set()
        ws = self._ws
        if ws is not None:
            ws.close()
        self._thread.join(timeout=5)
        self._say("closed")

    def _follow(self) -> None:
        pause = 0.5
        while not self._closed.is_set():
            try:
                with connect(self.url, additional_headers={"Authorization": f"Bearer {self._key}"},
                             open_timeout=5, logger=PROTOCOL_LOG) as ws:
                    self._ws = ws
                    self._say("live")
                    pause = 0.5
                    for message in ws:
                        self._apply(json.loads(message))
            except ConnectionClosed as exc:
                if exc.rcvd is not None and exc.rcvd.code in REFUSALS:
                    self._refuse(exc.rcvd.reason)
                    return
            except InvalidURI as exc:
                self._refuse(str(exc))
                return
            except (OSError, TimeoutError, InvalidHandshake) as exc:
                log.debug("status board connection failed: %s", exc)
            finally:
                self._ws = None
            if self._closed.is_set():
                return
            self._say(f"reconnecting in {pause:.1f} s")
            self._closed.wait(pause)
            pause = min(pause * 2, self._reconnect_max)

    def _apply(self, message: dict[str, Any]) -> None:
        with self._changed:
            self.model.apply(message)
            self._changed.notify_all()
            jobs = list(self.model.jobs.values())
        for job in jobs:
            if job.job_id in self._panels:
                self._panels[job.job_id].show(job)
            else:
                self._panels[job.job_id] = _JobPanel(job)
        self._panels = {job.job_id: self._panels[job.job_id] for job in jobs}
        children = tuple(panel.box for panel in self._panels.values())
        if children != self._jobs_box.children:
            self._jobs_box.children = children

    def _refuse(self, reason: str) -> None:
        with self._changed:
            self.refused = reason
            self._changed.notify_all()
        self._say(f"refused: {reason}", COLOURS["failed"])

    def _say(self, text: str, colour: str | None = None) -> None:
        """Show the connection's state beside the tenant's name; `.connection` has it in words."""
        self.connection = text
        style = f' style="color:{colour}"' if colour else ""
        self._connection.value = f"&nbsp;<small{style}>{html.escape(text)}</small>"

