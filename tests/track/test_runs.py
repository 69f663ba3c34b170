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
    # report.kd_baseline off: the runs below are exactly the search's, no KD baseline's.
    path = write_tiny_space(tmp_path, search=search, tracking={"uri": server},
                            report={"kd_baseline": False, "onnx": False})
    cfg = load_space(path, cwd=tmp_path)
    outcome = run_search(cfg, path, say=lambda _: None)
    assert outcome.best is not None and outcome.kd_gain is None
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


def test_the_agreement_schedulers_decisions_are_logged_per_rung(tmp_path: Path) -> None:
    from kdsearch.track.runs import log_stopping

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = client.create_run(client.create_experiment("x")).info.run_id
    log_stopping(client, run_id, [
        {"epoch": 1, "stopped": 0, "unknown": 3, "within_noise": 0, "kept": 2,
         "agreement": None, "pairs": 1, "cutoff": 0.41},
        {"epoch": 2, "stopped": 2, "unknown": 0, "within_noise": 1, "kept": 1,
         "agreement": 0.8, "pairs": 5, "cutoff": 0.62}])

    def history(key: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]

    assert history("stopping.stopped") == [(1, 0.0), (2, 2.0)]
    assert history("stopping.unknown") == [(1, 3.0), (2, 0.0)]
    assert history("stopping.agreement") == [(2, 0.8)]  # none measured at epoch 1
    assert history("stopping.cutoff") == [(1, 0.41), (2, 0.62)]
    assert history("stopping.within_noise") == [(1, 0.0), (2, 1.0)]


def test_a_resumed_search_deletes_the_runs_of_trials_tune_never_recorded(tmp_path: Path) -> None:
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    from kdsearch.track.runs import drop_lost_trials, trial_statuses
    from kdsearch.track.schema import ROLE, STATUS, TRIAL_ID, Status

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("lost")
    parent = client.create_run(experiment, tags={ROLE: "search"}).info.run_id

    def trial(trial_id: str, status: Status) -> str:
        tags = {ROLE: "trial", TRIAL_ID: trial_id, STATUS: status.value,
                "mlflow.parentRunId": parent}
        return client.create_run(experiment, tags=tags).info.run_id

    known, failed = trial("a", Status.RUNNING), trial("b", Status.FAILED)
    lost = trial("c", Status.RUNNING)
    # "b" failed at once (no metrics, so not among the ids Tune reports): kept.
    assert drop_lost_trials(client, experiment, parent, known={"a"}) == ["c"]
    assert set(trial_statuses(client, experiment, parent)) == {"a", "b"}
    gone = client.get_run(lost)
    assert gone.info.lifecycle_stage == "deleted" and gone.info.status == "KILLED"
    assert client.get_run(known).info.lifecycle_stage == "active"
    assert client.get_run(failed).info.lifecycle_stage == "active"
    assert len(client.search_runs([experiment], run_view_type=ViewType.ALL)) == 4
