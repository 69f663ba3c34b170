"""Faults lose no finished work and record nothing twice: a killed driver, resumed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from mlflow.tracking import MlflowClient

from kdsearch.resume import unfinished_searches
from kdsearch.spacefile import load_space
from kdsearch.testing import TINY_SPACE, write_tiny_space


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_RUN_ID")}


def _cli(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdsearch.run", "space.yaml", *args],
                          cwd=folder, env=_env(), capture_output=True, text=True, timeout=600)


def _epochs_logged(client: MlflowClient, db: Path) -> int:
    if not db.exists() or (experiment := client.get_experiment_by_name("tiny")) is None:
        return 0
    runs = client.search_runs([experiment.experiment_id], "tags.`kdsearch.role` = 'trial'")
    return sum(len(client.get_metric_history(r.info.run_id, "val_acc")) for r in runs)


def test_resume_without_an_unfinished_search_is_a_clear_error(tmp_path: Path) -> None:
    write_tiny_space(tmp_path)
    proc = _cli(tmp_path, "--resume")
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: --resume: no unfinished search of experiment 'tiny' "
                                   f"in {tmp_path / 'kdsearch_results' / 'ray'}")
    assert not (tmp_path / "mlflow.db").exists()


def test_a_killed_driver_resumes_with_one_run_per_trial(tmp_path: Path) -> None:
    epochs = 6
    search = {**TINY_SPACE["search"], "num_samples": 4, "scheduler": {"name": "none"}}
    student = {**TINY_SPACE["student"], "epochs": epochs}
    path = write_tiny_space(tmp_path, search=search, student=student)
    db = tmp_path / "mlflow.db"
    client = MlflowClient(f"sqlite:///{db}")
    driver = subprocess.Popen([sys.executable, "-m", "kdsearch.run", "space.yaml"], cwd=tmp_path,
                              env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and driver.poll() is None:
        time.sleep(1)
        if _epochs_logged(client, db) >= 3:  # trials are mid-way: some epochs are recorded
            break
    assert driver.poll() is None, "the search ended before it could be killed"
    driver.kill()  # SIGKILL: no cleanup runs, MLflow runs stay RUNNING
    driver.wait()
    time.sleep(3)  # let the local Ray that died with the driver go

    cfg = load_space(path, cwd=tmp_path)
    (unfinished,) = unfinished_searches(cfg)
    running = client.search_runs([unfinished.experiment_id], "attributes.status = 'RUNNING'")
    assert running, "the kill left no run open: nothing to check"

    resumed = _cli(tmp_path, "--resume")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resuming search {unfinished.name}" in resumed.stdout

    runs = client.search_runs([unfinished.experiment_id])
    assert [r for r in runs if r.info.status == "RUNNING"] == []
    (parent,) = [r for r in runs if r.data.tags.get("kdsearch.role") == "search"]
    assert parent.info.run_id == unfinished.parent_run_id
    assert (parent.info.status, parent.data.tags["kdsearch.status"]) == ("FINISHED",
                                                                         "completed")
    assert len([r for r in runs if r.data.tags.get("kdsearch.role") == "teacher"]) == 1
    trials = [r for r in runs if r.data.tags.get("kdsearch.role") == "trial"]
    assert Counter(r.data.tags["kdsearch.trial_id"] for r in trials).most_common(1)[0][1] == 1
    assert len(trials) == 4
    for run in trials:
        assert run.data.tags["kdsearch.status"] == "completed", run.data.tags
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
        assert sorted(steps) == list(range(1, epochs + 1))  # every epoch once
    assert unfinished_searches(cfg) == []
    assert parent.data.params["best.alpha"]
