"""End to end in a real browser: JupyterLab in headless Chromium runs notebooks/live_status.ipynb
and the board's circles turn green in the page. The screenshot is kept in artifacts/.

Needs Debian's `chromium` (at /usr/bin/chromium) and Playwright's Python package, which drives
that browser; Playwright never downloads a browser of its own here. Skipped without them,
except under CI=true, where a missing browser is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from .status_helpers import free_port

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
KERNEL_READY = """() => {
    const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
    const kernel = panel && panel.sessionContext && panel.sessionContext.session && panel.sessionContext.session.kernel;
    return Boolean(kernel && kernel.status === 'idle');
}"""
# Three circles per step of the job: repositories, and pull requests (turned off here, so they end at once).
ALL_GREEN = "document.querySelectorAll('.ghetl-circle[data-status=finished]').length === 6"


def _require_browser() -> None:
    missing = []
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} (apt-get install chromium chromium-driver)")
    try:
        import playwright  # noqa: F401
    except ImportError:
        missing.append("playwright (pip install -e '.[test]')")
    if missing:
        message = "browser test needs " + " and ".join(missing)
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def jupyterlab(tmp_path: Path) -> Iterator[str]:
    """JupyterLab serving a copy of the notebook (so nothing it saves touches the repository)."""
    _require_browser()
    work, home = tmp_path / "work", tmp_path / "jupyter"
    work.mkdir()
    shutil.copy(ROOT / "notebooks" / "live_status.ipynb", work)
    port, token = free_port(), "browser-test"
    news = home / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text('{"fetchNews": "false"}')  # no "get notified about Jupyter news?" toast over the board
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    with open(tmp_path / "jupyterlab.log", "wb") as log:  # the server keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
             f"--IdentityProvider.token={token}", "--allow-root", "--ServerApp.terminals_enabled=False",
             f"--ServerApp.root_dir={work}", "--LabApp.expose_app_in_browser=True",
             f"--LabApp.user_settings_dir={home / 'settings'}", f"--LabApp.workspaces_dir={home / 'workspaces'}",
             "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
            cwd=work, env=env, stdout=log, stderr=log,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for(f"{base}/api/status?token={token}", proc, tmp_path / "jupyterlab.log")
        yield f"{base}/lab/tree/live_status.ipynb?token={token}&reset"
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_for(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"JupyterLab did not start: {log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.25)


def test_jupyterlab_runs_the_notebook_and_the_circles_turn_green(jupyterlab):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        try:
            page.goto(jupyterlab)
            page.wait_for_function(KERNEL_READY, timeout=45_000)
            page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
            page.wait_for_function(ALL_GREEN, timeout=45_000)
            circles = page.eval_on_selector_all(
                ".ghetl-circle",
                "els => els.map(e => [e.dataset.stage, e.dataset.status, getComputedStyle(e).backgroundColor])")
            badge = page.get_attribute(".ghetl-overall", "data-overall")
            page.locator(".ghetl-circle").first.scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "live_status.png"), full_page=True)
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "live_status-failed.png"), full_page=True)
            raise
        finally:
            browser.close()
    assert sorted(stage for stage, _status, _colour in circles) == sorted(["embedding", "extraction", "transform"] * 2)
    assert {colour for _stage, _status, colour in circles} == {"rgb(67, 160, 71)"}, circles  # #43a047, green
    assert badge == "FINISHED"
    assert (ARTIFACTS / "live_status.png").stat().st_size > 10_000
