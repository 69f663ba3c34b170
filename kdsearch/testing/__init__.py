"""Helpers for kdsearch's tests: a tiny space file that trains in seconds on a CPU."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

TINY_SPACE: dict[str, Any] = {
    "experiment": {"name": "tiny"},
    "data": {"format": "synthetic", "root": "data/tiny",
             "synthetic": {"train_per_class": 4, "val_per_class": 2, "num_frames": 12,
                           "size": 32, "seed": 0}},
    # The teacher sees its own clip of each view: more frames, closer together.
    "teacher": {"model": "small3d", "epochs": 1, "batch_size": 8,
                "clip": {"num_frames": 8, "stride": 1, "crop_size": 32}},
    "student": {"backbone": "tiny3d", "epochs": 2, "batch_size": 8,
                "clip": {"num_frames": 4, "stride": 2, "crop_size": 32}},
    "search": {"space": {"alpha": {"type": "uniform", "low": 0.1, "high": 0.9},
                         "temperature": {"type": "loguniform", "low": 1.0, "high": 8.0},
                         "backbone": {"type": "choice", "values": ["tiny3d", "tiny_r2plus1d"]}},
               "num_samples": 3, "max_concurrent": 2, "seed": 0,
               "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2}},
    "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0},
    # Off in the tiny space: the tests of the KD baseline (tests/search) and of the ONNX
    # export (tests/track/test_publish.py) turn them on.
    "report": {"kd_baseline": False, "onnx": False},
}


def write_tiny_space(folder: Path, **sections: Any) -> Path:
    """Write the tiny space file into ``folder``, replacing whole top-level sections."""
    raw = {**TINY_SPACE, **sections}
    path = folder / "space.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def browser_executable() -> str | None:
    """A Chromium for the browser tests: ``KDSEARCH_CHROMIUM``, else one on PATH."""
    import os
    import shutil

    found = os.environ.get("KDSEARCH_CHROMIUM")
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = found or shutil.which(name)
    return found


def screenshot_runs(server: str, experiment_id: str, expect: list[str], out: Path,
                    width: int = 1600, height: int = 900, order_by: str | None = None,
                    columns: tuple[str, ...] = (), search_filter: str | None = None) -> str:
    """Open the experiment's runs page of the MLflow UI at ``server`` in headless Chromium,
    expand the nested runs, show ``columns`` (metric, param or tag names), wait until every
    name in ``expect`` shows, and save a screenshot to ``out``. Returns the page's text."""
    from playwright.sync_api import sync_playwright

    executable = browser_executable()
    if executable is None:
        raise FileNotFoundError("no Chromium found (apt-get install chromium)")
    from urllib.parse import urlencode

    state = {"orderByKey": order_by, "orderByAsc": "false"} if order_by else {}
    if search_filter:
        state["searchFilter"] = search_filter
    query = f"?{urlencode(state)}" if state else ""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable,
                                             args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(f"{server}/#/experiments/{experiment_id}/runs{query}")
            page.get_by_text(expect[0]).first.wait_for(timeout=60_000)
            for name in ("Close", "Toggle sidebar"):  # the assistant panel, the sidebar
                button = page.get_by_role("button", name=name)
                if button.count():
                    button.first.click()
            expand = page.locator(  # the "+" before a parent run shows its nested runs
                "button[data-component-id$='runnamecellrenderer.tsx_46']")
            for i in range(expand.count()):
                expand.nth(i).click()
            if columns:
                page.get_by_test_id("column-selection-dropdown").first.click()
                menu = page.get_by_role("menu").or_(page.get_by_role("dialog")).last
                for column in columns:  # a param named like a metric ("lr"): the param
                    menu.get_by_text(column, exact=True).last.click()
                page.keyboard.press("Escape")
            for name in expect:
                page.get_by_text(name).first.wait_for(timeout=30_000)
            page.wait_for_timeout(500)
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out))
            return str(page.inner_text("body"))
        finally:
            browser.close()


@contextlib.contextmanager
def mlflow_server(store_uri: str, artifacts: Path | None = None, log: Path | None = None
                  ) -> Iterator[str]:
    """A real ``mlflow server`` on 127.0.0.1 and a free port, over ``store_uri``; yields its
    URL. ``artifacts``: where it stores artifacts it is sent (a proxied artifact store);
    ``log``: a file for what the server prints (nothing is kept otherwise)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port",
               str(port), "--backend-store-uri", store_uri, "--workers", "1"]
    if artifacts is not None:
        command += ["--artifacts-destination", str(artifacts)]
    output = open(log, "w") if log is not None else subprocess.DEVNULL  # noqa: SIM115
    server = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            raise RuntimeError("mlflow server did not start within 120 s")
        yield uri
    finally:
        server.terminate()
        server.wait(timeout=30)
        if not isinstance(output, int):
            output.close()


def run_until(folder: Path, pattern: str | None, *args: str, env: dict[str, str] | None = None,
              timeout: float = 300) -> tuple[int, str]:
    """``python -m kdsearch.run space.yaml ARGS`` in ``folder``, SIGKILLed (no cleanup runs,
    as when a machine dies) as soon as a line of its output matches ``pattern``; None: let it
    end. (exit status, everything it printed). A pattern that never comes fails at
    ``timeout`` instead of hanging."""
    env = env if env is not None else {k: v for k, v in os.environ.items()
                                       if k not in ("RAY_ADDRESS", "MLFLOW_RUN_ID")}
    driver = subprocess.Popen([sys.executable, "-m", "kdsearch.run", "space.yaml", *args],
                              cwd=folder, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, bufsize=1)
    assert driver.stdout is not None
    said = []
    killer = threading.Timer(timeout, driver.kill)
    killer.start()
    try:
        for line in driver.stdout:
            said.append(line)
            if pattern is not None and re.search(pattern, line):
                driver.send_signal(signal.SIGKILL)
                break
        driver.wait()
    finally:
        killer.cancel()
        driver.stdout.close()
    if pattern is not None and driver.returncode == -signal.SIGKILL:
        time.sleep(2)  # let the local Ray that died with the driver go
    return driver.returncode, "".join(said)


def wait_for_each_other(ready: Path, count: int = 2, timeout: float = 120) -> None:
    """A barrier between test processes that must overlap: each marks itself ready in the
    folder ``ready``, then waits until ``count`` have (or exits after ``timeout``)."""
    (ready / str(os.getpid())).touch()
    deadline = time.monotonic() + timeout
    while len(list(ready.iterdir())) < count:
        if time.monotonic() > deadline:
            sys.exit("the other process never got ready")
        time.sleep(0.01)
