"""The status board without a browser: its model after a real run, reconnecting, refusals, papermill."""

from __future__ import annotations

import json
from pathlib import Path

import papermill
import pytest

from ghetl import tenants
from ghetl.status.server import StatusServer
from ghetl.workbench.widgets import COLOURS, BoardModel, StatusBoard

from .conftest import add_tenant
from .status_helpers import STAGES, STEP, stream_key
from .support import wait_until

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "live_status.ipynb"
# Every step of the job: repositories, and pull requests (off by default, so they end with nothing to do).
ALL_FINISHED = {step: dict.fromkeys(STAGES, "finished") for step in (STEP, "github_pull_requests")}


def test_the_board_turns_green_with_a_sync(backend, sandbox, tenant):
    with StatusServer(backend.engine, backend.broker, port=0) as server:
        board = StatusBoard(tenant, url=server.url, key=stream_key(backend, tenant))
        assert wait_until(lambda: board.model.jobs, 10), "the board got its first snapshot"
        assert board.state() == {step: dict.fromkeys(STAGES, "idle") for step in ALL_FINISHED}
        assert board.overall() == "READY"

        result = backend.sync(tenant)

        assert board.wait(result.run_id, timeout=30) == ALL_FINISHED
        assert board.overall() == "FINISHED"
        job = board.model.job()
        assert job.run_id == result.run_id and job.error is None
        assert {s: job.progress[STEP][s]["processed"] for s in STAGES} == dict.fromkeys(STAGES, 500)
        board.close()

    [panel] = board._panels.values()
    for stage, cell in panel.cells[STEP].items():
        assert f'data-stage="{stage}" data-status="finished"' in cell.circle.value
        assert COLOURS["finished"] in cell.circle.value
        assert cell.bar.value == 1.0 and cell.bar.bar_style == "success" and cell.count.value == "500/500"
    assert 'data-overall="FINISHED"' in panel.badge.value
    assert board.connection == "closed"


def test_waiting_for_a_run_finds_its_job_among_several(backend, sandbox, tenant):
    with backend.engine.begin() as conn:
        second = tenants.add_integration(conn, tenant, "octocat", api_url=sandbox.url, token_env="GITHUB_TOKEN")
    with StatusServer(backend.engine, backend.broker, port=0) as server:
        board = StatusBoard(tenant, url=server.url, key=stream_key(backend, tenant))
        assert wait_until(lambda: len(board.model.jobs) == 2, 10)

        result = backend.sync(tenant, integration_id=second)

        assert board.wait(result.run_id, timeout=30) == ALL_FINISHED
        assert board.model.job_of_run(result.run_id).job_id == result.job_id
        with pytest.raises(ValueError, match="say which one"):
            board.wait(timeout=1)
        board.close()


def test_the_board_reconnects_and_resumes_from_a_fresh_snapshot(embedded, sandbox, token):
    tenant = add_tenant(embedded, sandbox)
    key = stream_key(embedded, tenant)
    first = StatusServer(embedded.engine, embedded.broker, port=0).start()
    board = StatusBoard(tenant, url=first.url, key=key, reconnect_max=0.2)
    assert board.wait(embedded.sync(tenant).run_id, timeout=30) == ALL_FINISHED
    first.stop()
    assert wait_until(lambda: board.connection.startswith("reconnecting"), 10)

    missed = embedded.sync(tenant, full=True)  # nobody streams this run to the board
    assert board.model.job().run_id != missed.run_id

    with StatusServer(embedded.engine, embedded.broker, port=first.port):
        assert board.wait(missed.run_id, timeout=30) == ALL_FINISHED
        assert board.connection == "live"
    board.close()


def test_a_refused_board_says_why_and_stops_trying(embedded, sandbox, token):
    tenant = add_tenant(embedded, sandbox)
    with StatusServer(embedded.engine, embedded.broker, port=0) as server:
        board = StatusBoard(tenant, url=server.url, key="not-the-key")
        with pytest.raises(ConnectionRefusedError, match="wrong key for tenant"):
            board.wait(timeout=10)
        assert not board._thread.is_alive(), "a refusal is not retried"
        assert board.connection.startswith("refused: wrong key") and board.model.jobs == {}


def test_a_board_without_a_key_is_refused_at_once(monkeypatch):
    monkeypatch.delenv("GHETL_STATUS_KEY", raising=False)
    with pytest.raises(ValueError, match="status-stream key"):
        StatusBoard("acme-corp", url="ws://127.0.0.1:1")


def test_the_model_starts_a_new_run_from_idle():
    model = BoardModel()
    model.apply({"type": "snapshot", "tenant": "t", "jobs": [{
        "job_id": 7, "job_name": "GitHub", "run_id": "old", "overall": "FINISHED", "error_message": None,
        "status": {"overall": "FINISHED",
                   "steps": {STEP: {"order": 1, "display_name": "Repos", **dict.fromkeys(STAGES, "finished")}}},
        "progress": {},
    }]})
    assert model.state() == {STEP: dict.fromkeys(STAGES, "finished")}
    model.apply({"type": "job", "job_id": 7, "run_id": "new", "overall": "RUNNING", "error": None})
    model.apply({"type": "stage", "job_id": 7, "run_id": "new", "step": STEP, "stage": "extraction",
                 "status": "running", "processed": 100, "total": None, "failed": None})
    assert model.state(7) == {STEP: {"extraction": "running", "transform": "idle", "embedding": "idle"}}
    assert model.job().overall == "RUNNING" and model.job().progress[STEP]["extraction"]["processed"] == 100
    with pytest.raises(KeyError, match="no job 8"):
        model.state(8)


def test_a_count_that_arrives_late_does_not_step_back():
    """Two workers' progress events can cross on their way; the later-computed one wins."""
    model = BoardModel()

    def progress(run: str, processed: int, status: str = "running") -> None:
        model.apply({"type": "stage", "job_id": 7, "run_id": run, "step": STEP, "stage": "embedding",
                     "status": status, "processed": processed, "total": 3000, "failed": 0})

    progress("r1", 1300)
    assert model.job().steps[STEP]["display_name"] == "GitHub Repositories"  # first seen through an event
    progress("r1", 1200)
    assert model.job().progress[STEP]["embedding"]["processed"] == 1300
    progress("r1", 3000, "finished")
    progress("r2", 100)
    assert model.job().progress[STEP]["embedding"]["processed"] == 100  # a new run starts again from 0


def test_the_notebook_runs_under_papermill(tmp_path):
    """Unattended: the board must neither block a cell nor keep the run from ending."""
    out = tmp_path / "live_status.out.ipynb"
    papermill.execute_notebook(str(NOTEBOOK), str(out), parameters={"sandbox_repos": 150, "timeout": 60},
                               cwd=str(tmp_path), execution_timeout=120, progress_bar=False)
    cells = json.loads(out.read_text())["cells"]
    results = [o for c in cells if c["cell_type"] == "code"
               for o in c["outputs"] if o["output_type"] == "execute_result"]
    circles = "".join(results[-1]["data"]["text/plain"])
    assert circles.count("'finished'") == 6 and "running" not in circles
    assert all(o["output_type"] != "error" for c in cells if c["cell_type"] == "code" for o in c["outputs"])
