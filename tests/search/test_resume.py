"""Faults lose no finished work and record nothing twice: a killed driver, resumed."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from kdsearch.config.load import load_space
from kdsearch.search.resume import unfinished_searches
from kdsearch.testing import TINY_SPACE, run_until, write_tiny_space
from kdsearch.text import python_command


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


#: Where the driver is killed (SIGKILL), in order, each time as soon as it prints a line
#: matching the pattern: every stage of a search, each resumed by the next run.
KILL_POINTS = (
    ("data preparation", r"^generating the synthetic set"),
    ("teacher stage, after its second epoch", r"^teacher small3d [\w -]+ 2/5: "),
    ("cache build", r"^cache: teacher small3d at "),
    ("trials, one of two done", r"trials 1/2 done"),
    ("publish", r"^publishing: "),
)


def _run_until(folder: Path, pattern: str | None, *args: str) -> str:
    """``kdsearch.run`` killed at ``pattern`` (None: run to the end, which must succeed)."""
    code, said = run_until(folder, pattern, *args, env=_env())
    if pattern is None:
        assert code == 0, said[-4000:]
    else:
        assert code == -signal.SIGKILL, f"not killed at {pattern!r}:\n{said[-4000:]}"
    return said


def test_a_driver_killed_at_every_stage_resumes_to_one_whole_search(tmp_path: Path) -> None:
    search = {**TINY_SPACE["search"], "num_samples": 2, "scheduler": {"name": "none"}}
    path = write_tiny_space(tmp_path, search=search,
                            teacher={**TINY_SPACE["teacher"], "epochs": 5},
                            student={**TINY_SPACE["student"], "epochs": 2})
    cfg = load_space(path, cwd=tmp_path)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    said = {}
    for i, (stage, pattern) in enumerate(KILL_POINTS):
        said[stage] = _run_until(tmp_path, pattern, *(["--resume"] if i else []))
        (unfinished,) = unfinished_searches(cfg)  # resumable from every kill point
    said["end"] = _run_until(tmp_path, None, "--resume")
    assert f"resuming search {unfinished.name}" in said["end"]
    # Finished work is not redone: the teacher went on from its last epoch (the kill came
    # after epoch 2 ended; an epoch or so more may have ended before it), the cache built
    # once the teacher was whole is reused.
    after_teacher_kill = said["cache build"]
    assert re.search(r"^teacher small3d [\w -]+ 5/5: ", after_teacher_kill, re.M), \
        after_teacher_kill
    assert not re.search(r"^teacher small3d [\w -]+ [12]/5: ", after_teacher_kill, re.M)
    assert "cache: built" in said["trials, one of two done"]
    assert "cache: reusing" in said["publish"] and "cache: reusing" in said["end"]

    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id])
    everything = "".join(said.values())[-6000:]
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == [], everything
    (parent,) = [r for r in runs if r.data.tags.get("kdsearch.role") == "search"]
    assert parent.info.run_id == unfinished.parent_run_id
    assert (parent.info.status, parent.data.tags["kdsearch.status"]) == ("FINISHED",
                                                                         "completed")
    assert "kdsearch.publish_error" not in parent.data.tags
    (teacher,) = [r for r in runs if r.data.tags.get("kdsearch.role") == "teacher"]
    assert teacher.info.status == "FINISHED" and "val_acc" in teacher.data.metrics
    trials = [r for r in runs if r.data.tags.get("kdsearch.role") == "trial"]
    assert len(trials) == 2, everything
    assert Counter(r.data.tags["kdsearch.trial_id"] for r in trials).most_common(1)[0][1] == 1
    for run in trials:
        assert run.data.tags["kdsearch.status"] == "completed", (run.data.tags, everything)
        assert {"alpha", "temperature", "backbone"} <= set(run.data.params)
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
        assert sorted(steps) == [1, 2], (steps, everything)  # each epoch once
    for key in ("data_train_videos", "teacher_val_acc"):
        assert len(client.get_metric_history(parent.info.run_id, key)) == 1, key
    assert parent.data.params["best.alpha"]
    versions = client.search_model_versions("name = 'tiny-student'")
    assert len(versions) == 1  # registered once, though publish was killed on the way
    assert unfinished_searches(cfg) == []


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


def test_a_failed_publish_is_retried_then_left_for_resume_to_finish(
        ray_local: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from kdsearch.run import main
    from kdsearch.search.driver import run_search
    from kdsearch.track import publish

    search = {**TINY_SPACE["search"], "num_samples": 2, "scheduler": {"name": "none"}}
    path = write_tiny_space(tmp_path, search=search,
                            student={**TINY_SPACE["student"], "epochs": 1})
    tries, register_best = [], publish.register_best

    def unreachable(*args: object, **kwargs: object) -> str:
        tries.append(1)
        raise ConnectionError("the registry did not answer")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(publish, "register_best", unreachable)
    monkeypatch.setattr(publish, "RETRY_DELAYS", (0.0, 0.0))
    assert main(["space.yaml"]) == 1
    assert len(tries) == 3  # tried three times
    failure = ("could not record the best student in the Model Registry: ConnectionError: the "
               "registry did not answer")
    cfg = load_space(path, cwd=tmp_path)
    (unfinished,) = unfinished_searches(cfg)  # the trials are done, publishing is not
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"the trials are recorded, but publishing failed ({failure}); to publish again: "
        f"{python_command()} -m kdsearch.run space.yaml --resume {unfinished.name}")
    client = MlflowClient(cfg.tracking_uri)
    assert client.get_run(unfinished.parent_run_id).data.tags["kdsearch.publish_error"] == failure
    assert client.search_registered_models() == []

    monkeypatch.setattr(publish, "register_best", register_best)  # the registry is back
    again = run_search(cfg, path, say=lambda _: None, resume=unfinished.name)
    assert (again.parent_run_id, again.publish_failed) == (unfinished.parent_run_id, [])
    assert unfinished_searches(cfg) == []
    parent = client.get_run(again.parent_run_id)
    assert "kdsearch.publish_error" not in parent.data.tags
    assert len(client.search_model_versions("name = 'tiny-student'")) == 1
    trials = client.search_runs([again.experiment_id], "tags.`kdsearch.role` = 'trial'")
    assert len(trials) == 2  # no trial ran again
    assert all(len(client.get_metric_history(r.info.run_id, "val_acc")) == 1 for r in trials)


def test_searches_started_in_the_same_second_get_their_own_folders(tmp_path: Path) -> None:
    from kdsearch.search.resume import new_search_name

    cfg = load_space(write_tiny_space(tmp_path), cwd=tmp_path)
    names = {new_search_name(cfg) for _ in range(50)}
    assert len(names) == 50
    assert all(re.fullmatch(r"tiny-\d{8}-\d{6}-[0-9a-f]{6}", name) for name in names)
