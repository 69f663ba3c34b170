"""One real search, end to end: CLI, Ray Tune, Optuna, ASHA, MLflow, on a tiny synthetic set."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from kdsearch.testing import TINY_SPACE, write_tiny_space


def run_cli(folder: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_RUN_ID")}
    return subprocess.run([sys.executable, "-m", "kdsearch.run", "space.yaml", *args],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=600)


def test_search_records_every_trial_in_mlflow(tmp_path: Path) -> None:
    search = {**TINY_SPACE["search"], "num_samples": 4}
    write_tiny_space(tmp_path, search=search)
    proc = run_cli(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"mlflow ui --backend-store-uri sqlite:///{tmp_path / 'mlflow.db'}" in proc.stdout
    assert "trials 4/4 done" in proc.stderr

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("kdsearch.role") == "search"]
    (teacher,) = [r for r in runs if r.data.tags.get("kdsearch.role") == "teacher"]
    trials = [r for r in runs if r.data.tags.get("kdsearch.role") == "trial"]
    assert len(trials) == 4
    assert teacher.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert "val_acc" in teacher.data.metrics
    statuses = {r.data.tags["kdsearch.status"] for r in trials}
    assert statuses <= {"completed", "pruned"} and "completed" in statuses
    for run in trials:
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.status == "FINISHED"
        assert {"alpha", "temperature", "backbone", "lr", "teacher", "epochs",
                "crop_size"} <= set(run.data.params)
        history = client.get_metric_history(run.info.run_id, "val_acc")
        epochs = int(run.data.tags["kdsearch.epochs_run"])
        assert [m.step for m in history] == list(range(1, epochs + 1))
        expected = "completed" if epochs == 2 else "pruned"
        assert run.data.tags["kdsearch.status"] == expected
        assert {"train_ce", "train_kd", "val_video_acc", "val_loss"} <= set(run.data.metrics)
    best_id = parent.data.tags["kdsearch.best_run_id"]
    best = client.get_run(best_id)
    assert best.data.tags["kdsearch.status"] == "completed"
    completed = [r for r in trials if r.data.tags["kdsearch.status"] == "completed"]
    assert best.data.metrics["val_acc"] == max(r.data.metrics["val_acc"] for r in completed)
    assert parent.data.metrics["best_val_acc"] == best.data.metrics["val_acc"]
    assert parent.data.params["best.backbone"] == best.data.params["backbone"]
    assert parent.data.tags["kdsearch.status"] == "completed"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"space.yaml", "resolved_space.yaml"} <= artifacts
    assert (tmp_path / "mlartifacts" / "tiny").is_dir() and not (tmp_path / "mlruns").exists()

    # A second search on the same data and teacher settings reuses both.
    again = run_cli(tmp_path, "--set", "search.num_samples=1")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "teacher small3d: reusing" in again.stdout
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parents = mlflow.search_runs(experiment_names=["tiny"],
                                 filter_string="tags.`kdsearch.role` = 'search'")
    assert len(parents) == 2


def test_gpus_requested_on_a_cluster_without_gpus_fail_at_start(tmp_path: Path) -> None:
    write_tiny_space(tmp_path, resources={"cpus_per_trial": 1, "gpus_per_trial": 1})
    proc = run_cli(tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "error: resources.gpus_per_trial: 1.0 asks for GPUs but the Ray cluster has none")
    assert not (tmp_path / "mlflow.db").exists()


def test_a_failing_trial_is_recorded_and_the_search_goes_on(ray_local: None,
                                                             tmp_path: Path) -> None:
    from kdsearch.search import run_search
    from kdsearch.spacefile import load_space

    # lr 1e30 with SGD diverges in the first step: that trial fails, the others run.
    search = {**TINY_SPACE["search"], "num_samples": 2,
              "space": {"lr": {"type": "choice", "values": [1e30]}}}
    path = write_tiny_space(tmp_path, search=search,
                            student={**TINY_SPACE["student"], "optimizer": "sgd", "epochs": 1})
    cfg = load_space(path, cwd=tmp_path)
    outcome = run_search(cfg, path, say=lambda _: None)
    assert outcome.best is None
    assert [r.status for r in outcome.rows] == ["failed", "failed"]
    client = MlflowClient(cfg.tracking_uri)
    trials = client.search_runs([outcome.experiment_id],
                                filter_string="tags.`kdsearch.role` = 'trial'")
    assert len(trials) == 2
    for run in trials:
        assert run.data.tags["kdsearch.status"] == "failed"
        assert run.info.status == "FAILED"
        assert "NonFiniteLossError: training loss became" in run.data.tags["kdsearch.error"]
    parent = client.get_run(outcome.parent_run_id)
    assert parent.data.tags["kdsearch.status"] == "failed"


def test_ctrl_c_keeps_finished_work_and_leaves_no_run_open(tmp_path: Path) -> None:
    student = {**TINY_SPACE["student"], "epochs": 200}  # trials are still running at Ctrl-C
    write_tiny_space(tmp_path, student=student)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_RUN_ID")}
    proc = subprocess.Popen([sys.executable, "-m", "kdsearch.run", "space.yaml"], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(2)
        experiment = (tmp_path / "mlflow.db").exists() and client.get_experiment_by_name("tiny")
        if experiment and any("val_acc" in r.data.metrics for r in client.search_runs(
                [experiment.experiment_id], "tags.`kdsearch.role` = 'trial'")):
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, out + err
    assert "the search was interrupted" in err
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert [r for r in runs if r.info.status == "RUNNING"] == []
    (parent,) = [r for r in runs if r.data.tags.get("kdsearch.role") == "search"]
    assert parent.info.status == "KILLED"
    assert parent.data.tags["kdsearch.status"] == "interrupted"
    trials = [r for r in runs if r.data.tags.get("kdsearch.role") == "trial"]
    # an interrupted trial keeps the epochs it ran
    assert any(r.data.tags["kdsearch.status"] == "interrupted" and "val_acc" in r.data.metrics
               for r in trials)
