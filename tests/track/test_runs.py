"""kdsearch.track.runs: a search records to a real MLflow tracking server on loopback, over
HTTP, its artifacts through the server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from kdsearch.testing import TINY_SPACE, mlflow_server, write_tiny_space


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[str]:
    with mlflow_server(f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "server-artifacts") as uri:
        yield uri


def test_a_search_records_to_an_mlflow_server(ray_local: None, server: str,
                                              tmp_path: Path) -> None:
    from kdsearch.config.load import load_space
    from kdsearch.search.driver import run_search

    search = {**TINY_SPACE["search"], "num_samples": 2}
    path = write_tiny_space(tmp_path, search=search, tracking={"uri": server})
    cfg = load_space(path, cwd=tmp_path)
    outcome = run_search(cfg, path, say=lambda _: None)
    assert outcome.best is not None
    client = MlflowClient(server)
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
