"""A search against a real MLflow tracking server on loopback, over HTTP."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from kdsearch.testing import TINY_SPACE, write_tiny_space


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture()
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        server.kill()
        pytest.fail("mlflow server did not start within 120 s")
    yield uri
    server.terminate()
    server.wait(timeout=30)


def test_a_search_records_to_an_mlflow_server(ray_local: None, mlflow_server: str,
                                              tmp_path: Path) -> None:
    from kdsearch.search import run_search
    from kdsearch.spacefile import load_space

    search = {**TINY_SPACE["search"], "num_samples": 2}
    path = write_tiny_space(tmp_path, search=search, tracking={"uri": mlflow_server})
    cfg = load_space(path, cwd=tmp_path)
    outcome = run_search(cfg, path, say=lambda _: None)
    assert outcome.best is not None
    client = MlflowClient(mlflow_server)
    runs = client.search_runs([outcome.experiment_id])
    roles = sorted(r.data.tags["kdsearch.role"] for r in runs)
    assert roles == ["search", "teacher", "trial", "trial"]
    assert all(r.info.status == "FINISHED" for r in runs)
    best = client.get_run(outcome.best.run_id)
    assert {a.path for a in client.list_artifacts(best.info.run_id)} >= {
        "confusion_matrix.json", "confusion_matrix.png"}
    # Artifacts went through the server to its store, not to a local folder of the search.
    assert any((tmp_path / "server-artifacts").rglob("confusion_matrix.png"))
    assert not (tmp_path / "mlartifacts").exists() and not (tmp_path / "mlruns").exists()
