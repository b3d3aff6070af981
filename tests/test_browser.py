"""The explorer notebook in a real browser: JupyterLab served headless, driven in Chromium.

Needs Debian's Chromium (.ci/install-browser installs it) and the playwright Python package
(Playwright drives the system Chromium; `playwright install` is never needed).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from deepfake_toolkit.batch import notebook_path

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"]

NOTEBOOK_READY = """() => {
    const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
    return Boolean(panel && panel.context && panel.context.isReady && panel.sessionContext
                   && panel.sessionContext.kernelDisplayStatus === 'idle');
}"""
"""JavaScript that is true once the opened notebook is loaded and its kernel idle."""

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.is_file(),
                       reason=f"Chromium not found at {CHROMIUM}: run .ci/install-browser "
                              "(apt-get install chromium chromium-driver) to enable this test"),
]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for_server(url: str, process: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"JupyterLab exited early:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"JupyterLab did not answer within {timeout} s:\n"
                         f"{log.read_text()[-3000:]}")


@pytest.fixture()
def jupyterlab(tmp_path: Path, sample_folder: Path, notebook_env: None):
    """JupyterLab on 127.0.0.1 (free port, random token) serving a folder with the explorer
    notebook and a ready sample folder; yields (base URL, token, folder)."""
    pytest.importorskip("jupyterlab")
    root = tmp_path / "lab"
    root.mkdir()
    shutil.copy(notebook_path("02_explore.ipynb"), root / "02_explore.ipynb")
    shutil.copytree(sample_folder, root / "deepfake_samples")
    port, token = _free_port(), secrets.token_hex(16)
    home = tmp_path / "jupyter"
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(home / "config"),
           "JUPYTER_DATA_DIR": str(home / "data"), "JUPYTER_RUNTIME_DIR": str(home / "runtime")}
    log = tmp_path / "jupyterlab.log"
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1",
               f"--port={port}", "--port-retries=0", f"--IdentityProvider.token={token}",
               f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
               f"--LabApp.user_settings_dir={home / 'settings'}",
               f"--LabApp.workspaces_dir={home / 'workspaces'}"]
    if os.geteuid() == 0:  # CI runs as root; Jupyter refuses that unless told
        command.append("--allow-root")
    with open(log, "w") as log_stream:
        process = subprocess.Popen(
            command, cwd=root, env=env, stdout=log_stream, stderr=subprocess.STDOUT,
            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for_server(f"{base}/api/status?token={token}", process, log, timeout=90)
        yield base, token, root
    finally:
        _stop_server(process, f"{base}/api/shutdown?token={token}")


def _stop_server(process: subprocess.Popen, shutdown_url: str) -> None:
    """Shut JupyterLab down through its API (which also ends its kernels); kill its process
    group if that fails."""
    if process.poll() is not None:
        return
    try:
        request = urllib.request.Request(shutdown_url, method="POST")
        urllib.request.urlopen(request, timeout=10).close()
        process.wait(timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=10)


def test_explorer_runs_in_jupyterlab_in_chromium(jupyterlab, tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    base, token, root = jupyterlab
    n_images = sum(1 for p in (root / "deepfake_samples").rglob("*.*")
                   if p.suffix in (".png", ".jpg"))
    screenshot = tmp_path / "explorer.png"
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 1100})
        page = browser.new_page()
        try:
            page.goto(f"{base}/lab/tree/02_explore.ipynb?token={token}")
            # Run all cells once the notebook is loaded and its kernel is idle; the command's
            # promise is not awaited (it settles only when every cell has run).
            page.wait_for_function(NOTEBOOK_READY, timeout=120_000)
            page.evaluate("() => { window.jupyterapp.commands.execute("
                          "'notebook:run-all-cells'); }")

            explorer = page.locator(".deepfake-toolkit-explorer")
            explorer.wait_for(timeout=120_000)
            assert explorer.get_by_text("Models").count() >= 1
            assert explorer.get_by_text("default (weights present)").count() >= 1
            explorer.locator("button", has_text=re.compile(r"^\s*Run\s*$")).click()
            explorer.get_by_text("Done:").wait_for(timeout=150_000)

            rows = explorer.locator("table.deepfake-results tbody tr")
            assert rows.count() == n_images
            explorer.get_by_role("tab", name="Gallery").click()
            thumbnails = explorer.locator("img")
            thumbnails.first.wait_for(timeout=30_000)
            assert thumbnails.count() > n_images  # an image per card, plus the face crops
            explorer.get_by_role("tab", name="Histogram").click()
            explorer.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
        finally:
            # Also on failure: the screenshot shows what the browser showed.
            page.screenshot(path=str(screenshot), full_page=True)
            browser.close()
    assert screenshot.stat().st_size > 10_000
    print(f"screenshot: {screenshot}")
