"""Faults lose no finished work and record nothing twice: a killed driver, resumed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from mlflow.tracking import MlflowClient

from kdsearch.config.load import load_space
from kdsearch.search.resume import unfinished_searches
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
    said = resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert [r for r in runs if r.info.status == "RUNNING"] == [], said
    (parent,) = [r for r in runs if r.data.tags.get("kdsearch.role") == "search"]
    assert parent.info.run_id == unfinished.parent_run_id
    assert (parent.info.status, parent.data.tags["kdsearch.status"]) == ("FINISHED",
                                                                         "completed")
    assert len([r for r in runs if r.data.tags.get("kdsearch.role") == "teacher"]) == 1
    trials = [r for r in runs if r.data.tags.get("kdsearch.role") == "trial"]
    assert Counter(r.data.tags["kdsearch.trial_id"] for r in trials).most_common(1)[0][1] == 1, said
    assert len(trials) == 4, said
    for run in trials:
        assert run.data.tags["kdsearch.status"] == "completed", (run.data.tags, said)
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
        assert sorted(steps) == list(range(1, epochs + 1)), (steps, said)  # each epoch once
    assert unfinished_searches(cfg) == []
    assert parent.data.params["best.alpha"]


_NODE_LOSS = """
import json, sys, threading, time
from pathlib import Path
import ray
from ray.cluster_utils import Cluster
from mlflow.tracking import MlflowClient
from kdsearch.search.driver import run_search
from kdsearch.config.load import load_space

folder = Path(sys.argv[1])
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
workers = [cluster.add_node(num_cpus=1, num_gpus=1) for _ in range(2)]
ray.init(address=cluster.address, log_to_driver=False)
cfg = load_space(folder / "space.yaml", cwd=folder)
client = MlflowClient(cfg.tracking_uri)
removed = []

def remove_a_worker_mid_trial():
    while not removed:
        time.sleep(0.5)
        try:
            maybe_remove()
        except Exception as err:  # e.g. SQLite busy while the driver writes: poll again
            print("watcher:", err, flush=True)

def maybe_remove():
    experiment = client.get_experiment_by_name("tiny")
    runs = experiment and client.search_runs(
        [experiment.experiment_id], "tags.`kdsearch.role` = 'trial'")
    # A trial with a checkpoint (2 epochs logged) is running: lose the worker it runs on.
    for run in runs or []:
        node_id = run.data.tags.get("kdsearch.node_id")
        if run.info.status != "RUNNING" or len(client.get_metric_history(
                run.info.run_id, "val_acc")) < 2:
            continue
        for worker in workers:
            if worker.node_id == node_id:
                cluster.remove_node(worker)
                removed.append(node_id)
                return

threading.Thread(target=remove_a_worker_mid_trial, daemon=True).start()
outcome = run_search(cfg, folder / "space.yaml", say=lambda m: print(m, flush=True))
print("OUTCOME " + json.dumps({"removed": bool(removed), "statuses": [
    r.status for r in outcome.rows], "parent": outcome.parent_run_id,
    "experiment": outcome.experiment_id}), flush=True)
ray.shutdown()
cluster.shutdown()
"""


def test_a_lost_node_costs_no_trial(tmp_path: Path) -> None:
    import json

    epochs = 15  # long enough for a node to be lost mid-trial
    search = {**TINY_SPACE["search"], "num_samples": 3, "scheduler": {"name": "none"}}
    write_tiny_space(tmp_path, search=search,
                     student={**TINY_SPACE["student"], "epochs": epochs},
                     resources={"cpus_per_trial": 1, "gpus_per_trial": 1, "max_failures": 3,
                                "teacher_cpus": 1})
    proc = subprocess.run([sys.executable, "-c", _NODE_LOSS, str(tmp_path)], env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    outcome = json.loads(proc.stdout.split("OUTCOME ", 1)[1])
    # The head has no GPU: the teacher stage asked for one, so it ran on a GPU worker.
    assert "teacher stage: a Ray task with 1 CPUs and 1 GPUs" in proc.stdout
    assert outcome["removed"], "no worker was removed while trials ran: " + proc.stdout[-2000:]
    assert outcome["statuses"] == ["completed"] * 3
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    trials = client.search_runs([outcome["experiment"]], "tags.`kdsearch.role` = 'trial'")
    assert sorted(Counter(r.data.tags["kdsearch.trial_id"] for r in trials).values()) == [1] * 3
    for run in trials:
        assert run.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
        assert sorted(steps) == list(range(1, epochs + 1))
    # The lost node really cost a running trial: one trial restarted from its checkpoint.
    restarted = []
    for result_file in (tmp_path / "kdsearch_results" / "ray").glob("*/*/result.json"):
        lines = [json.loads(line) for line in result_file.read_text().splitlines() if line]
        restarted += [r for r in lines if r["iterations_since_restore"] < r["training_iteration"]]
    assert restarted


def test_a_new_search_names_the_unfinished_one_and_the_command_to_resume_it(
        tmp_path: Path) -> None:
    from kdsearch.search.driver import _mention_unfinished
    from kdsearch.search.resume import SearchRecord, new_search_name, write_record
    from kdsearch.text import python_command

    path = write_tiny_space(tmp_path)
    cfg = load_space(path, cwd=tmp_path)
    said: list[str] = []
    _mention_unfinished(cfg, path, said.append)
    assert said == []  # nothing unfinished: nothing to say
    record = SearchRecord(new_search_name(cfg), cfg.experiment.name, "1", "run", time.time(),
                          False, cfg.model_dump(mode="json"))
    write_record(cfg, record)
    _mention_unfinished(cfg, path, said.append)
    (note,) = said
    assert note.startswith(f"note: search {record.name} of this experiment")
    assert note.endswith(f"{python_command()} -m kdsearch.run {path} --resume")
